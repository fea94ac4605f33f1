// Package failover is the pair's decision loop. Every member runs it:
//   - locally, it runs exactly the role instances the committed ownership
//     table gives this host, and only while this host hears from a majority
//     (so a host cut off from the cluster stops its roles within its lease,
//     before anyone else may take them);
//   - on the raft leader, it places unowned instances and moves the
//     instances of a host that its heartbeats call dead to that host's pair
//     peer, one compare-and-swap per instance, at most once per hold-down.
//
// A pair without a witness has no majority once a host is lost: the
// survivor fences the peer, and only on a confirmed power-off continues as
// the single voter.
package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/fence"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// Runtime starts and stops this host's role instances.
type Runtime interface {
	Start(ctx context.Context, instance string) error
	// Stop stops gracefully (services flush and close).
	Stop(ctx context.Context, instance string) error
	// Kill stops without a grace period (a host whose lease ended).
	Kill(ctx context.Context, instance string) error
}

// Cluster is what the controller needs of the raft node.
type Cluster interface {
	IsLeader() bool
	InMajority() bool
	Table() []cluster.Ownership
	Assign(ctx context.Context, instance, owner string, expect uint64, reason string) (cluster.Ownership, error)
	RecoverAlone() error
	Voters() []string
	// TransferLeadership hands the leader's role to voter to.
	TransferLeadership(to string) error
	Set(ctx context.Context, key, value string) (cluster.Setting, error)
	Setting(key string) (cluster.Setting, bool)
}

// Config configures a Controller.
type Config struct {
	Self    string // host name, or "witness"
	Stack   *stackfile.Stack
	Cluster Cluster
	// Peer tells what this member's heartbeats say of another member.
	Peer func(id string) heartbeat.State
	// Runtime is nil on the witness, which runs no roles.
	Runtime Runtime
	// Fence returns a host's fence device (pairs without a witness).
	Fence func(host string) (fence.Device, bool)
	// VIP is told when this host starts or stops holding the website
	// address (it follows the lb instance).
	VIP func(hold bool)
	// LeaderAddr is the leader's raft address (host:port); when set, a
	// host that does not lead starts an instance only once the leader's
	// table confirms it (see confirm.go).
	LeaderAddr func() string
	HoldDown   time.Duration
	// Lease is how long a host may go on running after it last heard from
	// a majority (cluster.Timing.Lease). A move releases first and waits
	// this long before the new owner starts, so the old owner is stopped
	// (it applied the release, or its lease ran out) whatever its state.
	Lease time.Duration
	// FenceDelay is how long a host without the head start waits before
	// fencing its peer in a pair without a witness (see fenceHeadStart).
	FenceDelay time.Duration
	Tick       time.Duration
	Logger     *slog.Logger
	// Credentials prove this member on the cluster RPC and check the
	// members it talks to; without them the RPC neither serves nor calls.
	Credentials *clusterauth.Credentials
}

// witnessID is the witness's member ID (clusterconf.WitnessID).
const witnessID = "witness"

// DefaultFenceDelay is longer than a BMC takes to act on a power off, so
// the host with the head start has powered its peer off before the peer's
// own fence attempt would begin.
const DefaultFenceDelay = 5 * time.Second

// Event is one line of a failover's timeline.
type Event struct {
	At   time.Time `json:"at"`
	What string    `json:"what"`
}

// Failover is the record of one takeover.
type Failover struct {
	From     string  `json:"from"`
	To       string  `json:"to"`
	Timeline []Event `json:"timeline"`
}

// releasingFrom starts the reason of a move's release; the host named
// after it is the one the instance was taken from.
const releasingFrom = "releasing from "

