package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/clusterconf"
	"magestack/init/failover"
	"magestack/init/fence"
	"magestack/init/heartbeat"
	"magestack/init/roleenv"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/init/vip"
	"magestack/init/watchdog"
)

// roleRuntime starts and stops single role instances on this host for the
// failover controller: an instance's unit is added to PID 1's supervisor the
// first time this host runs it, and built again from a newer revision the
// next time it starts after one was applied (SetStack).
type roleRuntime struct {
	log       *slog.Logger
	sup       *supervise.Supervisor
	opts      roleenv.Options
	hostIndex int

	// started, when set, is told of each instance once it is ready.
	started func(instance string)

	mu    sync.Mutex
	stack *stackfile.Stack            // the revision later starts use
	built map[string]*stackfile.Stack // instance: the revision its unit was built from
}

func newRoleRuntime(log *slog.Logger, sup *supervise.Supervisor, opts roleenv.Options, st *stackfile.Stack, hostIndex int, started func(string)) *roleRuntime {
	return &roleRuntime{log: log, sup: sup, opts: opts, stack: st, hostIndex: hostIndex, started: started, built: map[string]*stackfile.Stack{}}
}

// SetStack makes later starts use revision s.
func (r *roleRuntime) SetStack(s *stackfile.Stack) {
	r.mu.Lock()
	r.stack = s
	r.mu.Unlock()
}

// Runs reports whether this host runs the instance (or is bringing it up).
func (r *roleRuntime) Runs(name string) bool {
	st, ok := r.state(name)
	return ok && st != supervise.StateStopped && st != supervise.StateFailed
}

// Ready reports whether this host runs the instance and it is ready.
func (r *roleRuntime) Ready(name string) bool {
	st, ok := r.state(name)
	return ok && st == supervise.StateReady
}

// state is the supervisor's state of an instance this host has built.
func (r *roleRuntime) state(name string) (supervise.State, bool) {
	r.mu.Lock()
	_, known := r.built[name]
	r.mu.Unlock()
	if !known {
		return "", false
	}
	u, err := r.sup.Unit(name)
	return u.State, err == nil
}

func (r *roleRuntime) instance(name string) (stackfile.Instance, error) {
	insts, err := r.stack.Instances()
	if err != nil {
		return stackfile.Instance{}, err
	}
	for _, in := range insts {
		if in.Name == name {
			return in, nil
		}
	}
	return stackfile.Instance{}, fmt.Errorf("instance %s is not in stack %s", name, r.stack.Name)
}

// Start starts the instance and waits (bounded) until it is ready. The
// failover loop starts independent instances at once, so only building
// the unit holds the runtime's lock, not the wait.
func (r *roleRuntime) Start(ctx context.Context, name string) error {
	if err := r.build(ctx, name); err != nil {
		return err
	}
	if err := r.sup.Start(ctx, name); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := r.sup.WaitReady(wctx, name); err != nil {
		return err
	}
	if r.started != nil {
		r.started(name)
	}
	return nil
}

// build adds the instance's unit from the revision in force, replacing
// one built from an older revision unless it runs.
func (r *roleRuntime) build(ctx context.Context, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if from, known := r.built[name]; known && from != r.stack {
		if u, err := r.sup.Unit(name); err == nil && (u.State == supervise.StateStopped || u.State == supervise.StateFailed) {
			if err := r.sup.Remove(ctx, name); err != nil {
				return fmt.Errorf("rebuilding %s from the new revision: %w", name, err)
			}
			delete(r.built, name)
		}
	}
	if _, known := r.built[name]; known {
		return nil
	}
	in, err := r.instance(name)
	if err != nil {
		return err
	}
	env, err := roleenv.New(r.log, r.opts, r.stack, r.hostIndex, in)
	if err != nil {
		return err
	}
	if err := r.sup.Add(env.Unit()); err != nil {
		return err
	}
	r.built[name] = r.stack
	return nil
}

// Stop stops the instance; its unit stays known for a later start.
func (r *roleRuntime) Stop(ctx context.Context, name string) error {
	if !r.knows(name) {
		return nil
	}
	return r.sup.Stop(ctx, name)
}

// Kill stops the instance without a grace period.
func (r *roleRuntime) Kill(ctx context.Context, name string) error {
	if !r.knows(name) {
		return nil
	}
	return r.sup.Kill(ctx, name)
}

func (r *roleRuntime) knows(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, known := r.built[name]
	return known
}

// pairedHost reports whether this host takes part in a cluster (it has a
// pair peer): its roles then run where the cluster says, not where the
// stack file places them.
func pairedHost(st *stackfile.Stack, host string) bool { return pairOf(st, host) != "" }

