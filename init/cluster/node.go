package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Member is one voter or non-voter of the cluster.
type Member struct {
	ID    string // host name, or "witness"
	Addr  string // host:port of its raft transport
	Voter bool
}

// Timing tunes how fast the cluster notices a lost member. Raft's own
// timeouts are derived from it so a failover fits the stack's targets.
type Timing struct {
	// Heartbeat is raft's follower timeout: a follower that hears nothing
	// for this long starts an election.
	Heartbeat time.Duration
	// Lease is how long a host may keep running its instances after it last
	// heard from a majority; it must stay below the dead time peers use
	// before taking over, which is what keeps two owners apart.
	Lease time.Duration
}

// DefaultTiming fits a 1 s dead time: raft's follower timeout is short
// enough that an election (one or two timeouts, randomised up to twice
// each) fits in the lease, and the lease stays below the dead time.
var DefaultTiming = Timing{Heartbeat: 200 * time.Millisecond, Lease: 800 * time.Millisecond}

// Config configures a Node.
type Config struct {
	ID      string
	Bind    string // listen address, host:port
	Members []Member
	// DataDir keeps the raft log and snapshots; "" keeps them in memory
	// (witness without a disk, tests).
	DataDir  string
	Timing   Timing
	Logger   *slog.Logger
	OnChange func(Ownership)
	// OnSetting is told of every setting applied (a cleared one with an
	// empty value), on raft's apply path: it must not block.
	OnSetting func(Setting)
	// ServerTLS and ClientTLS authenticate the raft port both ways
	// (clusterauth's member configs); both are required: a connection
	// whose peer cannot prove it is a member never reaches raft.
	ServerTLS, ClientTLS *tls.Config
	// Route, when set, names the address to dial a member at instead of
	// its Members address ("" for that one): the two hosts of a pair talk
	// over their pair link while it is up, off the public LAN.
	Route func(id string) string
}

// Node is this machine's member of the cluster.
type Node struct {
	cfg Config
	// r and f are swapped by RecoverAlone while status readers look on.
	r         atomic.Pointer[raft.Raft]
	f         atomic.Pointer[FSM]
	transport *raft.NetworkTransport
	closers   []io.Closer
	log       *slog.Logger

	rc     *raft.Config
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore

	lease leaderLease
	// stop ends confirmLeadership; closed once by Shutdown.
	stop     chan struct{}
	stopOnce sync.Once
}

// leaderLease is a leader's own proof of its majority: when a quorum last
// confirmed its leadership (raft.VerifyLeader), in which term. raft steps a
// leader down once followers go quiet, but only when its loop next runs:
// after a stall of the host (a starved CPU), the failover loop may look
// first and must not take a leadership nobody has confirmed since for a
// majority, any more than a follower takes a stale leader's contact.
type leaderLease struct {
	mu   sync.Mutex
	term uint64
	at   time.Time
}

// ErrNotLeader is returned by changes proposed on a follower.
var ErrNotLeader = errors.New("not the cluster leader")

// Start joins (or, on first boot, bootstraps) the cluster.
func Start(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming
	}
	self := -1
	for i, m := range cfg.Members {
		if m.ID == cfg.ID {
			self = i
		}
	}
	if self < 0 {
		return nil, fmt.Errorf("cluster: %q is not among the members %v", cfg.ID, cfg.Members)
	}
	n := &Node{cfg: cfg, log: cfg.Logger, stop: make(chan struct{})}
	n.f.Store(NewFSM(Hooks{OnChange: cfg.OnChange, OnSetting: cfg.OnSetting}))

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.Timing.Heartbeat
	rc.ElectionTimeout = cfg.Timing.Heartbeat
	// A leader that stalls (a starved CPU) for longer than this steps down
	// and an election follows; as long as raft allows (at most the follower
	// timeout), since a stepped-down leader stops nothing by itself.
	rc.LeaderLeaseTimeout = cfg.Timing.Heartbeat
	rc.CommitTimeout = 10 * time.Millisecond
	rc.SnapshotThreshold = 1024
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{cfg.Logger}})

	advertise, err := net.ResolveTCPAddr("tcp", cfg.Members[self].Addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: member %s address %q: %w", cfg.ID, cfg.Members[self].Addr, err)
	}
	n.transport, err = newTransport(cfg, advertise, rc.Logger)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen on %s: %w", cfg.Bind, err)
	}
	var logs raft.LogStore
	var stable raft.StableStore
	var snaps raft.SnapshotStore
	if cfg.DataDir == "" {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			n.transport.Close()
			return nil, fmt.Errorf("cluster: data dir: %w", err)
		}
		bolt, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
		if err != nil {
			n.transport.Close()
			return nil, fmt.Errorf("cluster: raft store: %w", err)
		}
		n.closers = append(n.closers, bolt)
		logs, stable = bolt, bolt
		if snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger); err != nil {
			n.Shutdown()
			return nil, fmt.Errorf("cluster: snapshots: %w", err)
		}
	}
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		n.Shutdown()
		return nil, fmt.Errorf("cluster: reading state: %w", err)
	}
	if !existing {
		var servers []raft.Server
		for _, m := range cfg.Members {
			s := raft.Server{ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Addr), Suffrage: raft.Nonvoter}
			if m.Voter {
				s.Suffrage = raft.Voter
			}
			servers = append(servers, s)
		}
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, n.transport, raft.Configuration{Servers: servers}); err != nil {
			n.Shutdown()
			return nil, fmt.Errorf("cluster: bootstrap: %w", err)
		}
	}
	n.rc, n.logs, n.stable, n.snaps = rc, logs, stable, snaps
	r, err := raft.NewRaft(rc, n.f.Load(), logs, stable, snaps, n.transport)
	if err != nil {
		n.Shutdown()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	n.r.Store(r)
	go n.confirmLeadership()
	return n, nil
}