// Controller runs the loop.
type Controller struct {
	cfg Config
	log *slog.Logger
	// rpcPort is the peers' cluster RPC port; 0 means RPCPort (tests set
	// a loopback server's).
	rpcPort int
	// rpcClients are the cluster RPC's HTTPS clients, by the member that
	// must answer ("" for any); under rpcMu, apart from mu since calls
	// are made with mu held or not.
	rpcMu      sync.Mutex
	rpcClients map[string]*http.Client

	mu        sync.Mutex
	running   map[string]bool
	holdVIP   bool
	deadSince map[string]time.Time
	lastMove  map[string]time.Time
	// warned is under warnMu: instance starts warn from their own
	// goroutines.
	warnMu    sync.Mutex
	warned    map[string]time.Time
	failovers []Failover
	// moving holds instances released by a move in progress, so placement
	// does not hand them back meanwhile.
	moving map[string]bool
	// retry backs off the starts that failed, by instance.
	retry map[string]startRetry
	// unownedSince is when the leader first saw each released instance
	// without an owner (its loop only).
	unownedSince map[string]time.Time
	// started is when this controller began: a host not up by then gets a
	// hold-down to boot before its instances are first placed on its pair.
	started time.Time
	// lastStep and settleUntil detect this host's own stalls (Step only).
	lastStep, settleUntil time.Time
	// split is the leader's view of whether each pair still hears itself.
	split splitState
	// peerSeen is set once this host's heartbeats have heard its pair peer
	// (its loop only): a peer never heard since this host started may be
	// booting, not lost, and is never fenced (corosync's wait_for_all).
	peerSeen bool
	// stepBegan is when the loop's pass under way began (zero between
	// passes); guardAt is the guard's last pass, outSince when it first
	// found this host out of the majority; starting and killing hold the
	// instances being started by the loop and killed by the guard.
	stepBegan, guardAt, outSince time.Time
	starting, killing            map[string]bool
	// nextHandOff is when the witness, leading, may next offer the
	// leadership to a host (its loop only).
	nextHandOff time.Time
	// fenceWaitFrom is when this host, having no head start, began
	// waiting before fencing its peer (its loop only).
	fenceWaitFrom time.Time
}

// New checks cfg.
func New(cfg Config) (*Controller, error) {
	if cfg.Stack == nil || cfg.Cluster == nil || cfg.Peer == nil {
		return nil, fmt.Errorf("failover: stack, cluster and peer view are required")
	}
	if cfg.HoldDown == 0 {
		cfg.HoldDown = cfg.Stack.Cluster.HoldDown.D()
	}
	if cfg.Lease == 0 {
		cfg.Lease = cluster.DefaultTiming.Lease
	}
	if cfg.FenceDelay == 0 {
		cfg.FenceDelay = DefaultFenceDelay
	}
	if cfg.Tick == 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg, log: cfg.Logger, running: map[string]bool{}, deadSince: map[string]time.Time{},
		lastMove: map[string]time.Time{}, warned: map[string]time.Time{}, moving: map[string]bool{}, retry: map[string]startRetry{}, starting: map[string]bool{}, killing: map[string]bool{}, started: time.Now(), unownedSince: map[string]time.Time{}}, nil
}

// Run loops until ctx ends, then stops every local instance.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Tick)
	defer t.Stop()
	go c.pollPairViews(ctx)
	go c.guard(ctx)
	for {
		select {
		case <-ctx.Done():
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c.enforce(stopCtx, map[string]bool{}, stopping{why: "shutting down"})
			cancel()
			return
		case <-t.C:
			c.safeStep(ctx)
		}
	}
}

func (c *Controller) safeStep(ctx context.Context) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("failover: step panicked; retrying next tick", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	c.Step(ctx)
}

