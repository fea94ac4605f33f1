package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestRouteDialsMembersWhereRouteSays: dh2's configured address leads
// nowhere (its "LAN" is cut), but the others route to where it listens (its
// "pair link"): dh2 takes part in the cluster and gets the table. dh2 is a
// non-voter so that it never leads (a leader dials the others).
func TestRouteDialsMembersWhereRouteSays(t *testing.T) {
	addrs := freeAddrs(t, 4)
	real2, dead := addrs[1], addrs[3] // nothing listens on dead
	members := []Member{{ID: "dh1", Addr: addrs[0], Voter: true}, {ID: "dh2", Addr: dead},
		{ID: "witness", Addr: addrs[2], Voter: true}}
	route := func(id string) string {
		if id == "dh2" {
			return real2
		}
		return ""
	}
	nodes := map[string]*Node{}
	for _, m := range members {
		bind := m.Addr
		if m.ID == "dh2" {
			bind = real2
		}
		n, err := Start(withTLS(Config{ID: m.ID, Bind: bind, Members: members, Route: route}))
		if err != nil {
			t.Fatal(err)
		}
		nodes[m.ID] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	leader := waitLeader(t, nodes, 10*time.Second)
	if _, err := leader.Assign(context.Background(), "web1", "dh1", 0, "placement"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dh2 gets the table over its routed address", 5*time.Second, func() bool {
		o, ok := nodes["dh2"].Get("web1")
		return ok && o.Owner == "dh1"
	})
}

func TestRouteProviderFallsBackToMembers(t *testing.T) {
	p := routeProvider{route: func(id string) string {
		if id == "a" {
			return "10.0.0.1:7700"
		}
		return ""
	}, addrs: map[string]string{"a": "192.0.2.1:7700", "b": "192.0.2.2:7700"}}
	for id, want := range map[string]string{"a": "10.0.0.1:7700", "b": "192.0.2.2:7700"} {
		if got, err := p.ServerAddr(raftID(id)); err != nil || string(got) != want {
			t.Errorf("ServerAddr(%s) = %q, %v; want %q", id, got, err, want)
		}
	}
	if _, err := p.ServerAddr(raftID("c")); err == nil {
		t.Error("an unknown member got an address")
	}
}

func raftID(s string) raft.ServerID { return raft.ServerID(s) }

// TestSteppedDownLeaderKeepsItsLease: a leader that loses its quorum steps
// down, but its roles are not stopped at that instant: raft counts its last
// contact from the step-down, so it stays in majority for a lease, then
// not. (Safe while the dead time exceeds twice the leader lease: peers move
// its instances only a dead time plus a lease after its last quorum.)
func TestSteppedDownLeaderKeepsItsLease(t *testing.T) {
	addrs := freeAddrs(t, 3)
	ids := []string{"dh1", "dh2", "witness"}
	var members []Member
	for i, id := range ids {
		members = append(members, Member{ID: id, Addr: addrs[i], Voter: true})
	}
	timing := Timing{Heartbeat: 200 * time.Millisecond, Lease: 3 * time.Second}
	nodes := map[string]*Node{}
	for i, id := range ids {
		n, err := Start(withTLS(Config{ID: id, Bind: addrs[i], Members: members, Timing: timing}))
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	leader := waitLeader(t, nodes, 10*time.Second)
	for _, n := range nodes {
		if n != leader {
			n.Shutdown()
		}
	}
	// Poll as the failover loop does, until raft steps the leader down.
	waitFor(t, "the leader steps down", 5*time.Second, func() bool { leader.InMajority(); return !leader.IsLeader() })
	down := time.Now()
	if !leader.InMajority() {
		t.Error("a leader that just stepped down lost its majority at once, before its lease ended")
	}
	waitFor(t, "its lease ends", 5*time.Second, func() bool { return !leader.InMajority() })
	t.Logf("in majority for %v after stepping down (lease %v, leader lease %v)", time.Since(down).Round(time.Millisecond), timing.Lease, timing.Heartbeat)
}
