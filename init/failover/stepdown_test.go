package failover

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// slowRuntime takes a while to stop an instance (a real role environment
// takes ~100 ms to seconds) and records every start and stop.
type slowRuntime struct {
	mu   sync.Mutex
	stop time.Duration
	ev   []string
}

func (r *slowRuntime) Start(_ context.Context, inst string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ev = append(r.ev, "start "+inst)
	return nil
}

func (r *slowRuntime) Kill(ctx context.Context, inst string) error { return r.Stop(ctx, inst) }

func (r *slowRuntime) Stop(_ context.Context, inst string) error {
	time.Sleep(r.stop)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ev = append(r.ev, "stop "+inst)
	return nil
}

// TestNoStartWithoutTheMajority: a host that lost the majority stops its
// instances, and however long stopping took (that is the loop's own work,
// not a stall), it never starts one again until it is back in the
// majority. Seen in the QEMU pair scenario: stopping three instances made
// the next step look like a stall, whose settling restarted one.
func TestNoStartWithoutTheMajority(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	fc := &fixedCluster{majority: true, table: []cluster.Ownership{
		{Instance: "acc1", Owner: "dh2", Epoch: 1}, {Instance: "web1", Owner: "dh2", Epoch: 1}, {Instance: "mail1", Owner: "dh2", Epoch: 1}}}
	rt := &slowRuntime{stop: 150 * time.Millisecond}
	c, err := New(Config{Self: "dh2", Stack: stack, Cluster: fc, Runtime: rt,
		Peer: func(string) heartbeat.State { return heartbeat.Alive }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.Step(ctx)
	if len(c.Status().Running) != 3 {
		t.Fatalf("in the majority: running %v", c.Status().Running)
	}
	fc.mu.Lock()
	fc.majority = false
	fc.mu.Unlock()
	rt.mu.Lock()
	rt.ev = nil
	rt.mu.Unlock()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		c.Step(ctx)
		time.Sleep(c.cfg.Tick)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if i := slices.IndexFunc(rt.ev, func(e string) bool { return strings.HasPrefix(e, "start") }); i >= 0 {
		t.Fatalf("started an instance without the majority: %v", rt.ev)
	}
	if len(c.Status().Running) != 0 {
		t.Fatalf("still running %v without the majority", c.Status().Running)
	}
}