// Step is one pass of the loop (exported for tests that drive time).
func (c *Controller) Step(ctx context.Context) {
	// A stall is time between steps; a step's own work (stopping and
	// starting instances takes seconds) is not one.
	c.mu.Lock()
	c.stepBegan = time.Now()
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.stepBegan = time.Time{}
		c.mu.Unlock()
		c.lastStep = time.Now()
	}()
	table := c.cfg.Cluster.Table()
	if p := c.pairOf(c.cfg.Self); p != "" && c.alive(p) {
		c.peerSeen = true
	}
	now := time.Now()
	settling := c.noteStall(now)
	if c.cfg.Runtime != nil {
		want := map[string]bool{}
		// Past its lease, a host may already have been replaced: what it
		// still runs is killed, not given a graceful stop's seconds.
		how := stopping{why: "lost contact with the cluster majority", kill: true}
		majority := c.cfg.Cluster.InMajority()
		if !majority && settling {
			c.warnOnce("stall", "failover: this host stalled; reading what the cluster sent meanwhile before judging its silence")
		}
		if majority || settling {
			how = stopping{why: "ownership moved"}
			c.mu.Lock()
			for _, o := range table {
				// Settling only keeps what runs: a host without the
				// majority never starts an instance.
				if o.Owner == c.cfg.Self && (majority || c.running[o.Instance]) {
					want[o.Instance] = true
				}
			}
			c.mu.Unlock()
		}
		c.enforce(ctx, want, how)
	}
	if c.cfg.Cluster.IsLeader() {
		c.lead(ctx, table)
		c.handOff(table, now)
	} else if len(c.cfg.Cluster.Voters()) == 2 && !c.cfg.Cluster.InMajority() && c.cfg.Runtime != nil {
		c.fenceAndGoAlone(ctx, table)
	}
}

// stallSettle is how long a host that finds its own loop stalled (a
// starved or descheduled CPU) gives raft to read what the cluster sent
// during the stall before treating the silence as lost contact: a few
// leader heartbeats, far below the lease, so it adds at most that to the
// time an old owner may overlap a new one.
const stallSettle = 150 * time.Millisecond

// noteStall reports whether the host is settling after a stall of its
// own (a long gap since the previous step ended). Only a stall shorter than the dead
// time counts: past it, peers may have declared this host dead and moved
// its instances.
func (c *Controller) noteStall(now time.Time) bool {
	if !c.lastStep.IsZero() {
		gap := now.Sub(c.lastStep)
		if gap > 4*c.cfg.Tick && gap+stallSettle < c.cfg.Stack.Cluster.Dead.D() {
			c.settleUntil = now.Add(stallSettle)
		}
	}
	return now.Before(c.settleUntil)
}

// enforce starts and stops local instances to match want, stopping first.
func (c *Controller) enforce(ctx context.Context, want map[string]bool, how stopping) {
	c.mu.Lock()
	var stop, start []string
	for inst := range c.running {
		if !want[inst] {
			stop = append(stop, inst)
		}
	}
	for inst := range want {
		if !c.running[inst] {
			start = append(start, inst)
		}
	}
	c.mu.Unlock()
	slices.Sort(stop)
	slices.Sort(start)
	if c.cfg.Runtime != nil {
		if len(stop) > 0 {
			c.log.Warn("failover: stepping down", "why", how.why, "instances", strings.Join(stop, " "))
		}
		// The website's address goes before the lb answering on it: a host
		// stepping down stops drawing traffic at once, not after its
		// instances have stopped.
		if !anyLB(want) {
			c.setVIP(false)
		}
		inParallel(ctx, c.log, stop, func(inst string) []string { return stopBefore(inst, stop) },
			func(ctx context.Context, inst string) { c.stopOne(ctx, inst, how) })
		start = slices.DeleteFunc(start, c.backingOff)
		served := c.servedRoles()
		inParallel(ctx, c.log, start, func(inst string) []string { return startAfter(inst, start, served) }, c.startOne)
	}
	c.mu.Lock()
	running := maps.Clone(c.running)
	// What the lease guard is killing holds no address any more.
	for inst := range c.killing {
		delete(running, inst)
	}
	c.mu.Unlock()
	c.setVIP(anyLB(running))
}

// anyLB reports whether set holds an lb instance (the VIP's holder).
func anyLB(set map[string]bool) bool {
	for inst, on := range set {
		if on && roleOf(inst) == "lb" {
			return true
		}
	}
	return false
}

// setVIP tells the VIP holder whether this host holds the address, on a
// change only.
func (c *Controller) setVIP(hold bool) {
	c.mu.Lock()
	changed := hold != c.holdVIP
	c.holdVIP = hold
	c.mu.Unlock()
	if changed && c.cfg.VIP != nil {
		c.cfg.VIP(hold)
	}
}

