package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func startCluster(t *testing.T, ids []string, dirs []string) (map[string]*Node, []Member) {
	t.Helper()
	addrs := freeAddrs(t, len(ids))
	var members []Member
	for i, id := range ids {
		members = append(members, Member{ID: id, Addr: addrs[i], Voter: true})
	}
	nodes := map[string]*Node{}
	for i, id := range ids {
		dir := ""
		if dirs != nil {
			dir = dirs[i]
		}
		n, err := Start(withTLS(Config{ID: id, Bind: addrs[i], Members: members, DataDir: dir}))
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	return nodes, members
}

func waitLeader(t *testing.T, nodes map[string]*Node, within time.Duration) *Node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.IsLeader() {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no leader within %v", within)
	return nil
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterReplicatesOwnershipAndSurvivesLeaderLoss(t *testing.T) {
	nodes, _ := startCluster(t, []string{"dh1", "dh2", "witness"}, nil)
	leader := waitLeader(t, nodes, 10*time.Second)
	ctx := context.Background()
	o, err := leader.Assign(ctx, "web1", "dh1", 0, "initial placement")
	if err != nil || o.Epoch != 1 {
		t.Fatalf("assign: %+v %v", o, err)
	}
	for id, n := range nodes {
		waitFor(t, id+" sees web1 on dh1", 5*time.Second, func() bool {
			got, ok := n.Get("web1")
			return ok && got.Owner == "dh1" && got.Epoch == 1
		})
	}
	for _, n := range nodes {
		if n != leader {
			if _, err := n.Assign(ctx, "web1", "dh2", 1, "x"); !errors.Is(err, ErrNotLeader) {
				t.Fatalf("follower assign: %v, want ErrNotLeader", err)
			}
			break
		}
	}
	// Stale decision is refused.
	if _, err := leader.Assign(ctx, "web1", "dh2", 0, "stale"); err == nil {
		t.Fatal("assign with a stale epoch was applied")
	}

	// Lose the leader: the other two elect a new one and keep the table.
	old := leader.cfg.ID
	leader.Shutdown()
	delete(nodes, old)
	start := time.Now()
	next := waitLeader(t, nodes, 10*time.Second)
	t.Logf("new leader %s after %v", next.cfg.ID, time.Since(start))
	if o, err := next.Assign(ctx, "web1", "dh2", 1, "failover"); err != nil || o.Epoch != 2 {
		t.Fatalf("assign after failover: %+v %v", o, err)
	}
	for id, n := range nodes {
		if !n.InMajority() && n != next {
			waitFor(t, id+" in majority", 3*time.Second, n.InMajority)
		}
	}

	// Lose a second member: the last one loses its majority within its lease.
	next.Shutdown()
	delete(nodes, next.cfg.ID)
	for id, n := range nodes {
		waitFor(t, fmt.Sprintf("%s notices it lost the majority", id), 5*time.Second, func() bool { return !n.InMajority() })
	}
}

func TestClusterKeepsStateAcrossRestart(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	ids := []string{"dh1", "dh2", "witness"}
	nodes, members := startCluster(t, ids, dirs)
	leader := waitLeader(t, nodes, 10*time.Second)
	if _, err := leader.Assign(context.Background(), "db1", "dh2", 0, "placement"); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Set(context.Background(), "maintenance/shop/www", "on"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replicated", 5*time.Second, func() bool {
		for _, n := range nodes {
			if o, ok := n.Get("db1"); !ok || o.Owner != "dh2" {
				return false
			}
			if s := n.Settings(); len(s) != 1 || s[0].Value != "on" {
				return false
			}
		}
		return true
	})
	for _, n := range nodes {
		n.Shutdown()
	}
	restarted := map[string]*Node{}
	var mu sync.Mutex
	told := map[string]string{} // member: the maintenance value its hook was told
	for i, id := range ids {
		onSetting := func(s Setting) {
			mu.Lock()
			told[id] = s.Value
			mu.Unlock()
		}
		n, err := Start(withTLS(Config{ID: id, Bind: members[i].Addr, Members: members, DataDir: dirs[i], OnSetting: onSetting}))
		if err != nil {
			t.Fatal(err)
		}
		restarted[id] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	waitLeader(t, restarted, 10*time.Second)
	for id, n := range restarted {
		waitFor(t, id+" restored db1", 5*time.Second, func() bool {
			o, ok := n.Get("db1")
			return ok && o.Owner == "dh2" && o.Epoch == 1
		})
		// Replaying the log tells the host of its settings again, so it
		// applies them after a reboot.
		waitFor(t, id+" told of the maintenance setting", 5*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return told[id] == "on"
		})
	}
	// Clearing replicates too; a follower cannot set.
	leader = waitLeader(t, restarted, 10*time.Second)
	for _, n := range restarted {
		if n != leader {
			if _, err := n.Set(context.Background(), "maintenance/shop/www", ""); !errors.Is(err, ErrNotLeader) {
				t.Errorf("follower set: %v, want ErrNotLeader", err)
			}
		}
	}
	if _, err := leader.Set(context.Background(), "maintenance/shop/www", ""); err != nil {
		t.Fatal(err)
	}
	for id, n := range restarted {
		waitFor(t, id+" cleared the setting", 5*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(n.Settings()) == 0 && told[id] == ""
		})
	}
}

