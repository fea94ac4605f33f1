package qemu

import (
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces: needs root")
	}
}

// TestNetClientsTalkOverBridge: two client namespaces on the bridge reach
// each other over TCP, using Do (a Go listener inside one namespace) and a
// dial from the other.
func TestNetClientsTalkOverBridge(t *testing.T) {
	requireRoot(t)
	n := NewNet(t, "unit")
	server := n.AddClient("srv", "192.0.2.1/24")
	client := n.AddClient("cli", "192.0.2.100/24")

	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "192.0.2.1:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "hello from srv\n")
			c.Close()
		}
	}()

	var got string
	err := client.Do(func() error {
		c, err := net.DialTimeout("tcp", "192.0.2.1:8080", Scale(10*time.Second))
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err != nil || got != "hello from srv\n" {
		t.Fatalf("dial over the bridge: %q, %v", got, err)
	}

	// The address exists only inside the namespaces.
	if c, err := net.DialTimeout("tcp", "192.0.2.1:8080", 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("the test process reached a namespace-only address")
	}

	out, err := client.Run("ip", "-br", "addr", "show", "eth0")
	if err != nil || !strings.Contains(out, "192.0.2.100/24") {
		t.Fatalf("Run in client namespace: %q, %v", out, err)
	}
	if l, err := n.Link("veth1"); err != nil || !l.Carrier || l.Master != BridgeName {
		t.Fatalf("veth1 = %+v, %v", l, err)
	}
	for _, c := range []struct {
		ns     *Namespace
		ifname string
	}{{&n.Namespace, BridgeName}, {&n.Namespace, "veth1"}, {client, "eth0"}} {
		on, err := c.ns.TxChecksum(c.ifname)
		if err != nil || on {
			t.Errorf("%s in %s: tx checksum offload on=%v, %v; want off", c.ifname, c.ns.Name, on, err)
		}
	}
	// A fresh veth has it on: the check above can fail.
	if err := n.ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1"); err != nil {
		t.Fatal(err)
	}
	if on, err := n.TxChecksum("probe0"); err != nil || !on {
		t.Fatalf("fresh veth: tx checksum on=%v, %v; want on", on, err)
	}
}

func TestNetTapWithoutQEMUHasNoCarrier(t *testing.T) {
	requireRoot(t)
	n := NewNet(t, "tap")
	tap := n.AddTap("tap7")
	l, err := n.Link(tap)
	if err != nil {
		t.Fatal(err)
	}
	if l.Carrier || l.Master != BridgeName {
		t.Fatalf("tap %+v: want no carrier until QEMU opens it, on %s", l, BridgeName)
	}
	if _, err := n.WaitCarrier(tap, true, 100*time.Millisecond); err == nil {
		t.Fatal("WaitCarrier succeeded on a tap nobody opened")
	}
}

func TestNetCleanupRemovesNamespaces(t *testing.T) {
	requireRoot(t)
	var names []string
	t.Run("inner", func(t *testing.T) {
		n := NewNet(t, "gone")
		c := n.AddClient("c", "")
		names = []string{n.Name, c.Name}
	})
	for _, name := range names {
		if _, err := os.Stat("/var/run/netns/" + name); err == nil {
			t.Errorf("netns %s left behind", name)
		}
	}
}