func roleOf(instance string) string {
	for i, r := range instance {
		if r >= '0' && r <= '9' {
			return instance[:i]
		}
	}
	return instance
}

// alive reports whether a member is up as far as this member can tell.
func (c *Controller) alive(id string) bool {
	return id == c.cfg.Self || c.cfg.Peer(id) == heartbeat.Alive || c.cfg.Peer(id) == heartbeat.Suspect
}

func (c *Controller) pairOf(host string) string {
	if h, _, ok := c.cfg.Stack.HostByName(host); ok {
		return h.Pair
	}
	return ""
}

// lead places unowned instances and moves those of dead hosts.
func (c *Controller) lead(ctx context.Context, table []cluster.Ownership) {
	owned := map[string]cluster.Ownership{}
	for _, o := range table {
		owned[o.Instance] = o
	}
	insts, fromCluster, err := c.instances()
	if err != nil {
		c.log.Error("failover: stack instances", "err", err)
		return
	}
	now := time.Now()
	if fromCluster {
		c.releaseRemoved(ctx, table, insts)
	}
	for _, in := range insts {
		o, ok := owned[in.Name]
		if ok && o.Owner != "" {
			delete(c.unownedSince, in.Name)
			continue
		}
		if c.isMoving(in.Name) {
			continue
		}
		target := in.Host
		if ok && o.Epoch > 0 {
			// Released by a move that did not finish (its leader lost the
			// majority between release and assignment). The last owner may
			// run it until its lease ends, which is at most a lease after
			// this leader first saw it released; then the move is finished
			// instead of sending the instance home (no failback).
			first, seen := c.unownedSince[in.Name]
			if !seen {
				first = now
				c.unownedSince[in.Name] = now
			}
			if now.Sub(first) < c.cfg.Lease {
				continue
			}
			if from, ok := strings.CutPrefix(o.Reason, releasingFrom); ok {
				target = from
				if p := c.pairOf(from); p != "" && c.alive(p) {
					target = p
				}
			}
		}
		if !c.alive(target) {
			// A host whose instances were never placed may still be booting
			// (the hosts of a pair seldom come up in the same second): it
			// gets one hold-down from this controller's start before its
			// pair takes them, for they would stay there (no failback).
			if o.Epoch == 0 && now.Sub(c.started) < c.cfg.HoldDown {
				c.warnOnce(target, "failover: waiting for a host to come up before placing its instances", "host", target,
					"then_on_pair_after", c.started.Add(c.cfg.HoldDown).Sub(now).Round(time.Second))
				continue
			}
			if p := c.pairOf(target); p != "" && c.alive(p) {
				target = p
			} else {
				continue
			}
		}
		if _, err := c.cfg.Cluster.Assign(ctx, in.Name, target, o.Epoch, "placement"); err != nil {
			c.log.Warn("failover: placement failed", "instance", in.Name, "host", target, "err", err)
		}
	}
	// Group owned instances by host and move those of dead hosts.
	byHost := map[string][]cluster.Ownership{}
	for _, o := range table {
		if o.Owner != "" {
			byHost[o.Owner] = append(byHost[o.Owner], o)
		}
	}
	for host, list := range byHost {
		if c.alive(host) {
			delete(c.deadSince, host)
			continue
		}
		if _, ok := c.deadSince[host]; !ok {
			c.deadSince[host] = now
		}
		peer := c.pairOf(host)
		if peer == "" || !c.alive(peer) {
			c.warnOnce(host, "failover: host is dead and its pair peer is not available; nothing can take over", "host", host, "peer", peer)
			continue
		}
		if c.inHoldDown(host, now) {
			c.warnOnce(host, "failover: host is dead again within the hold-down; not moving (flapping?)", "host", host, "holddown", c.cfg.HoldDown)
			continue
		}
		c.move(ctx, host, peer, list, c.deadSince[host])
	}
	c.resolveSplits(ctx, byHost, now)
}

