package failover

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

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
}

func (c *lonelyCluster) IsLeader() bool             { return false }
func (c *lonelyCluster) InMajority() bool           { return false }
func (c *lonelyCluster) Table() []cluster.Ownership { return nil }
func (c *lonelyCluster) Voters() []string           { return []string{"dh1", "dh2"} }
func (c *lonelyCluster) Assign(context.Context, string, string, uint64, string) (cluster.Ownership, error) {
	return cluster.Ownership{}, cluster.ErrNotLeader
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
			cl := &lonelyCluster{}
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
