package failover

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// fixedCluster is a follower with a fixed table whose majority the test
// switches.
type fixedCluster struct {
	mu       sync.Mutex
	table    []cluster.Ownership
	majority bool
}

func (f *fixedCluster) IsLeader() bool { return false }
func (f *fixedCluster) InMajority() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.majority
}
func (f *fixedCluster) Table() []cluster.Ownership { return f.table }
func (f *fixedCluster) Assign(context.Context, string, string, uint64, string) (cluster.Ownership, error) {
	return cluster.Ownership{}, cluster.ErrNotLeader
}
func (f *fixedCluster) RecoverAlone() error                    { return nil }
func (f *fixedCluster) Setting(string) (cluster.Setting, bool) { return cluster.Setting{}, false }
func (f *fixedCluster) Set(context.Context, string, string) (cluster.Setting, error) {
	return cluster.Setting{}, cluster.ErrNotLeader
}
func (f *fixedCluster) Voters() []string                { return []string{"dh1", "dh2", "witness"} }
func (f *fixedCluster) TransferLeadership(string) error { return cluster.ErrNotLeader }

// eventLog records starts, stops and VIP changes in order.
type eventLog struct {
	mu sync.Mutex
	ev []string
}

func (e *eventLog) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ev = append(e.ev, s)
}
func (e *eventLog) Start(_ context.Context, inst string) error { e.add("start " + inst); return nil }
func (e *eventLog) Kill(_ context.Context, inst string) error  { e.add("kill " + inst); return nil }
func (e *eventLog) Stop(_ context.Context, inst string) error  { e.add("stop " + inst); return nil }
func (e *eventLog) vip(hold bool) {
	if hold {
		e.add("vip hold")
	} else {
		e.add("vip release")
	}
}

// TestVIPFollowsTheLBClosely: the website's address is taken as soon as
// the lb instance runs (not after every later instance), and a host that
// steps down lets the address go before it stops anything.
func TestVIPFollowsTheLBClosely(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	insts, err := stack.Instances()
	if err != nil {
		t.Fatal(err)
	}
	fc := &fixedCluster{majority: true}
	for _, in := range insts {
		fc.table = append(fc.table, cluster.Ownership{Instance: in.Name, Owner: "dh1", Epoch: 1})
	}
	ev := &eventLog{}
	c, err := New(Config{Self: "dh1", Stack: stack, Cluster: fc, Peer: func(string) heartbeat.State { return heartbeat.Alive },
		Runtime: ev, VIP: ev.vip})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.Step(ctx)
	hold := slices.Index(ev.ev, "vip hold")
	if hold < 1 || hold < slices.Index(ev.ev, "start lb1") {
		t.Fatalf("the VIP was not taken once lb1 started: %v", ev.ev)
	}
	if last := ev.ev[len(ev.ev)-1]; last == "vip hold" && hold != len(ev.ev)-1 {
		t.Fatalf("VIP announced twice: %v", ev.ev)
	}

	ev.ev = nil
	fc.mu.Lock()
	fc.majority = false
	fc.mu.Unlock()
	c.Step(ctx)
	if len(ev.ev) < 2 || ev.ev[0] != "vip release" {
		t.Fatalf("stepping down did not release the VIP first: %v", ev.ev)
	}
	if slices.Contains(ev.ev[1:], "vip release") || slices.Contains(ev.ev, "vip hold") {
		t.Fatalf("VIP changed more than once while stepping down: %v", ev.ev)
	}
	if st := c.Status(); len(st.Running) != 0 || st.HoldsVIP {
		t.Fatalf("after stepping down: %+v", st)
	}
}

// TestOwnStallSettlesBeforeSteppingDown: a host whose own loop stalled for
// less than the dead time (nobody can have taken over) first lets raft read
// what arrived meanwhile, for a moment, instead of stepping down on a
// silence that was its own; after a stall past the dead time, or once the
// moment has passed without contact, it steps down.
func TestOwnStallSettlesBeforeSteppingDown(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack)) // dead time 1 s
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		stall time.Duration
		keeps bool
	}{
		{"short stall settles", 500 * time.Millisecond, true},
		{"stall past the dead time steps down at once", 2 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fixedCluster{majority: true, table: []cluster.Ownership{{Instance: "lb1", Owner: "dh1", Epoch: 1}}}
			ev := &eventLog{}
			c, err := New(Config{Self: "dh1", Stack: stack, Cluster: fc, Peer: func(string) heartbeat.State { return heartbeat.Alive },
				Runtime: ev, VIP: ev.vip})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			c.Step(ctx)
			fc.mu.Lock()
			fc.majority = false
			fc.mu.Unlock()
			c.lastStep = time.Now().Add(-tt.stall)
			c.Step(ctx)
			if kept := len(c.Status().Running) == 1; kept != tt.keeps {
				t.Fatalf("right after a %v stall without contact: running %v, want kept=%v", tt.stall, c.Status().Running, tt.keeps)
			}
			// Regular ticks: the moment passes and the silence counts.
			deadline := time.Now().Add(5 * time.Second)
			for len(c.Status().Running) > 0 && time.Now().Before(deadline) {
				time.Sleep(c.cfg.Tick)
				c.Step(ctx)
			}
			if len(c.Status().Running) > 0 {
				t.Fatal("never stepped down after the stall")
			}
		})
	}
}