// InstancesKey is the cluster setting that lists the instances of the
// revision in force (JSON, as PlacedInstance): a host that applies a
// revision adding or removing instances sets it, and whichever member
// leads places and releases instances by it rather than by the stack it
// started with (the witness never reads new revisions).
const InstancesKey = "stack/instances"

// PlacedInstance is one instance in InstancesKey: its name and the host
// the stack file places it on.
type PlacedInstance struct {
	Name string `json:"name"`
	Host string `json:"host"`
}

// InstancesValue is the InstancesKey value for stack s.
func InstancesValue(s *stackfile.Stack) (string, error) {
	insts, err := s.Instances()
	if err != nil {
		return "", err
	}
	out := make([]PlacedInstance, 0, len(insts))
	for _, in := range insts {
		out = append(out, PlacedInstance{Name: in.Name, Host: in.Host})
	}
	b, err := json.Marshal(out)
	return string(b), err
}

// instances are what the leader places: the cluster's list when a host
// has set one (fromCluster), else the instances of the stack it started
// with.
func (c *Controller) instances() (out []PlacedInstance, fromCluster bool, err error) {
	if s, ok := c.cfg.Cluster.Setting(InstancesKey); ok {
		if err := json.Unmarshal([]byte(s.Value), &out); err == nil {
			return out, true, nil
		}
		c.warnOnce("instances", "failover: the cluster's instance list is unreadable; placing the boot stack's instances", "err", err)
	}
	insts, err := c.cfg.Stack.Instances()
	if err != nil {
		return nil, false, err
	}
	out = make([]PlacedInstance, 0, len(insts))
	for _, in := range insts {
		out = append(out, PlacedInstance{Name: in.Name, Host: in.Host})
	}
	return out, false, nil
}

// releaseRemoved releases the instances a revision removed: their owners
// stop them, and nothing places them again.
func (c *Controller) releaseRemoved(ctx context.Context, table []cluster.Ownership, insts []PlacedInstance) {
	listed := map[string]bool{}
	for _, in := range insts {
		listed[in.Name] = true
	}
	for _, o := range table {
		if o.Owner == "" || listed[o.Instance] {
			continue
		}
		if c.isMoving(o.Instance) {
			continue
		}
		c.log.Info("failover: releasing an instance the stack no longer has", "instance", o.Instance, "owner", o.Owner)
		if _, err := c.cfg.Cluster.Assign(ctx, o.Instance, "", o.Epoch, removedFromStack); err != nil {
			c.log.Warn("failover: releasing a removed instance", "instance", o.Instance, "err", err)
		}
	}
}

// isMoving reports whether a move of this leader has the instance in hand.
func (c *Controller) isMoving(instance string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moving[instance]
}

// removedFromStack is the reason of a release for a removed instance.
const removedFromStack = "removed from the stack"

func (c *Controller) warnOnce(key, msg string, args ...any) {
	c.warnMu.Lock()
	defer c.warnMu.Unlock()
	if t, ok := c.warned[key+msg]; ok && time.Since(t) < 30*time.Second {
		return
	}
	c.warned[key+msg] = time.Now()
	c.log.Warn(msg, args...)
}

