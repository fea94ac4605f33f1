package vip

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/nsdo"
)

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v %s", args, err, out)
	}
	return string(out)
}

// bridgeLAN is three machines a, b and c (a client), each a namespace with
// eth0 on one bridge in namespace "br": a is 10.<net>.0.11, b .12, c .100,
// MACs 02:00:00:00:<macByte>:0a/0b/0c.
func bridgeLAN(t *testing.T, prefix string, net, macByte int) (names, macs map[string]string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	id := os.Getpid()
	names = map[string]string{}
	for _, n := range []string{"br", "a", "b", "c"} {
		names[n] = fmt.Sprintf("%s%s%d", prefix, n, id)
		ip(t, "netns", "add", names[n])
		nn := names[n]
		t.Cleanup(func() { exec.Command("ip", "netns", "del", nn).Run() })
	}
	ip(t, "-n", names["br"], "link", "add", "br0", "type", "bridge")
	ip(t, "-n", names["br"], "link", "set", "br0", "up")
	macs = map[string]string{}
	host := map[string]int{"a": 11, "b": 12, "c": 100}
	for _, n := range []string{"a", "b", "c"} {
		macs[n] = fmt.Sprintf("02:00:00:00:%02x:0%s", macByte, n)
		ip(t, "-n", names[n], "link", "add", "eth0", "type", "veth", "peer", "name", "p"+n, "netns", names["br"])
		ip(t, "-n", names[n], "link", "set", "eth0", "address", macs[n])
		ip(t, "-n", names[n], "addr", "add", fmt.Sprintf("10.%d.0.%d/24", net, host[n]), "dev", "eth0")
		ip(t, "-n", names[n], "link", "set", "eth0", "up")
		ip(t, "-n", names["br"], "link", "set", "p"+n, "master", "br0", "up")
	}
	return names, macs
}

// TestVIPMovesAndNeighboursFollow: a client on a bridge learns the VIP at
// host A; B takes it over with gratuitous ARP and the client's neighbour
// entry points at B at once, without waiting for it to go stale.
func TestVIPMovesAndNeighboursFollow(t *testing.T) {
	names, macs := bridgeLAN(t, "vip", 97, 0)
	vipAddr := netip.MustParsePrefix("10.97.0.50/24")
	neigh := func() string {
		return ip(t, "-n", names["c"], "neigh", "show", "10.97.0.50")
	}
	stopA := startHolder(t, names["a"], vipAddr, nil)
	client, err := netns.GetFromName(names["c"])
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resolveVIP(t, client, "10.97.0.50", "A", neigh, macs["a"])
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if out := ip(t, "-n", names["a"], "addr", "show", "eth0"); strings.Contains(out, "10.97.0.50") {
		t.Fatalf("A still has the VIP after release:\n%s", out)
	}
	startHolder(t, names["b"], vipAddr, nil)
	waitFor(t, "client's neighbour entry moves to B from the gratuitous ARP alone", 3*time.Second, func() bool {
		return strings.Contains(neigh(), macs["b"])
	})
}

func TestGARPPacket(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:0b")
	p := garp(mac, netip.MustParseAddr("192.0.2.50"))
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0xb, 192, 0, 2, 50, 0, 0, 0, 0, 0, 0, 192, 0, 2, 50}
	if string(p) != string(want) {
		t.Fatalf("garp = % x\nwant   % x", p, want)
	}
}

