package failover

import (
	"context"
	"net"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// startMembers starts the given members of the pair+witness cluster (the
// others stay off) with hold-down holdDown.
func startMembers(t *testing.T, w *world, v *views, holdDown time.Duration, up ...string) (map[string]*member, func(id string) *member) {
	t.Helper()
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"dh1", "dh2", "witness"}
	var members []cluster.Member
	for _, id := range ids {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		members = append(members, cluster.Member{ID: id, Addr: l.Addr().String(), Voter: true})
		l.Close()
	}
	out := map[string]*member{}
	start := func(id string) *member {
		var addr string
		for _, m := range members {
			if m.ID == id {
				addr = m.Addr
			}
		}
		n, err := cluster.Start(withTLS(cluster.Config{ID: id, Bind: addr, Members: members}))
		if err != nil {
			t.Fatal(err)
		}
		var rt Runtime
		if id != "witness" {
			rt = hostRuntime{host: id, w: w}
		}
		ctl, err := New(Config{Self: id, Stack: stack, Cluster: n, Peer: v.of(id), Runtime: rt, HoldDown: holdDown})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{node: n, cancel: cancel, done: make(chan struct{}), ctl: ctl}
		go func() { ctl.Run(ctx); close(m.done) }()
		out[id] = m
		t.Cleanup(func() { m.stop() })
		return m
	}
	for _, id := range up {
		start(id)
	}
	return out, start
}

// TestLateHostGetsItsInstancesWithinTheHoldDown: the hosts of a pair seldom
// boot in the same second. A host that comes up after its peer (and the
// witness) still gets its own instances if it appears within a hold-down;
// they would otherwise stay on its peer for good (there is no failback).
func TestLateHostGetsItsInstancesWithinTheHoldDown(t *testing.T) {
	w := &world{runs: map[string]string{}}
	v := &views{m: map[string]map[string]heartbeat.State{}}
	v.set("dh1", heartbeat.Dead, "dh2", "witness") // never heard: dead after the dead time
	_, start := startMembers(t, w, v, 30*time.Second, "dh2", "witness")
	waitFor(t, "dh2's own instances placed", 15*time.Second, func() bool { return w.count("dh2") > 0 })
	time.Sleep(time.Second)
	own := w.count("dh2")
	if own == 8 {
		t.Fatal("dh2 took dh1's instances while dh1 may still be booting")
	}
	start("dh1")
	v.set("dh1", heartbeat.Alive, "dh2", "witness")
	waitFor(t, "dh1 runs its instances", 15*time.Second, func() bool { return w.count("dh1")+w.count("dh2") == 8 })
	if w.count("dh1") == 0 || w.count("dh2") != own {
		t.Errorf("dh1 runs %d, dh2 %d (had %d): want dh1 its own share", w.count("dh1"), w.count("dh2"), own)
	}
	if len(w.violations) > 0 {
		t.Fatalf("two owners: %v", w.violations)
	}
}

// TestMissingHostsInstancesGoToItsPairAfterTheHoldDown: a host that does
// not come up at all has its instances placed on its pair once the
// hold-down has passed.
func TestMissingHostsInstancesGoToItsPairAfterTheHoldDown(t *testing.T) {
	w := &world{runs: map[string]string{}}
	v := &views{m: map[string]map[string]heartbeat.State{}}
	v.set("dh1", heartbeat.Dead, "dh2", "witness")
	startMembers(t, w, v, 2*time.Second, "dh2", "witness")
	waitFor(t, "dh2 runs everything", 20*time.Second, func() bool { return w.count("dh2") == 8 })
}

// TestPlannedMoveTimelineSaysRequested: the timeline of `failover --to`
// starts from the operator's request, not from a host found dead.
func TestPlannedMoveTimelineSaysRequested(t *testing.T) {
	w := &world{runs: map[string]string{}}
	v := &views{m: map[string]map[string]heartbeat.State{}}
	ms, _ := startMembers(t, w, v, time.Hour, "dh1", "dh2", "witness")
	waitFor(t, "placed", 15*time.Second, func() bool { return w.count("dh1")+w.count("dh2") == 8 })
	var leader *member
	waitFor(t, "a leader", 10*time.Second, func() bool {
		for _, m := range ms {
			if m.node.IsLeader() {
				leader = m
			}
		}
		return leader != nil
	})
	f, err := leader.ctl.MoveTo(context.Background(), "dh2")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Timeline) == 0 || f.Timeline[0].What != "requested: move dh1's instances to dh2" {
		t.Errorf("planned move timeline = %+v", f.Timeline)
	}
}