// IsLeader reports whether this node leads the cluster now.
func (n *Node) IsLeader() bool { return n.r.Load().State() == raft.Leader }

// Leader returns the current leader's ID ("" when none is known).
func (n *Node) Leader() string {
	_, id := n.r.Load().LeaderWithID()
	return string(id)
}

// LeaderAddr returns the current leader's raft address ("" when none).
func (n *Node) LeaderAddr() string {
	addr, _ := n.r.Load().LeaderWithID()
	return string(addr)
}

// InMajority reports whether this node heard from a majority within its
// lease: a leader keeps leadership only while a quorum answers (raft steps
// it down after LeaderLeaseTimeout), a follower or a candidate must have
// heard from a leader (or granted a vote) within the lease. A candidate
// counts like a follower: an election after the leader's loss must not
// stop the roles of hosts that still run under a lease nobody else can
// take over before it ends.
func (n *Node) InMajority() bool {
	switch n.r.Load().State() {
	case raft.Leader:
		return n.leaderConfirmed()
	case raft.Follower, raft.Candidate:
		last := n.r.Load().LastContact()
		return !last.IsZero() && time.Since(last) < n.cfg.Timing.Lease
	}
	return false
}

// leaderConfirmed reports whether a quorum confirmed this leader within the
// lease. A new term is a fresh confirmation: the election just won was one.
func (n *Node) leaderConfirmed() bool {
	term := n.r.Load().CurrentTerm()
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	if term != n.lease.term {
		n.lease.term, n.lease.at = term, time.Now()
	}
	return time.Since(n.lease.at) < n.cfg.Timing.Lease
}

// confirmLeadership asks the quorum, while this node leads, to confirm it
// every half heartbeat, and renews the leader's lease on each answer.
func (n *Node) confirmLeadership() {
	t := time.NewTicker(n.cfg.Timing.Heartbeat / 2)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		r := n.r.Load()
		if r.State() != raft.Leader {
			continue
		}
		term, asked := r.CurrentTerm(), time.Now()
		if err := waitFuture(r.VerifyLeader(), n.cfg.Timing.Lease); err != nil {
			continue
		}
		n.lease.mu.Lock()
		if term == n.lease.term && asked.After(n.lease.at) {
			n.lease.at = asked
		}
		n.lease.mu.Unlock()
	}
}

// waitFuture waits for f, at most d (raft's futures have no deadline).
func waitFuture(f raft.Future, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return fmt.Errorf("no answer within %v", d)
	}
}

// TransferLeadership hands this leader's role to member to, once raft has
// brought it up to date; it returns when to leads or the attempt failed.
func (n *Node) TransferLeadership(to string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	f := n.r.Load().GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("transfer leadership to %s: %w", to, err)
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == to && s.Suffrage == raft.Voter {
			if err := waitFuture(n.r.Load().LeadershipTransferToServer(s.ID, s.Address), 4*n.cfg.Timing.Lease); err != nil {
				return fmt.Errorf("transfer leadership to %s: %w", to, err)
			}
			return nil
		}
	}
	return fmt.Errorf("transfer leadership to %s: not a voter", to)
}