func (c *Controller) move(ctx context.Context, from, to string, list []cluster.Ownership, detected time.Time) {
	f := Failover{From: from, To: to, Timeline: []Event{{At: detected, What: "detected " + from + " dead"}, {At: time.Now(), What: "decided: move to " + to}}}
	c.log.Warn("failover: moving instances", "from", from, "to", to, "instances", len(list))
	c.mu.Lock()
	for _, o := range list {
		c.moving[o.Instance] = true
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, o := range list {
			delete(c.moving, o.Instance)
		}
		c.mu.Unlock()
	}()
	var released []cluster.Ownership
	for _, o := range list {
		r, err := c.cfg.Cluster.Assign(ctx, o.Instance, "", o.Epoch, releasingFrom+from)
		if err != nil {
			c.log.Error("failover: release failed", "instance", o.Instance, "err", err)
			continue
		}
		released = append(released, r)
	}
	f.Timeline = append(f.Timeline, Event{At: time.Now(), What: fmt.Sprintf("released %d/%d instances", len(released), len(list))})
	select {
	case <-ctx.Done():
		return
	case <-time.After(c.cfg.Lease):
	}
	moved := 0
	for _, o := range released {
		if _, err := c.cfg.Cluster.Assign(ctx, o.Instance, to, o.Epoch, fmt.Sprintf("failover from %s", from)); err != nil {
			c.log.Error("failover: move failed", "instance", o.Instance, "err", err)
			continue
		}
		moved++
	}
	f.Timeline = append(f.Timeline, Event{At: time.Now(), What: fmt.Sprintf("assigned %d/%d instances to %s", moved, len(list), to)})
	c.mu.Lock()
	c.lastMove[from] = time.Now()
	c.failovers = append(c.failovers, f)
	c.mu.Unlock()
	// Recorded in the cluster too, after the move (off its critical path):
	// a leader elected next keeps the hold-down.
	if _, err := c.cfg.Cluster.Set(ctx, lastMoveKey+from, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		c.log.Warn("failover: recording the move for the hold-down", "from", from, "err", err)
	}
}

// lastMoveKey, followed by a host name, is the cluster setting that keeps
// when that host's instances were last moved away.
const lastMoveKey = "failover/last-move-from/"

// inHoldDown reports whether host's instances were moved away less than a
// hold-down ago, by this leader or (as the cluster settings keep) an
// earlier one.
func (c *Controller) inHoldDown(host string, now time.Time) bool {
	last := c.lastMove[host]
	if s, ok := c.cfg.Cluster.Setting(lastMoveKey + host); ok {
		if t, err := time.Parse(time.RFC3339Nano, s.Value); err == nil && t.After(last) {
			last = t
		}
	}
	return !last.IsZero() && now.Sub(last) < c.cfg.HoldDown
}

// fenceAndGoAlone is the no-witness path: the peer is dead by heartbeats,
// raft has no majority, so power the peer off, confirm, and continue as the
// sole voter.
func (c *Controller) fenceAndGoAlone(ctx context.Context, table []cluster.Ownership) {
	peer := c.pairOf(c.cfg.Self)
	if peer == "" || c.alive(peer) {
		c.fenceWaitFrom = time.Time{}
		return
	}
	if !c.peerSeen {
		c.warnOnce(peer, "failover: peer not heard since this host started; not fencing a peer that may be booting: run `magestack failover --force` to take over if it is really off", "peer", peer)
		return
	}
	if c.cfg.Fence == nil {
		c.warnOnce(peer, "failover: peer is dead, no witness and no fence device: run `magestack failover --force` to take over (it risks two owners if the peer is in fact alive)", "peer", peer)
		return
	}
	dev, ok := c.cfg.Fence(peer)
	if !ok {
		c.warnOnce(peer, "failover: peer is dead, no witness and no fence device: run `magestack failover --force` to take over (it risks two owners if the peer is in fact alive)", "peer", peer)
		return
	}
	if !c.fenceHeadStart(table, peer) {
		if c.fenceWaitFrom.IsZero() {
			c.fenceWaitFrom = time.Now()
			c.log.Warn("failover: peer is dead; giving it the first shot at fencing before fencing it", "peer", peer, "wait", c.cfg.FenceDelay)
		}
		if time.Since(c.fenceWaitFrom) < c.cfg.FenceDelay {
			return
		}
	}
	c.log.Warn("failover: fencing peer before taking over", "peer", peer, "device", dev.String())
	if err := fence.Fence(ctx, dev, 15*time.Second); err != nil {
		c.warnOnce(peer, "failover: fencing failed; not taking over", "peer", peer, "err", err)
		return
	}
	c.log.Warn("failover: peer confirmed off; continuing as the only voter", "peer", peer)
	if err := c.cfg.Cluster.RecoverAlone(); err != nil {
		c.log.Error("failover: recover alone failed", "err", err)
	}
}