// pairOf is host's pair peer ("" for none).
func pairOf(st *stackfile.Stack, host string) string {
	if h, _, ok := st.HostByName(host); ok {
		return h.Pair
	}
	return ""
}

// watchdogTimeout is the hardware watchdog's timeout for a dead time: a
// PID 1 hung for three dead times is reset (at least 3 s, the watchdog
// counting whole seconds and a healthy PID 1 kicking every half second;
// at most a minute).
func watchdogTimeout(dead time.Duration) time.Duration {
	return min(max(3*dead, 3*time.Second), time.Minute).Truncate(time.Second)
}

// kickWhileGuarded kicks the watchdog while the failover controller's
// lease guard runs its passes: the guard is what stops this host's
// instances when it loses the majority, so a PID 1 that cannot run it
// must be reset rather than kept alive by a kicker that still can.
func kickWhileGuarded(ctx context.Context, log *slog.Logger, wd *watchdog.Watchdog, ctl *failover.Controller) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	started := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		last := ctl.GuardAlive()
		if last.IsZero() {
			last = started // the controller is starting
		}
		if since := time.Since(last); since > wd.Timeout()/2 {
			log.Error("watchdog: the lease guard has not run; not kicking (the host resets if it stays stuck)", "since", since.Round(time.Millisecond))
			continue
		}
		if err := wd.Kick(); err != nil {
			log.Error("watchdog", "err", err)
		}
	}
}