// Assign commits instance's new owner, provided its epoch is still expect.
func (n *Node) Assign(ctx context.Context, instance, owner string, expect uint64, reason string) (Ownership, error) {
	if !n.IsLeader() {
		return Ownership{}, fmt.Errorf("assign %s to %s: %w (leader is %q)", instance, owner, ErrNotLeader, n.Leader())
	}
	res, err := n.apply(ctx, Command{Op: "assign", Instance: instance, Owner: owner, Expect: expect, Time: time.Now(), Reason: reason})
	var stale *ErrStale
	switch {
	case errors.As(err, &stale):
		return Ownership{}, err
	case err != nil:
		return Ownership{}, fmt.Errorf("assign %s to %s: %w", instance, owner, err)
	}
	if o, ok := res.(Ownership); ok {
		return o, nil
	}
	return Ownership{}, fmt.Errorf("assign %s: unexpected result %v", instance, res)
}

// Set commits a cluster-wide setting (an empty value clears it).
func (n *Node) Set(ctx context.Context, key, value string) (Setting, error) {
	if !n.IsLeader() {
		return Setting{}, fmt.Errorf("set %s: %w (leader is %q)", key, ErrNotLeader, n.Leader())
	}
	if key == "" {
		return Setting{}, errors.New("set: no key")
	}
	res, err := n.apply(ctx, Command{Op: "set", Key: key, Value: value, Time: time.Now()})
	if err != nil {
		return Setting{}, fmt.Errorf("set %s: %w", key, err)
	}
	if s, ok := res.(Setting); ok {
		return s, nil
	}
	return Setting{}, fmt.Errorf("set %s: unexpected result %v", key, res)
}

// Settings returns the committed settings as this node knows them.
func (n *Node) Settings() []Setting { return n.f.Load().Settings() }

// Setting returns one committed setting; ok is false when it is not set.
func (n *Node) Setting(key string) (Setting, bool) { return n.f.Load().Setting(key) }

// apply commits c through raft and returns the FSM's answer, bounded by
// ctx's deadline (5 s without one).
func (n *Node) apply(ctx context.Context, c Command) (any, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := n.r.Load().Apply(b, timeout)
	if err := f.Error(); err != nil {
		return nil, err
	}
	if err, ok := f.Response().(error); ok {
		return nil, err
	}
	return f.Response(), nil
}

// Table returns the committed ownership table as this node knows it.
func (n *Node) Table() []Ownership { return n.f.Load().All() }

// Get returns one instance's ownership as this node knows it.
func (n *Node) Get(instance string) (Ownership, bool) { return n.f.Load().Get(instance) }

// Barrier waits until this node (as leader) has applied everything
// committed before, so decisions are made on the latest table.
func (n *Node) Barrier(timeout time.Duration) error { return n.r.Load().Barrier(timeout).Error() }

// State is the node's raft state, for status.
func (n *Node) State() string { return n.r.Load().State().String() }

// RecoverAlone makes this node the only voter, for a pair without a
// witness whose peer was confirmed off by its fence device: with two voters
// no majority is left, and the fence is what makes it safe to go on alone.
// The peer rejoins later through AddVoter (see Rejoin).
func (n *Node) RecoverAlone() error {
	if err := n.r.Load().Shutdown().Error(); err != nil {
		return fmt.Errorf("recover alone: shutdown: %w", err)
	}
	self := raft.Server{ID: raft.ServerID(n.cfg.ID), Address: n.transport.LocalAddr(), Suffrage: raft.Voter}
	scratch := NewFSM(Hooks{})
	if err := raft.RecoverCluster(n.rc, scratch, n.logs, n.stable, n.snaps, n.transport,
		raft.Configuration{Servers: []raft.Server{self}}); err != nil {
		return fmt.Errorf("recover alone: %w", err)
	}
	fsm := NewFSM(Hooks{OnChange: n.cfg.OnChange, OnSetting: n.cfg.OnSetting})
	r, err := raft.NewRaft(n.rc, fsm, n.logs, n.stable, n.snaps, n.transport)
	if err != nil {
		return fmt.Errorf("recover alone: restart raft: %w", err)
	}
	n.f.Store(fsm)
	n.r.Store(r)
	return nil
}

// Rejoin adds a returning member back as a voter (leader only).
func (n *Node) Rejoin(id, addr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return n.r.Load().AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 5*time.Second).Error()
}

// Voters lists the current voters' IDs.
func (n *Node) Voters() []string {
	f := n.r.Load().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, string(s.ID))
		}
	}
	return out
}

// Shutdown leaves the cluster cleanly (bounded).
func (n *Node) Shutdown() error {
	n.stopOnce.Do(func() { close(n.stop) })
	var errs []error
	if r := n.r.Load(); r != nil {
		if err := waitFuture(r.Shutdown(), 5*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
	}
	if n.transport != nil {
		errs = append(errs, n.transport.Close())
	}
	for _, c := range n.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// slogWriter carries raft's hclog lines into slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