// TestNetSecondBridgeIsSeparate: clients on different bridges of one Net do
// not reach each other; SetUp cuts and restores a link.
func TestNetSecondBridgeIsSeparate(t *testing.T) {
	requireRoot(t)
	n := NewNet(t, "two")
	pair := n.AddBridge("br-pair")
	a := n.AddClient("a", "198.51.100.1/24")
	b := n.AddClientTo(pair, "b", "198.51.100.2/24")
	c := n.AddClientTo(pair, "c", "198.51.100.3/24")
	if l, err := n.Link("veth2"); err != nil || l.Master != pair {
		t.Fatalf("veth2 = %+v, %v; want on %s", l, err, pair)
	}
	dial := func(from *Namespace, addr string) error {
		return from.Do(func() error {
			conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			return err
		})
	}
	// New links carry traffic only once the kernel's linkwatch has
	// activated their queues (up to a second after carrier).
	reach := func(from *Namespace, addr string) error {
		var err error
		for deadline := time.Now().Add(Scale(10 * time.Second)); time.Now().Before(deadline); {
			if err = dial(from, addr); err == nil {
				return nil
			}
		}
		return err
	}
	var ln net.Listener
	if err := c.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "198.51.100.3:9000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	if err := reach(b, "198.51.100.3:9000"); err != nil {
		t.Fatalf("same bridge: %v", err)
	}
	if err := dial(a, "198.51.100.3:9000"); err == nil {
		t.Fatal("a client on br0 reached one on the pair bridge")
	}
	if err := n.SetUp("veth3", false); err != nil {
		t.Fatal(err)
	}
	if err := dial(b, "198.51.100.3:9000"); err == nil {
		t.Fatal("reached c with its bridge port down")
	}
	if err := n.SetUp("veth3", true); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitCarrier("veth3", true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := reach(b, "198.51.100.3:9000"); err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
}

// TestNetImpair: 100% loss on a client's bridge port cuts it off, 0 heals it,
// and a bad percentage is refused.
func TestNetImpair(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) missing")
	}
	n := NewNet(t, "loss")
	a := n.AddClient("a", "203.0.113.1/24")
	b := n.AddClient("b", "203.0.113.2/24")
	var ln net.Listener
	if err := b.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "203.0.113.2:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(timeout time.Duration) error {
		return a.Do(func() error {
			c, err := net.DialTimeout("tcp", "203.0.113.2:7000", timeout)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dial(Scale(10 * time.Second)); err != nil {
		t.Fatalf("before impairment: %v", err)
	}
	if err := n.Impair("veth2", 100); err != nil {
		t.Fatal(err)
	}
	if err := dial(time.Second); err == nil {
		t.Fatal("connected through a port dropping 100%")
	}
	if err := n.Impair("veth2", 0); err != nil {
		t.Fatal(err)
	}
	if err := dial(Scale(10 * time.Second)); err != nil {
		t.Fatalf("after healing: %v", err)
	}
	if err := n.Impair("veth2", 101); err == nil {
		t.Fatal("accepted 101% loss")
	}
}

// TestNetImpairPartialLoss: at 50% about half of 400 datagrams arrive (the
// bounds are 10 standard deviations wide).
func TestNetImpairPartialLoss(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) missing")
	}
	n := NewNet(t, "half")
	a := n.AddClient("a", "203.0.113.1/24")
	b := n.AddClient("b", "203.0.113.2/24")
	var pc net.PacketConn
	if err := b.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", "203.0.113.2:7001")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	count := func(n int) int {
		got := make(chan int)
		go func() {
			buf := make([]byte, 64)
			c := 0
			for {
				pc.SetReadDeadline(time.Now().Add(Scale(time.Second)))
				if _, _, err := pc.ReadFrom(buf); err != nil {
					got <- c
					return
				}
				c++
			}
		}()
		if err := a.Do(func() error {
			c, err := net.Dial("udp", "203.0.113.2:7001")
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < n; i++ {
				c.Write([]byte("x"))
				time.Sleep(time.Millisecond) // no socket-buffer drops
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return <-got
	}
	// Neighbour resolution and linkwatch first: all must arrive unimpaired.
	for deadline := time.Now().Add(Scale(10 * time.Second)); count(5) < 5; {
		if time.Now().After(deadline) {
			t.Fatal("unimpaired link loses datagrams")
		}
	}
	if err := n.Impair("veth2", 50); err != nil {
		t.Fatal(err)
	}
	if got := count(400); got < 100 || got > 300 {
		t.Fatalf("%d of 400 datagrams arrived through 50%% loss", got)
	} else {
		t.Logf("%d of 400 arrived", got)
	}
}