// clusterMember is what the cluster step started, for status and shutdown.
type clusterMember struct {
	stack  *stackfile.Stack
	node   *cluster.Node
	hb     *heartbeat.Monitor
	ctl    *failover.Controller
	rt     *roleRuntime
	wd     *watchdog.Watchdog
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the controller (which stops this host's instances), leaves the
// cluster and disarms the watchdog, for shutdown.
func (m *clusterMember) stop() {
	m.cancel()
	select {
	case <-m.done:
	case <-time.After(time.Minute):
	}
	m.node.Shutdown()
	if m.wd != nil {
		m.wd.Close()
	}
}

// clusterHooks tell PID 1 what the cluster does on this host; neither may
// block.
type clusterHooks struct {
	// OnSetting is told of cluster settings as they are applied here, on
	// raft's apply path.
	OnSetting func(cluster.Setting)
	// OnStarted is told of each instance this host started, once ready.
	OnStarted func(instance string)
	// BeforeRun gets the member before its controller starts any
	// instance.
	BeforeRun func(m *clusterMember)
}

// startCluster joins the cluster and runs the failover controller, which
// starts this host's share of the role instances. It returns once the
// controller runs; readiness of the instances follows from the controller.
func startCluster(ctx context.Context, log *slog.Logger, st *stackfile.Stack, host string, creds *clusterauth.Credentials,
	sup *supervise.Supervisor, opts roleenv.Options, dataDir string, publicLink func() string, hooks clusterHooks) (*clusterMember, error) {
	h, idx, ok := st.HostByName(host)
	if !ok {
		return nil, fmt.Errorf("cluster: host %q is not in the stack", host)
	}
	if h.PairLink != nil {
		if err := configurePairLink(*h.PairLink); err != nil {
			log.Error("cluster: pair link not configured; heartbeats use the LAN only", "err", err)
		}
	}
	conf, err := clusterconf.For(st, host)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	m := &clusterMember{stack: st, cancel: cancel, done: make(chan struct{})}
	// Raft between the two hosts of a pair rides the pair link while its
	// heartbeats say it is up (the witness is reached over the LAN): a lossy
	// LAN then costs the pair neither its majority nor its roles.
	pairRaft := pairRaftAddr(st, h)
	if m.hb, err = heartbeat.New(heartbeat.Config{ID: host, Paths: conf.Paths, Interval: st.Cluster.Heartbeat.D(),
		Suspect: st.Cluster.Suspect.D(), Dead: st.Cluster.Dead.D(), Logger: log, Key: creds.HeartbeatKey()}); err != nil {
		return nil, err
	}
	cfg := conf.Self
	cfg.DataDir = dataDir
	cfg.Logger = log
	cfg.OnSetting = hooks.OnSetting
	cfg.ServerTLS = creds.ServerConfig(conf.IDs())
	cfg.ClientTLS = creds.ClientConfig(conf.IDs(), "")
	lanBind := cfg.Bind
	if pairRaft != "" {
		// Listen on the pair link too; the firewall admits the cluster
		// ports there and, on the LAN, from the stack's hosts only.
		_, port, _ := net.SplitHostPort(cfg.Bind)
		cfg.Bind = net.JoinHostPort("0.0.0.0", port)
		cfg.Route = func(id string) string {
			if id == h.Pair && pathUsable(m.hb, h.Pair, "pair") {
				return pairRaft
			}
			return ""
		}
	}
	if m.node, err = cluster.Start(cfg); err != nil {
		m.hb.Close()
		return nil, err
	}
	m.rt = newRoleRuntime(log, sup, opts, st, idx, hooks.OnStarted)

	var vipMu sync.Mutex
	var vipStop context.CancelFunc
	holdVIP := func(hold bool) {
		vipMu.Lock()
		defer vipMu.Unlock()
		if vipStop != nil {
			vipStop()
			vipStop = nil
		}
		if !hold || !st.Public.VIP.IsValid() {
			return
		}
		holder, err := vip.New(publicLink(), st.Public.VIP, log)
		if err != nil {
			log.Error("cluster: cannot hold the VIP", "err", err)
			return
		}
		holder.Allowed = m.node.InMajority
		vctx, cancel := context.WithCancel(ctx)
		vipStop = cancel
		go func() {
			defer holder.Close()
			if err := holder.Hold(vctx); err != nil {
				log.Error("cluster: VIP", "err", err)
			}
		}()
	}
	// Fence devices are built once: a bad entry is reported at start, not on
	// every tick of the controller that asks for it.
	fences := map[string]fence.Device{}
	for _, h := range st.Hosts {
		if h.Fence == nil || h.Name == host {
			continue
		}
		d, err := fence.New(h.Fence.Type, h.Fence.Address, h.Fence.User, h.Fence.Password)
		if err != nil {
			log.Error("cluster: the peer's fence device is unusable; it cannot be fenced", "peer", h.Name, "err", err)
			continue
		}
		fences[h.Name] = d
	}
	fenceFor := func(peer string) (fence.Device, bool) {
		d, ok := fences[peer]
		return d, ok
	}
	if m.ctl, err = failover.New(failover.Config{Self: host, Stack: st, Cluster: m.node, Peer: m.hb.Peer, Runtime: m.rt,
		Fence: fenceFor, VIP: holdVIP, LeaderAddr: m.node.LeaderAddr, Lease: conf.Timing.Lease, Logger: log, Credentials: creds}); err != nil {
		return nil, err
	}
	if wd, err := watchdog.Open("/dev/watchdog", watchdogTimeout(st.Cluster.Dead.D())); err == nil {
		m.wd = wd
		go kickWhileGuarded(ctx, log, wd, m.ctl)
	} else {
		log.Warn("cluster: no hardware watchdog; a hung PID 1 is not reset", "err", err)
	}
	if hooks.BeforeRun != nil {
		hooks.BeforeRun(m)
	}
	go m.hb.Run(ctx)
	go rejoinLoop(ctx, log, m.node, conf.Self.Members, m.hb.Peer, host)
	go func() {
		defer close(m.done)
		m.ctl.Run(ctx)
	}()
	rpcAddr := net.JoinHostPort(hostOf(lanBind), strconv.Itoa(failover.RPCPort))
	go func() {
		if err := m.ctl.ServeRPC(ctx, rpcAddr); err != nil {
			log.Error("cluster: rpc listener", "addr", rpcAddr, "err", err)
		}
	}()
	return m, nil
}

// clusterStatus is the cluster section of `magestack status`.
type clusterStatus struct {
	State     string                 `json:"state"`
	Leader    string                 `json:"leader"`
	Voters    []string               `json:"voters"`
	Majority  bool                   `json:"in_majority"`
	Ownership []ownershipRow         `json:"ownership"`
	Peers     []heartbeat.PeerStatus `json:"peers"`
	// HeartbeatDrops counts datagrams on the heartbeat port that were not
	// authentic, fresh heartbeats of a member.
	HeartbeatDrops heartbeat.Drops `json:"heartbeat_drops"`
	Local          failover.Status `json:"local"`
	// Settings are the cluster-wide switches (maintenance modes, the
	// hold-down's last moves).
	Settings []cluster.Setting `json:"settings,omitempty"`
}

// ownershipRow is one instance's owner and the host that would take it.
type ownershipRow struct {
	cluster.Ownership
	Standby string `json:"standby"`
}

func (m *clusterMember) status() clusterStatus {
	var rows []ownershipRow
	for _, o := range m.node.Table() {
		row := ownershipRow{Ownership: o}
		if h, _, ok := m.stack.HostByName(o.Owner); ok {
			row.Standby = h.Pair
		}
		rows = append(rows, row)
	}
	return clusterStatus{State: m.node.State(), Leader: m.node.Leader(), Voters: m.node.Voters(),
		Majority: m.node.InMajority(), Ownership: rows, Peers: m.hb.Status(), HeartbeatDrops: m.hb.Drops(),
		Local: m.ctl.Status(), Settings: m.node.Settings()}
}

// writeCluster prints the cluster section of `magestack status`.
func writeCluster(w io.Writer, c clusterStatus) {
	fmt.Fprintf(w, "\ncluster: this host %s, leader %s, voters %s, in majority: %v\n",
		strings.ToLower(c.State), orDash(c.Leader), strings.Join(c.Voters, " "), c.Majority)
	switch {
	case len(c.Local.Running) == 0:
		fmt.Fprintln(w, "this host runs no instance: standby")
	case c.Local.HoldsVIP:
		fmt.Fprintf(w, "this host runs %s and holds the website's address\n", strings.Join(c.Local.Running, " "))
	default:
		fmt.Fprintf(w, "this host runs %s\n", strings.Join(c.Local.Running, " "))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tOWNER\tEPOCH\tSTANDBY\tSINCE\tREASON")
	for _, o := range c.Ownership {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", o.Instance, orDash(o.Owner), o.Epoch, orDash(o.Standby),
			o.Since.Format("15:04:05"), orDash(o.Reason))
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tPATHS")
	for _, p := range c.Peers {
		var paths []string
		for name, ps := range p.Paths {
			paths = append(paths, name+"="+string(ps.State))
		}
		sort.Strings(paths)
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Peer, p.State, strings.Join(paths, " "))
	}
	tw.Flush()
	if d := c.HeartbeatDrops; d != (heartbeat.Drops{}) {
		fmt.Fprintf(w, "heartbeats dropped: forged %d, replayed %d, stale %d, stranger %d, malformed %d\n",
			d.Forged, d.Replayed, d.Stale, d.Stranger, d.Malformed)
	}
	if len(c.Settings) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SETTING\tVALUE\tSINCE")
		for _, s := range c.Settings {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, s.Value, s.Since.Format("2006-01-02 15:04:05"))
		}
		tw.Flush()
	}
	for _, f := range c.Local.Failovers {
		fmt.Fprintf(w, "failover %s → %s:\n", f.From, f.To)
		for _, e := range f.Timeline {
			fmt.Fprintf(w, "  %s  %s\n", e.At.Format("15:04:05.000"), e.What)
		}
	}
}

