package clusterconf

import (
	"strings"
	"testing"

	"magestack/init/stackfile"
)

const stack = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.0.2.11/24, pair: dh2, pairlink: {mac: "52:54:00:00:01:01", address: 10.99.0.1/30}}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 192.0.2.12/24, pair: dh1, pairlink: {mac: "52:54:00:00:01:02", address: 10.99.0.2/30}}
public: {vip: 192.0.2.50/24}
witness: 192.0.2.5:7700
cluster: {dead: 2s}
`

func TestMembersAndPaths(t *testing.T) {
	s, err := stackfile.Parse("s.yaml", []byte(stack))
	if err != nil {
		t.Fatal(err)
	}
	m, err := For(s, "dh1")
	if err != nil {
		t.Fatal(err)
	}
	if m.Self.Bind != "192.0.2.11:7700" || len(m.Self.Members) != 3 || !m.Witness {
		t.Fatalf("self = %+v", m.Self)
	}
	got := map[string]string{}
	for _, p := range m.Paths {
		for id, a := range p.Peers {
			got[p.Name+"/"+id] = a
		}
		got[p.Name+"/local"] = p.Local
	}
	want := map[string]string{
		"pair/dh2": "10.99.0.2:7701", "pair/local": "10.99.0.1:7701",
		"lan/dh2": "192.0.2.12:7701", "lan/witness": "192.0.2.5:7701", "lan/local": "192.0.2.11:7701",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if m.Timing.Lease >= s.Cluster.Dead.D() {
		t.Errorf("lease %v must stay below the dead time %v", m.Timing.Lease, s.Cluster.Dead.D())
	}
	// An election after a leader's loss takes up to two randomised
	// follower timeouts (each up to twice the timeout): it must fit in the
	// lease or every host stops its roles while the survivors elect.
	if 4*m.Timing.Heartbeat > m.Timing.Lease {
		t.Errorf("raft timeout %v: an election (up to %v) does not fit in the lease %v", m.Timing.Heartbeat, 4*m.Timing.Heartbeat, m.Timing.Lease)
	}
	w, err := For(s, WitnessID)
	if err != nil || len(w.Paths) != 1 || w.Paths[0].Local != "192.0.2.5:7701" || len(w.Paths[0].Peers) != 2 {
		t.Fatalf("witness = %+v, %v", w, err)
	}
	if _, err := For(s, "dh9"); err == nil || !strings.Contains(err.Error(), "not a cluster member") {
		t.Errorf("unknown member: %v", err)
	}
}
