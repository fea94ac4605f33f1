package failover

import (
	"slices"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// TestWitnessHandsLeadershipToTheWebsitesHost: in a running pair the
// witness does not stay leader: the host running lb1 leads, and losing the
// witness then costs the hosts nothing (they are 2 of 3 voters).
func TestWitnessHandsLeadershipToTheWebsitesHost(t *testing.T) {
	w := &world{runs: map[string]string{}}
	v := &views{m: map[string]map[string]heartbeat.State{}}
	ms := startPair(t, w, v)
	waitFor(t, "every instance placed and running", 15*time.Second, func() bool { return w.count("dh1")+w.count("dh2") == 8 })
	w.mu.Lock()
	lbHost := w.runs["lb1"]
	w.mu.Unlock()
	// Whoever won the first election, give the witness the lead.
	for id, m := range ms {
		if m.node.IsLeader() && id != "witness" {
			if err := m.node.TransferLeadership("witness"); err != nil {
				t.Fatalf("handing %s's leadership to the witness: %v", id, err)
			}
		}
	}
	waitFor(t, lbHost+" leads", 15*time.Second, ms[lbHost].node.IsLeader)

	before := w.count("dh1") + w.count("dh2")
	ms["witness"].stop()
	// Longer than a lease: a host that lost its majority would have
	// stopped by then.
	time.Sleep(3 * cluster.DefaultTiming.Lease)
	if n := w.count("dh1") + w.count("dh2"); n != before || !ms[lbHost].node.InMajority() {
		t.Fatalf("after losing the witness: %d of %d instances run, %s in majority %v", n, before, lbHost, ms[lbHost].node.InMajority())
	}
}

// handOffCluster is a leader that records the transfers asked of it.
type handOffCluster struct {
	fixedCluster
	mu     sync.Mutex
	asked  []string
	voters []string
}

func (h *handOffCluster) IsLeader() bool   { return true }
func (h *handOffCluster) Voters() []string { return h.voters }
func (h *handOffCluster) TransferLeadership(to string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.asked = append(h.asked, to)
	return nil
}

func TestHandOffTarget(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	lbOn := func(h string) []cluster.Ownership {
		return []cluster.Ownership{{Instance: "db1", Owner: "dh1"}, {Instance: "lb1", Owner: h}}
	}
	all := []string{"dh1", "dh2", "witness"}
	for _, tt := range []struct {
		name   string
		self   string
		table  []cluster.Ownership
		voters []string
		states map[string]heartbeat.State
		moving bool
		want   []string
	}{
		{"to the lb's host", "witness", lbOn("dh2"), all, nil, false, []string{"dh2"}},
		{"lb host suspect: the other", "witness", lbOn("dh2"), all, map[string]heartbeat.State{"dh2": heartbeat.Suspect}, false, []string{"dh1"}},
		{"lb host not a voter: the other", "witness", lbOn("dh2"), []string{"dh1", "witness"}, nil, false, []string{"dh1"}},
		{"no host heard: keeps leading", "witness", lbOn("dh2"), all, map[string]heartbeat.State{"dh1": heartbeat.Dead, "dh2": heartbeat.Dead}, false, nil},
		{"a move in progress: keeps leading", "witness", lbOn("dh2"), all, nil, true, nil},
		{"a host leader keeps leading", "dh1", lbOn("dh2"), all, nil, false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hc := &handOffCluster{fixedCluster: fixedCluster{majority: true, table: tt.table}, voters: tt.voters}
			c, err := New(Config{Self: tt.self, Stack: stack, Cluster: hc, Peer: func(h string) heartbeat.State {
				if st, ok := tt.states[h]; ok {
					return st
				}
				return heartbeat.Alive
			}})
			if err != nil {
				t.Fatal(err)
			}
			if tt.moving {
				c.moving["web1"] = true
			}
			now := time.Now()
			c.handOff(tt.table, now)
			c.handOff(tt.table, now.Add(time.Second)) // within handOffEvery: not asked again
			if !slices.Equal(hc.asked, tt.want) {
				t.Fatalf("transfers asked %v, want %v", hc.asked, tt.want)
			}
		})
	}
}