// TestLeaderLossKeepsSurvivorsInMajority: when the leader is lost, the two
// survivors elect a new one without either leaving its majority (a follower
// that turns candidate keeps the lease it holds), so hosts do not stop their
// roles because the witness or the other host went away.
func TestLeaderLossKeepsSurvivorsInMajority(t *testing.T) {
	// Generous lease: the property is that the election fits in it, on a
	// loaded machine too.
	timing := Timing{Heartbeat: 300 * time.Millisecond, Lease: 3 * time.Second}
	ids := []string{"dh1", "dh2", "witness"}
	addrs := freeAddrs(t, len(ids))
	var members []Member
	for i, id := range ids {
		members = append(members, Member{ID: id, Addr: addrs[i], Voter: true})
	}
	nodes := map[string]*Node{}
	for i, id := range ids {
		n, err := Start(withTLS(Config{ID: id, Bind: addrs[i], Members: members, Timing: timing}))
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	for round := 0; round < 2; round++ {
		leader := waitLeader(t, nodes, 20*time.Second)
		waitFor(t, "every member in majority", 10*time.Second, func() bool {
			for _, n := range nodes {
				if !n.InMajority() {
					return false
				}
			}
			return true
		})
		lost := leader.cfg.ID
		leader.Shutdown()
		delete(nodes, lost)
		start := time.Now()
		var next *Node
		for next == nil {
			for id, n := range nodes {
				if !n.InMajority() {
					t.Fatalf("round %d: %s left its majority %v after leader %s was lost (state %s)", round, id, time.Since(start), lost, n.State())
				}
				if n.IsLeader() {
					next = n
				}
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("round %d: no new leader within 20s", round)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("round %d: leader %s lost, %s leads after %v", round, lost, next.cfg.ID, time.Since(start))
		// Bring the lost member back (in memory: it rejoins empty) for the
		// next round.
		i := slicesIndex(ids, lost)
		n, err := Start(withTLS(Config{ID: lost, Bind: addrs[i], Members: members, Timing: timing}))
		if err != nil {
			t.Fatal(err)
		}
		nodes[lost] = n
		t.Cleanup(func() { n.Shutdown() })
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestLeaderMajorityNeedsAFreshConfirmation: a leader counts itself in the
// majority only while a quorum confirmed it within the lease. A host that
// stalled finds its confirmation old and, like a follower with an old
// leader contact, is out of the majority until the quorum answers again.
func TestLeaderMajorityNeedsAFreshConfirmation(t *testing.T) {
	nodes, _ := startCluster(t, []string{"dh1", "dh2", "witness"}, nil)
	leader := waitLeader(t, nodes, 10*time.Second)
	waitFor(t, "the leader in majority", 5*time.Second, leader.InMajority)
	leader.lease.mu.Lock()
	leader.lease.at = time.Now().Add(-time.Hour) // as after a stall
	leader.lease.mu.Unlock()
	if leader.InMajority() && leader.IsLeader() {
		t.Fatal("a leader whose last confirmation is an hour old counts itself in the majority")
	}
	waitFor(t, "the quorum confirms the leader again", 5*time.Second, leader.InMajority)
}

// TestTransferLeadership: the leader hands its role to a named voter.
func TestTransferLeadership(t *testing.T) {
	nodes, _ := startCluster(t, []string{"dh1", "dh2", "witness"}, nil)
	leader := waitLeader(t, nodes, 10*time.Second)
	to := "dh1"
	if leader == nodes["dh1"] {
		to = "dh2"
	}
	if err := leader.TransferLeadership("nobody"); err == nil {
		t.Fatal("transfer to a non-member succeeded")
	}
	if err := nodes[to].TransferLeadership(leader.cfg.ID); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a follower's transfer: %v, want ErrNotLeader", err)
	}
	if err := leader.TransferLeadership(to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, to+" leads", 5*time.Second, nodes[to].IsLeader)
	waitFor(t, "the old leader follows in majority", 5*time.Second, func() bool { return !leader.IsLeader() && leader.InMajority() })
}
