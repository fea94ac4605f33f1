package failover

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/fence"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// noWitnessStack is a pair whose raft has only the two hosts as voters.
const noWitnessStack = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", pair: dh1}
`

// lonelyCluster is dh2's raft after dh1 vanished: two voters, no majority,
// no leader.
type lonelyCluster struct {
	mu         sync.Mutex
	recovered  int
	recoverErr error
	table      []cluster.Ownership // last applied before the loss
}

func (c *lonelyCluster) IsLeader() bool                  { return false }
func (c *lonelyCluster) InMajority() bool                { return false }
func (c *lonelyCluster) Table() []cluster.Ownership      { return c.table }
func (c *lonelyCluster) Voters() []string                { return []string{"dh1", "dh2"} }
func (c *lonelyCluster) TransferLeadership(string) error { return cluster.ErrNotLeader }
func (c *lonelyCluster) Assign(context.Context, string, string, uint64, string) (cluster.Ownership, error) {
	return cluster.Ownership{}, cluster.ErrNotLeader
}
func (c *lonelyCluster) Setting(string) (cluster.Setting, bool) { return cluster.Setting{}, false }
func (c *lonelyCluster) Set(context.Context, string, string) (cluster.Setting, error) {
	return cluster.Setting{}, cluster.ErrNotLeader
}
func (c *lonelyCluster) RecoverAlone() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recovered++
	return c.recoverErr
}

// device is a fence device whose power state the test scripts.
type device struct {
	mu       sync.Mutex
	on       bool
	obeys    bool  // PowerOff turns it off
	offErr   error // PowerOff fails with this
	powerOff int
}

func (d *device) PowerOff(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.powerOff++
	if d.offErr != nil {
		return d.offErr
	}
	if d.obeys {
		d.on = false
	}
	return nil
}

func (d *device) PoweredOff(context.Context) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.on, nil
}

func (d *device) String() string { return "test device" }

type nopRuntime struct{}

func (nopRuntime) Start(context.Context, string) error { return nil }
func (nopRuntime) Kill(context.Context, string) error  { return nil }
func (nopRuntime) Stop(context.Context, string) error  { return nil }

// TestNoWitnessTakeoverNeedsAConfirmedFence drives dh2's controller after
// dh1 vanished from a witness-less pair: it becomes the only voter (and so
// takes over) only once dh1's fence device confirms power off, never for a
// peer it has not heard since it started (that one may be booting), and
// otherwise says why it does not.
func TestNoWitnessTakeoverNeedsAConfirmedFence(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(noWitnessStack))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		peer        heartbeat.State
		heardBefore bool    // dh2 heard dh1 alive before this state
		dev         *device // nil: no fence device for dh1
		wantRecover int
		wantLog     string
		wantOff     int // PowerOff calls
	}{
		{"peer alive", heartbeat.Alive, true, &device{on: true, obeys: true}, 0, "", 0},
		{"peer suspect", heartbeat.Suspect, true, &device{on: true, obeys: true}, 0, "", 0},
		{"no fence device", heartbeat.Dead, true, nil, 0, "no witness and no fence device: run `magestack failover --force`", 0},
		{"fence confirms", heartbeat.Dead, true, &device{on: true, obeys: true}, 1, "peer confirmed off", 1},
		{"already off", heartbeat.Dead, true, &device{on: false}, 1, "peer confirmed off", 0},
		{"power off fails", heartbeat.Dead, true, &device{on: true, offErr: errors.New("BMC said no")}, 0, "fencing failed; not taking over", 1},
		// Both hosts boot; dh2 is up first and has not heard dh1 yet.
		{"never heard", heartbeat.Unknown, false, &device{on: true, obeys: true}, 0, "peer not heard since this host started; not fencing", 0},
		{"never heard, then dead", heartbeat.Dead, false, &device{on: true, obeys: true}, 0, "peer not heard since this host started; not fencing", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			// dh2 served the website: it has the head start.
			cl := &lonelyCluster{table: []cluster.Ownership{{Instance: "lb1", Owner: "dh2", Epoch: 3}}}
			peer := heartbeat.Unknown
			if tc.heardBefore {
				peer = heartbeat.Alive
			}
			cfg := Config{Self: "dh2", Stack: stack, Cluster: cl, Runtime: nopRuntime{},
				Peer:   func(string) heartbeat.State { return peer },
				Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			if tc.dev != nil {
				cfg.Fence = func(host string) (fence.Device, bool) { return tc.dev, host == "dh1" }
			}
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			c.Step(context.Background())
			peer = tc.peer
			c.Step(context.Background())
			if cl.recovered != tc.wantRecover {
				t.Errorf("went alone %d times, want %d; log:\n%s", cl.recovered, tc.wantRecover, logs.String())
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, logs.String())
			}
			if tc.dev != nil && tc.dev.powerOff != tc.wantOff {
				t.Errorf("PowerOff called %d times, want %d", tc.dev.powerOff, tc.wantOff)
			}
		})
	}
}

// TestFenceHeadStart: when both hosts lose each other yet both reach the
// other's fence device, only one may fence at once or both end up off. The
// host that served the website (owned lb) fences at once; the other (or,
// when neither owned lb, the one listed second) waits FenceDelay first.
func TestFenceHeadStart(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(noWitnessStack))
	if err != nil {
		t.Fatal(err)
	}
	const delay = 300 * time.Millisecond
	for _, tc := range []struct {
		name    string
		self    string
		lbOwner string
		waits   bool
	}{
		{"owned lb", "dh2", "dh2", false},
		{"peer owned lb", "dh2", "dh1", true},
		{"peer owned lb, first in the stack", "dh1", "dh2", true},
		{"lb unowned, first in the stack", "dh1", "", false},
		{"lb unowned, second in the stack", "dh2", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			cl := &lonelyCluster{table: []cluster.Ownership{{Instance: "web1", Owner: tc.self}, {Instance: "lb1", Owner: tc.lbOwner}}}
			dev := &device{on: true, obeys: true}
			peer := heartbeat.Alive
			c, err := New(Config{Self: tc.self, Stack: stack, Cluster: cl, Runtime: nopRuntime{}, FenceDelay: delay,
				Peer:   func(string) heartbeat.State { return peer },
				Fence:  func(string) (fence.Device, bool) { return dev, true },
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			c.Step(context.Background())
			peer = heartbeat.Dead
			lost := time.Now()
			c.Step(context.Background())
			if !tc.waits {
				if dev.powerOff != 1 || cl.recovered != 1 {
					t.Fatalf("with the head start: %d power offs, went alone %d times; log:\n%s", dev.powerOff, cl.recovered, logs.String())
				}
				return
			}
			if dev.powerOff != 0 {
				t.Fatalf("fenced at once without the head start; log:\n%s", logs.String())
			}
			if !strings.Contains(logs.String(), "giving it the first shot at fencing") {
				t.Errorf("the wait is not logged:\n%s", logs.String())
			}
			for dev.powerOff == 0 && time.Since(lost) < 10*delay {
				time.Sleep(delay / 10)
				c.Step(context.Background())
			}
			if waited := time.Since(lost); dev.powerOff != 1 || waited < delay {
				t.Fatalf("fenced %d times after %v, want once after %v", dev.powerOff, waited, delay)
			}
			if cl.recovered != 1 {
				t.Errorf("went alone %d times after the fence", cl.recovered)
			}
		})
	}
}

// TestFenceWaitEndsWhenThePeerReturns: a peer heard again during the wait
// is not fenced, and a later loss waits afresh.
func TestFenceWaitEndsWhenThePeerReturns(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(noWitnessStack))
	if err != nil {
		t.Fatal(err)
	}
	const delay = time.Second
	cl := &lonelyCluster{table: []cluster.Ownership{{Instance: "lb1", Owner: "dh1"}}}
	dev := &device{on: true, obeys: true}
	peer := heartbeat.Alive
	c, err := New(Config{Self: "dh2", Stack: stack, Cluster: cl, Runtime: nopRuntime{}, FenceDelay: delay,
		Peer:  func(string) heartbeat.State { return peer },
		Fence: func(string) (fence.Device, bool) { return dev, true }})
	if err != nil {
		t.Fatal(err)
	}
	c.Step(context.Background())
	peer = heartbeat.Dead
	c.Step(context.Background())
	time.Sleep(delay * 2 / 3)
	peer = heartbeat.Alive
	c.Step(context.Background())
	peer = heartbeat.Dead
	c.Step(context.Background())
	time.Sleep(delay * 2 / 3)
	c.Step(context.Background())
	if dev.powerOff != 0 {
		t.Fatal("fenced a peer whose wait was interrupted by its return before a full delay of fresh loss")
	}
}
