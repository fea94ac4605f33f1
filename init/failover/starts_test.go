package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// gateRuntime records when each start and stop begins and ends. The
// instances in together only get past their beginning once all of them
// have begun, so running them one after another fails (after a bound)
// instead of passing slowly.
type gateRuntime struct {
	mu       sync.Mutex
	ev       []string
	together map[string]bool
	begun    int
	all      chan struct{}
	fail     map[string]bool
}

func newGateRuntime(together ...string) *gateRuntime {
	r := &gateRuntime{together: map[string]bool{}, all: make(chan struct{}), fail: map[string]bool{}}
	for _, in := range together {
		r.together[in] = true
	}
	return r
}

func (r *gateRuntime) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ev = append(r.ev, s)
}

func (r *gateRuntime) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ev)
}

func (r *gateRuntime) work(verb, inst string) error {
	r.add("begin " + verb + " " + inst)
	defer r.add("end " + verb + " " + inst)
	r.mu.Lock()
	gated := r.together[inst]
	if gated {
		r.begun++
		if r.begun == len(r.together) {
			close(r.all)
		}
	}
	failing := r.fail[inst]
	r.mu.Unlock()
	if gated {
		select {
		case <-r.all:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s %s: the others never began alongside it", verb, inst)
		}
	}
	// Long enough for a dependent started too early to show in the order.
	time.Sleep(20 * time.Millisecond)
	if failing {
		return errors.New("start failed (test)")
	}
	return nil
}

func (r *gateRuntime) Start(_ context.Context, inst string) error { return r.work("start", inst) }
func (r *gateRuntime) Kill(_ context.Context, inst string) error  { return r.work("kill", inst) }
func (r *gateRuntime) Stop(_ context.Context, inst string) error  { return r.work("stop", inst) }

// before reports whether event a comes before event b in ev (both present).
func before(ev []string, a, b string) bool {
	i, j := slices.Index(ev, a), slices.Index(ev, b)
	return i >= 0 && j >= 0 && i < j
}

func takeoverController(t *testing.T, rt Runtime, fc *fixedCluster, vip func(bool)) *Controller {
	t.Helper()
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Self: "dh2", Stack: stack, Cluster: fc, Runtime: rt, VIP: vip,
		Peer: func(string) heartbeat.State { return heartbeat.Alive }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ownedBy(host string, insts ...string) []cluster.Ownership {
	var table []cluster.Ownership
	for _, in := range insts {
		table = append(table, cluster.Ownership{Instance: in, Owner: host, Epoch: 1})
	}
	return table
}

// TestTakeoverStartsIndependentInstancesTogether: a host taking over
// starts the website's path first, each instance once what it needs has
// finished starting (web after db, lb after web), the VIP following lb1;
// then the instances off the path (fw, mail, monitor) all at once.
func TestTakeoverStartsIndependentInstancesTogether(t *testing.T) {
	rt := newGateRuntime("fw1", "mail1", "monitor1")
	fc := &fixedCluster{majority: true, table: ownedBy("dh2", "fw1", "mail1", "db1", "web1", "lb1", "monitor1")}
	c := takeoverController(t, rt, fc, func(hold bool) { rt.add(fmt.Sprintf("vip %v", hold)) })
	c.Step(context.Background())
	ev := rt.events()
	for _, order := range [][2]string{
		{"end start db1", "begin start web1"},
		{"end start web1", "begin start lb1"},
		{"end start lb1", "vip true"},
		{"end start lb1", "begin start fw1"},
		{"end start lb1", "begin start mail1"},
		{"end start lb1", "begin start monitor1"},
	} {
		if !before(ev, order[0], order[1]) {
			t.Errorf("want %q before %q: %v", order[0], order[1], ev)
		}
	}
	if got := c.Status().Running; len(got) != 6 {
		t.Fatalf("running %v after the takeover, want all six (fw1, mail1, monitor1 fail when started apart): %v", got, ev)
	}
}

// TestLBDoesNotWaitForAWebWhileAnotherServes: this host already runs web2;
// taking over db1, web1 and lb1, lb1 starts with db1 at once (web2 serves
// it) while web1 still waits for db1.
func TestLBDoesNotWaitForAWebWhileAnotherServes(t *testing.T) {
	rt := newGateRuntime()
	fc := &fixedCluster{majority: true, table: ownedBy("dh2", "web2")}
	c := takeoverController(t, rt, fc, nil)
	ctx := context.Background()
	c.Step(ctx)
	rt.mu.Lock()
	rt.ev = nil
	rt.together = map[string]bool{"db1": true, "lb1": true}
	rt.mu.Unlock()
	fc.mu.Lock()
	fc.table = ownedBy("dh2", "web2", "db1", "web1", "lb1")
	fc.mu.Unlock()
	c.Step(ctx)
	ev := rt.events()
	if !before(ev, "end start db1", "begin start web1") {
		t.Errorf("web1 did not wait for db1: %v", ev)
	}
	if got := c.Status().Running; len(got) != 4 {
		t.Fatalf("running %v, want all four (lb1 fails if it waited for web1): %v", got, ev)
	}
}

// TestSteppingDownStopsDependentsFirst: stopping goes the other way (lb
// before web, web before db), the rest at once, the VIP before anything. A
// host that lost the majority kills (its lease ended: the peer may already
// run them); one whose instances moved away stops them gracefully.
func TestSteppingDownStopsDependentsFirst(t *testing.T) {
	insts := []string{"fw1", "mail1", "db1", "web1", "lb1", "monitor1"}
	for _, tt := range []struct {
		name string
		step func(fc *fixedCluster)
		verb string
	}{
		{"lost the majority: killed", func(fc *fixedCluster) { fc.majority = false }, "kill"},
		{"ownership moved: stopped gracefully", func(fc *fixedCluster) { fc.table = ownedBy("dh1", insts...) }, "stop"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rt := newGateRuntime()
			fc := &fixedCluster{majority: true, table: ownedBy("dh2", insts...)}
			c := takeoverController(t, rt, fc, func(hold bool) { rt.add(fmt.Sprintf("vip %v", hold)) })
			ctx := context.Background()
			c.Step(ctx)
			rt.mu.Lock()
			rt.ev = nil
			rt.together = map[string]bool{"lb1": true, "fw1": true, "mail1": true, "monitor1": true}
			rt.mu.Unlock()
			fc.mu.Lock()
			tt.step(fc)
			fc.mu.Unlock()
			c.Step(ctx)
			ev := rt.events()
			if len(ev) == 0 || ev[0] != "vip false" {
				t.Fatalf("the VIP did not go first: %v", ev)
			}
			v := tt.verb
			for _, order := range [][2]string{
				{"end " + v + " lb1", "begin " + v + " web1"},
				{"end " + v + " web1", "begin " + v + " db1"},
			} {
				if !before(ev, order[0], order[1]) {
					t.Errorf("want %q before %q: %v", order[0], order[1], ev)
				}
			}
			if got := c.Status().Running; len(got) != 0 {
				t.Fatalf("still running %v after stepping down: %v", got, ev)
			}
		})
	}
}

