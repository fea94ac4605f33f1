package heartbeat

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v %s", args, err, out)
	}
}

// twoHosts makes namespaces a and b joined by two veth pairs: the pair link
// (10.98.1.0/24) and the LAN (10.98.2.0/24).
func twoHosts(t *testing.T) (a, b netns.NsHandle, na, nb string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	na, nb = fmt.Sprintf("hba%d", os.Getpid()), fmt.Sprintf("hbb%d", os.Getpid())
	for _, n := range []string{na, nb} {
		sh(t, "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	for i, link := range []string{"pair", "lan"} {
		sh(t, "-n", na, "link", "add", link, "type", "veth", "peer", "name", link, "netns", nb)
		sh(t, "-n", na, "addr", "add", fmt.Sprintf("10.98.%d.1/24", i+1), "dev", link)
		sh(t, "-n", nb, "addr", "add", fmt.Sprintf("10.98.%d.2/24", i+1), "dev", link)
		sh(t, "-n", na, "link", "set", link, "up")
		sh(t, "-n", nb, "link", "set", link, "up")
	}
	var err error
	if a, err = netns.GetFromName(na); err != nil {
		t.Fatal(err)
	}
	if b, err = netns.GetFromName(nb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b, na, nb
}

type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) add(c Change) { r.mu.Lock(); r.changes = append(r.changes, c); r.mu.Unlock() }

func (r *recorder) first(peer, path string, to State, after time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		if c.Peer == peer && c.Path == path && c.To == to && !c.At.Before(after) {
			return c.At, true
		}
	}
	return time.Time{}, false
}

func monitorIn(t *testing.T, ns netns.NsHandle, cfg Config) *Monitor {
	var m *Monitor
	if err := nsdo.Do(ns, func() error {
		var err error
		m, err = New(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func TestOnePathLostIsReportedBothLostIsDead(t *testing.T) {
	a, b, na, _ := twoHosts(t)
	monitorIn(t, a, Config{ID: "dh1", Key: testKey, Paths: []Path{
		{Name: "pair", Local: "10.98.1.1:7701", Peers: map[string]string{"dh2": "10.98.1.2:7701"}},
		{Name: "lan", Local: "10.98.2.1:7701", Peers: map[string]string{"dh2": "10.98.2.2:7701"}},
	}})
	var rec recorder
	mb := monitorIn(t, b, Config{ID: "dh2", Key: testKey, OnChange: rec.add, Paths: []Path{
		{Name: "pair", Local: "10.98.1.2:7701", Peers: map[string]string{"dh1": "10.98.1.1:7701"}},
		{Name: "lan", Local: "10.98.2.2:7701", Peers: map[string]string{"dh1": "10.98.2.1:7701"}},
	}})
	waitState(t, mb, "dh1", Alive, 5*time.Second)

	cut := time.Now()
	sh(t, "-n", na, "link", "set", "pair", "down")
	waitFor(t, "pair path reported dead", 5*time.Second, func() bool { _, ok := rec.first("dh1", "pair", Dead, cut); return ok })
	if st := mb.Peer("dh1"); st != Alive {
		t.Fatalf("one path lost: peer is %s, want alive", st)
	}

	cut = time.Now()
	sh(t, "-n", na, "link", "set", "lan", "down")
	waitFor(t, "peer dead", 5*time.Second, func() bool { _, ok := rec.first("dh1", "", Dead, cut); return ok })
	suspectAt, _ := rec.first("dh1", "", Suspect, cut)
	deadAt, _ := rec.first("dh1", "", Dead, cut)
	t.Logf("both paths cut: suspect after %v, dead after %v", suspectAt.Sub(cut), deadAt.Sub(cut))
	if deadAt.Before(suspectAt) || deadAt.Sub(cut) < 900*time.Millisecond {
		t.Errorf("dead after %v (suspect %v): must not come before the 1 s dead time", deadAt.Sub(cut), suspectAt.Sub(cut))
	}

	sh(t, "-n", na, "link", "set", "lan", "up")
	waitState(t, mb, "dh1", Alive, 5*time.Second)
}

func TestStrangersAndSpoofedPathsAreIgnored(t *testing.T) {
	a, b, _, _ := twoHosts(t)
	// dh9 is not a listed peer of dh2: its heartbeats, from the address dh2
	// expects dh1 at, must not make dh1 look alive.
	monitorIn(t, a, Config{ID: "dh9", Key: testKey, Paths: []Path{
		{Name: "pair", Local: "10.98.1.1:7701", Peers: map[string]string{"dh2": "10.98.1.2:7701"}}}})
	mb := monitorIn(t, b, Config{ID: "dh2", Key: testKey, Paths: []Path{
		{Name: "pair", Local: "10.98.1.2:7701", Peers: map[string]string{"dh1": "10.98.1.1:7701"}}}})
	time.Sleep(1500 * time.Millisecond)
	if st := mb.Peer("dh1"); st != Dead {
		t.Fatalf("dh1 never sent, yet it is %s", st)
	}
}

func waitState(t *testing.T, m *Monitor, peer string, want State, within time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s %s", peer, want), within, func() bool { return m.Peer(peer) == want })
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOwnStallIsNotPeersDeath: when the observer itself was not running
// for longer than the dead time, the peer is not declared dead for it.
func TestOwnStallIsNotPeersDeath(t *testing.T) {
	m, err := New(Config{ID: "dh2", Key: testKey, Paths: []Path{{Name: "lan", Local: "127.0.0.1:0", Peers: map[string]string{"dh1": "127.0.0.1:9"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	t0 := time.Now()
	m.start = t0
	m.seen["dh1"] = map[string]time.Time{"lan": t0}
	m.evaluate(t0.Add(50 * time.Millisecond))
	if st := m.Peer("dh1"); st != Alive {
		t.Fatalf("fresh peer is %s", st)
	}
	// This member stalls for 3 s, then runs again before any packet.
	m.evaluate(t0.Add(3050 * time.Millisecond))
	if st := m.Peer("dh1"); st == Dead {
		t.Fatal("the observer's own stall made the peer dead")
	}
	// Real silence after the stall still counts.
	m.evaluate(t0.Add(3100 * time.Millisecond))
	m.evaluate(t0.Add(3150 * time.Millisecond))
	for now := t0.Add(3200 * time.Millisecond); now.Before(t0.Add(4300 * time.Millisecond)); now = now.Add(25 * time.Millisecond) {
		m.evaluate(now)
	}
	if st := m.Peer("dh1"); st != Dead {
		t.Fatalf("a peer silent for a dead time after the stall is %s, want dead", st)
	}
}
