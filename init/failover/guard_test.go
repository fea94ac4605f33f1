package failover

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// stuckRuntime blocks the start of some instances until they are killed.
type stuckRuntime struct {
	mu     sync.Mutex
	stuck  map[string]chan struct{}
	killed []string
}

func (r *stuckRuntime) Start(ctx context.Context, inst string) error {
	r.mu.Lock()
	ch := r.stuck[inst]
	r.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return errors.New("killed while starting")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *stuckRuntime) Stop(context.Context, string) error { return nil }

func (r *stuckRuntime) Kill(_ context.Context, inst string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.killed = append(r.killed, inst)
	if ch := r.stuck[inst]; ch != nil {
		close(ch)
		delete(r.stuck, inst)
	}
	return nil
}

func (r *stuckRuntime) kills() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.killed)
	slices.Sort(out)
	return out
}

// TestGuardKillsWhileTheLoopIsHeldUp: the loop waits on a start that
// never gets ready (db1); the host loses the majority meanwhile. The guard
// does not wait for the loop: it releases the VIP and kills what runs (lb1)
// and what is starting (db1). While in the majority, it touches nothing.
func TestGuardKillsWhileTheLoopIsHeldUp(t *testing.T) {
	for _, tt := range []struct {
		name      string
		loseAt    bool
		wantKills []string
	}{
		{"majority lost: everything killed", true, []string{"db1", "lb1"}},
		{"in the majority: nothing killed", false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rt := &stuckRuntime{stuck: map[string]chan struct{}{"db1": make(chan struct{})}}
			fc := &fixedCluster{majority: true, table: ownedBy("dh2", "lb1", "db1")}
			var vipMu sync.Mutex
			var vip []bool
			c := takeoverController(t, rt, fc, func(hold bool) { vipMu.Lock(); vip = append(vip, hold); vipMu.Unlock() })
			c.cfg.Tick = 10 * time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go c.guard(ctx)
			stepped := make(chan struct{})
			go func() { c.Step(ctx); close(stepped) }()
			waitFor(t, "lb1 running, db1 starting", 5*time.Second, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.running["lb1"] && c.starting["db1"]
			})
			if tt.loseAt {
				fc.mu.Lock()
				fc.majority = false
				fc.mu.Unlock()
				waitFor(t, "the guard kills both", 5*time.Second, func() bool { return slices.Equal(rt.kills(), tt.wantKills) })
				select {
				case <-stepped:
				case <-time.After(5 * time.Second):
					t.Fatal("the loop's pass never ended after the kill")
				}
				vipMu.Lock()
				defer vipMu.Unlock()
				if len(vip) == 0 || vip[len(vip)-1] {
					t.Errorf("VIP changes %v: the last must be a release", vip)
				}
				waitFor(t, "nothing left running", 5*time.Second, func() bool { return len(c.Status().Running) == 0 })
				return
			}
			// Held up well past the guard's threshold, in the majority.
			time.Sleep(heldUp + 10*stallSettle)
			if k := rt.kills(); len(k) != 0 {
				t.Fatalf("killed %v while in the majority", k)
			}
			if c.GuardAlive().IsZero() {
				t.Fatal("the guard never reported a pass")
			}
		})
	}
}