// TestFailedStartBacksOff: a failing start does not hold up the instances
// that need it (web still starts, to serve its error page), and is not
// tried again on every tick, but after a growing wait.
func TestFailedStartBacksOff(t *testing.T) {
	rt := newGateRuntime()
	rt.fail["db1"] = true
	fc := &fixedCluster{majority: true, table: ownedBy("dh2", "db1", "web1")}
	c := takeoverController(t, rt, fc, nil)
	ctx := context.Background()
	c.Step(ctx)
	if got := c.Status().Running; !slices.Equal(got, []string{"web1"}) {
		t.Fatalf("running %v, want web1 alone (db1 fails): %v", got, rt.events())
	}
	attempts := func() int {
		n := 0
		for _, e := range rt.events() {
			if e == "begin start db1" {
				n++
			}
		}
		return n
	}
	for range 5 {
		c.Step(ctx)
	}
	if n := attempts(); n != 1 {
		t.Fatalf("db1 started %d times in ticks within its back-off, want 1", n)
	}
	c.mu.Lock()
	c.retry["db1"] = startRetry{wait: c.retry["db1"].wait, next: time.Now()}
	c.mu.Unlock()
	rt.mu.Lock()
	rt.fail["db1"] = false
	rt.mu.Unlock()
	c.Step(ctx)
	if n := attempts(); n != 2 {
		t.Fatalf("db1 started %d times once its back-off ended, want 2", n)
	}
	if got := c.Status().Running; !slices.Equal(got, []string{"db1", "web1"}) {
		t.Fatalf("running %v after the retry, want db1 and web1", got)
	}
	c.mu.Lock()
	_, left := c.retry["db1"]
	c.mu.Unlock()
	if left {
		t.Fatal("a successful start kept its back-off")
	}
}

// TestStartBackOffGrows: each failure doubles the wait, up to its cap.
func TestStartBackOffGrows(t *testing.T) {
	c := takeoverController(t, newGateRuntime(), &fixedCluster{majority: true}, nil)
	var got []time.Duration
	for range 6 {
		got = append(got, c.startFailed("db1"))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
}