// fenceHeadStart tells whether this host fences its peer at once. When
// the hosts lose each other but both still reach the other's fence device,
// both would fence and the stack would go dark; so one side waits
// FenceDelay (pacemaker's priority-fencing-delay): the host that owned the
// lb (served the website) in the last table it knows fences at once, and
// when neither did, the host listed first in the stack.
func (c *Controller) fenceHeadStart(table []cluster.Ownership, peer string) bool {
	for _, o := range table {
		if roleOf(o.Instance) == "lb" {
			switch o.Owner {
			case c.cfg.Self:
				return true
			case peer:
				return false
			}
		}
	}
	for _, h := range c.cfg.Stack.Hosts {
		switch h.Name {
		case c.cfg.Self:
			return true
		case peer:
			return false
		}
	}
	return true
}

// MoveTo moves every instance that runs on another host to host to, on
// purpose (maintenance of the other host). Leader only. The blip is the
// lease wait plus the instances' start.
func (c *Controller) MoveTo(ctx context.Context, to string) (Failover, error) {
	if !c.cfg.Cluster.IsLeader() {
		return Failover{}, cluster.ErrNotLeader
	}
	if _, _, ok := c.cfg.Stack.HostByName(to); !ok {
		return Failover{}, fmt.Errorf("failover --to %s: no such host in the stack", to)
	}
	if !c.alive(to) {
		return Failover{}, fmt.Errorf("failover --to %s: that host is not alive", to)
	}
	byHost := map[string][]cluster.Ownership{}
	for _, o := range c.cfg.Cluster.Table() {
		if o.Owner != "" && o.Owner != to {
			byHost[o.Owner] = append(byHost[o.Owner], o)
		}
	}
	if len(byHost) == 0 {
		return Failover{}, fmt.Errorf("failover --to %s: it already runs every instance", to)
	}
	for from, list := range byHost {
		c.move(ctx, from, to, list, time.Now())
		// A planned move starts from the operator's request, not from a
		// host found dead.
		c.mu.Lock()
		if n := len(c.failovers); n > 0 && c.failovers[n-1].From == from && len(c.failovers[n-1].Timeline) > 0 {
			c.failovers[n-1].Timeline[0].What = "requested: move " + from + "'s instances to " + to
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failovers[len(c.failovers)-1], nil
}

// Self is the member this controller runs for.
func (c *Controller) Self() string { return c.cfg.Self }

// ForceAlone is `magestack failover --force`: take over without a
// witness or fence. The operator vouches that the peer is off.
func (c *Controller) ForceAlone() error {
	return c.cfg.Cluster.RecoverAlone()
}

// Settled reports whether every instance of the stack has a committed
// owner and this host runs exactly the instances it owns.
func (c *Controller) Settled() bool {
	owners := map[string]string{}
	for _, o := range c.cfg.Cluster.Table() {
		owners[o.Instance] = o.Owner
	}
	insts, _, err := c.instances()
	if err != nil {
		return false
	}
	mine := map[string]bool{}
	for _, in := range insts {
		// Released instances the stack no longer lists stay in the table
		// ownerless; only listed ones must have an owner.
		switch owners[in.Name] {
		case "":
			return false
		case c.cfg.Self:
			mine[in.Name] = true
		}
	}
	if c.cfg.Runtime == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(mine) != len(c.running) {
		return false
	}
	for inst := range mine {
		if !c.running[inst] {
			return false
		}
	}
	return true
}

// Status is the controller's view for `magestack status`.
type Status struct {
	Running   []string   `json:"running"`
	HoldsVIP  bool       `json:"holds_vip"`
	Failovers []Failover `json:"failovers,omitempty"`
}

// Status reports what runs here and past failovers.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	var run []string
	for k := range c.running {
		run = append(run, k)
	}
	slices.Sort(run)
	return Status{Running: run, HoldsVIP: c.holdVIP, Failovers: slices.Clone(c.failovers)}
}