// startHolder holds addr from namespace ns (configure, if set, adjusts the
// holder first) until the returned stop is called or the test ends; stop
// returns Hold's error.
func startHolder(t *testing.T, ns string, addr netip.Prefix, configure func(*Holder)) (stop func() error) {
	t.Helper()
	handle, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	var h *Holder
	if err := nsdo.Do(handle, func() error {
		var err error
		h, err = New("eth0", addr, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Hold(ctx); h.Close() }()
	var once sync.Once
	var holdErr error
	stop = func() error {
		once.Do(func() { cancel(); holdErr = <-done })
		return holdErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// resolveVIP makes the client (namespace c) resolve vip and waits until
// its neighbour entry (neigh) names mac, the MAC of host.
func resolveVIP(t *testing.T, c netns.NsHandle, vip, host string, neigh func() string, mac string) {
	t.Helper()
	waitFor(t, "client resolves the VIP at "+host, 5*time.Second, func() bool {
		// Any datagram to the VIP makes the client's kernel resolve it.
		nsdo.Do(c, func() error {
			conn, err := net.Dial("udp4", vip+":9")
			if err == nil {
				conn.Write([]byte("x"))
				conn.Close()
			}
			return err
		})
		return strings.Contains(neigh(), mac)
	})
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHostGivingUpTheVIPDoesNotPullNeighboursBack: A held the VIP, B took it
// over (gratuitous ARP) while A, resumed from a pause, still holds it for a
// moment and sends from it (a retransmission of what was in flight). A's
// ARP request for the client must name A's own address, or the client
// would learn the VIP at A again and lose the website.
func TestHostGivingUpTheVIPDoesNotPullNeighboursBack(t *testing.T) {
	names, macs := bridgeLAN(t, "vipr", 96, 1)
	vipAddr := netip.MustParsePrefix("10.96.0.50/24")
	neigh := func() string { return ip(t, "-n", names["c"], "neigh", "show", "10.96.0.50") }
	// A neither announces again nor answers B's announcement: it steps
	// down before either (the moment it has is what this test is about).
	startHolder(t, names["a"], vipAddr, func(h *Holder) { h.Burst, h.Every, h.DefendAfter = []time.Duration{0}, time.Hour, time.Hour })
	c, err := netns.GetFromName(names["c"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resolveVIP(t, c, "10.96.0.50", "A", neigh, macs["a"])
	startHolder(t, names["b"], vipAddr, nil) // B takes over and announces it
	waitFor(t, "client's entry for the VIP at B", 5*time.Second, func() bool { return strings.Contains(neigh(), macs["b"]) })
	// Past the neighbour lock time (1 s) an ARP request from A naming the
	// VIP would move the client's entry back to A.
	time.Sleep(1500 * time.Millisecond)
	ip(t, "-n", names["a"], "neigh", "flush", "dev", "eth0")
	a, err := netns.GetFromName(names["a"])
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := nsdo.Do(a, func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.96.0.50")}, &net.UDPAddr{IP: net.ParseIP("10.96.0.100"), Port: 9})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("retransmission"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A resolved the client", 3*time.Second, func() bool {
		return strings.Contains(ip(t, "-n", names["a"], "neigh", "show", "10.96.0.100"), macs["c"])
	})
	if got := neigh(); !strings.Contains(got, macs["b"]) {
		t.Fatalf("the client's entry for the VIP left B after A sent from it: %s", got)
	}
}

// TestHolderAnswersAnotherHostsAnnouncement: B holds the VIP; A, resumed
// from a pause and not yet stepped down, announces it from a timer that was
// due and the client follows A. B answers with its own announcement and the
// client's entry is back at B within a couple of seconds; a holder that may
// no longer hold the address (Allowed false) does not answer.
func TestHolderAnswersAnotherHostsAnnouncement(t *testing.T) {
	names, macs := bridgeLAN(t, "vipd", 95, 2)
	vipAddr := netip.MustParsePrefix("10.95.0.50/24")
	var allowed atomic.Bool
	allowed.Store(true)
	var defendAfter time.Duration
	startHolder(t, names["b"], vipAddr, func(h *Holder) {
		h.Allowed = allowed.Load
		// One announcement when taken and no refresh: only an answer to A
		// can bring the client back.
		h.Burst, h.Every = []time.Duration{0}, time.Hour
		defendAfter = h.DefendAfter
	})

	neigh := func() string { return ip(t, "-n", names["c"], "neigh", "show", "10.95.0.50") }
	c, err := netns.GetFromName(names["c"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resolveVIP(t, c, "10.95.0.50", "B", neigh, macs["b"])
	a, err := netns.GetFromName(names["a"])
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	staleAnnounce := func() {
		t.Helper()
		// Past the client's neighbour lock time (1 s), or it ignores A.
		time.Sleep(1200 * time.Millisecond)
		if err := nsdo.Do(a, func() error { return sendGARP("eth0", macs["a"], vipAddr.Addr()) }); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "client follows A's announcement", 2*time.Second, func() bool { return strings.Contains(neigh(), macs["a"]) })
	}
	staleAnnounce()
	waitFor(t, "B answers and the client's entry is back at B", 5*time.Second, func() bool { return strings.Contains(neigh(), macs["b"]) })

	allowed.Store(false)
	staleAnnounce()
	time.Sleep(3 * defendAfter)
	if got := neigh(); !strings.Contains(got, macs["a"]) {
		t.Fatalf("a holder that may no longer hold the address answered A: %s", got)
	}
}

// sendGARP announces ip at mac on link from the calling namespace.
func sendGARP(link, mac string, ip netip.Addr) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return err
	}
	ifi, err := net.InterfaceByName(link)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return unix.Sendto(fd, garp(hw, ip), 0, to)
}

func TestClaims(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.50")
	mac, _ := net.ParseMAC("02:00:00:00:00:0b")
	reply := garp(mac, vip)
	reply[7] = 2
	other := garp(mac, netip.MustParseAddr("192.0.2.11"))
	rarp := garp(mac, vip)
	rarp[7] = 3
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"gratuitous request", garp(mac, vip), true},
		{"reply", reply, true},
		{"another address", other, false},
		{"reverse ARP", rarp, false},
		{"truncated", garp(mac, vip)[:20], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := claims(tc.pkt, vip)
			if ok != tc.want || (ok && got.String() != mac.String()) {
				t.Fatalf("claims = %v %v, want %v at %v", got, ok, tc.want, mac)
			}
		})
	}
}