// pairRaftAddr is h's pair peer's raft address on the pair link, "" when
// either host has no pair-link address.
func pairRaftAddr(st *stackfile.Stack, h *stackfile.Host) string {
	if h.Pair == "" || h.PairLink == nil || !h.PairLink.Address.IsValid() {
		return ""
	}
	ph, _, ok := st.HostByName(h.Pair)
	if !ok || ph.PairLink == nil || !ph.PairLink.Address.IsValid() {
		return ""
	}
	return net.JoinHostPort(ph.PairLink.Address.Addr().String(), strconv.Itoa(clusterconf.RaftPort))
}

// pathUsable reports whether peer's path is alive, or not yet judged (at
// boot raft dials before the first heartbeats: its connections outlive
// route changes, so they should start on the pair link).
func pathUsable(hb *heartbeat.Monitor, peer, path string) bool {
	for _, p := range hb.Status() {
		if p.Peer == peer {
			switch p.Paths[path].State {
			case heartbeat.Alive, heartbeat.Unknown, "":
				return true
			}
			return false
		}
	}
	return false
}

func hostOf(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

// linkByMAC names the NIC with mac.
func linkByMAC(mac string) (string, error) {
	l, err := linkWithMAC(mac)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

func linkWithMAC(mac string) (netlink.Link, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("mac %q: %w", mac, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == hw.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no NIC with MAC %s", mac)
}

// configurePairLink puts the pair-link address on the NIC with its MAC.
func configurePairLink(pl stackfile.PairLink) error {
	l, err := linkWithMAC(pl.MAC)
	if err != nil {
		return fmt.Errorf("pair link: %w", err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("pair link %s up: %w", l.Attrs().Name, err)
	}
	a := pl.Address
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.Addr().AsSlice()), Mask: net.CIDRMask(a.Bits(), 32)}}
	if err := netlink.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("pair link %s address %s: %w", l.Attrs().Name, a, err)
	}
	return nil
}
