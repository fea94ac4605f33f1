package netconf

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"magestack/init/dhcpclient"
	"magestack/init/dhcpclient/dhcptest"
	"magestack/init/nsdo"
)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

// fastDHCP keeps the tests quick without changing any behaviour.
var fastDHCP = dhcpclient.Config{
	ExchangeTimeout: 500 * time.Millisecond, ExchangeTries: 2,
	InitialBackoff: 200 * time.Millisecond, MaxBackoff: time.Second,
	MinRetryInterval: 300 * time.Millisecond,
}

// inspector reads the client namespace's kernel state.
type inspector struct {
	t *testing.T
	h *netlink.Handle
}

func inspect(t *testing.T, nsPath string) inspector {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return inspector{t, h}
}

func (in inspector) addrs(ifname string) []string {
	l, err := in.h.LinkByName(ifname)
	if err != nil {
		in.t.Fatal(err)
	}
	as, err := in.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		in.t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

// route returns the gateway of the main-table route to dst ("" none).
func (in inspector) route(dst string) (gw string, found bool) {
	rs, err := in.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	if err != nil {
		in.t.Fatal(err)
	}
	for _, r := range rs {
		d := "0.0.0.0/0"
		if r.Dst != nil {
			d = r.Dst.String()
		}
		if d == dst {
			if r.Gw != nil {
				return r.Gw.String(), true
			}
			return "", true
		}
	}
	return "", false
}

func (in inspector) linkUp(name string) bool {
	l, err := in.h.LinkByName(name)
	if err != nil {
		in.t.Fatal(err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}

func events(t *testing.T) (chan dhcpclient.Event, func(dhcpclient.Event)) {
	ch := make(chan dhcpclient.Event, 64)
	return ch, func(e dhcpclient.Event) { ch <- e }
}

func waitEvent(t *testing.T, ch chan dhcpclient.Event, want dhcpclient.EventKind, within time.Duration) dhcpclient.Event {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-ch:
			if e.Kind == want {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event within %s", want, within)
		}
	}
}

func upInPair(t *testing.T, p *dhcptest.Pair, cmdline string, leaseTimeout time.Duration) (*State, error, chan dhcpclient.Event, string) {
	t.Helper()
	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	ch, on := events(t)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := Up(ctx, Options{
		Cmdline: cmdline, Hostname: "dh-test", Logger: testLogger(t),
		CarrierTimeout: 5 * time.Second, LeaseTimeout: leaseTimeout,
		ResolvConf: resolv, Netns: p.Client, DHCP: fastDHCP, OnEvent: on,
	})
	t.Cleanup(func() {
		cancel()
		if st != nil {
			done := make(chan struct{})
			go func() { st.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Error("background DHCP did not stop within 15 s of cancel")
			}
		}
	})
	return st, err, ch, resolv
}

func TestUpDHCPLeaseAndRenewal(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.11.1/24"))
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.11.1/24"), PoolFrom: netip.MustParseAddr("10.99.11.10"),
		Lease: 4 * time.Second, Router: netip.MustParseAddr("10.99.11.1"),
		DNS: []netip.Addr{netip.MustParseAddr("10.99.11.53")}, Domain: "stack.test",
	})
	start := time.Now()
	st, err, ch, resolv := upInPair(t, p, "", 10*time.Second)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up returned after %s", time.Since(start))
	in := inspect(t, p.Client)
	if !in.linkUp("lo") || !in.linkUp("eth0") {
		t.Fatal("lo or eth0 not up")
	}
	if got := in.addrs("eth0"); len(got) != 1 || got[0] != "10.99.11.10/24" {
		t.Fatalf("eth0 addresses %v, want [10.99.11.10/24]", got)
	}
	if gw, ok := in.route("0.0.0.0/0"); !ok || gw != "10.99.11.1" {
		t.Fatalf("default route via %q (found %v), want via 10.99.11.1", gw, ok)
	}
	b, err := os.ReadFile(resolv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "nameserver 10.99.11.53\n") || !strings.Contains(string(b), "search stack.test\n") {
		t.Fatalf("resolv.conf:\n%s", b)
	}

	ren := waitEvent(t, ch, dhcpclient.EventRenewed, 10*time.Second)
	if ren.Lease.Address.String() != "10.99.11.10/24" {
		t.Fatalf("renewed %v", ren.Lease.Address)
	}
	is, ok := st.Interface("eth0")
	if !ok || is.LastRenewal.IsZero() || is.Phase != "renewed" || is.LeaseExpiry.Before(time.Now()) || is.Gateway.String() != "10.99.11.1" {
		t.Fatalf("status after renewal: %+v", is)
	}
	js, err := json.Marshal(st.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"name":"eth0"`, `"address":"10.99.11.10/24"`, `"gateway":"10.99.11.1"`, `"dns":["10.99.11.53"]`, `"last_renewal":`, `"lease_expiry":`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("snapshot JSON lacks %s: %s", want, js)
		}
	}
	if got := in.addrs("eth0"); len(got) != 1 || got[0] != "10.99.11.10/24" {
		t.Fatalf("after renewal eth0 has %v", got)
	}
}

func TestUpClasslessRoutesOverrideRouter(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.12.1/24"))
	_, dst, _ := net.ParseCIDR("10.99.200.0/24")
	_, def, _ := net.ParseCIDR("0.0.0.0/0")
	_, onlink, _ := net.ParseCIDR("10.99.201.0/24")
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.12.1/24"), PoolFrom: netip.MustParseAddr("10.99.12.10"),
		Lease: 60 * time.Second, Router: netip.MustParseAddr("10.99.12.1"),
		Routes: []dhcpv4.Route{
			{Dest: dst, Router: net.IPv4(10, 99, 12, 254)},
			{Dest: def, Router: net.IPv4(10, 99, 12, 253)},
			{Dest: onlink, Router: net.IPv4zero},
		},
	})
	if _, err, _, _ := upInPair(t, p, "", 10*time.Second); err != nil {
		t.Fatalf("Up: %v", err)
	}
	in := inspect(t, p.Client)
	for dst, want := range map[string]string{"0.0.0.0/0": "10.99.12.253", "10.99.200.0/24": "10.99.12.254", "10.99.201.0/24": ""} {
		if gw, ok := in.route(dst); !ok || gw != want {
			t.Errorf("route %s via %q (found %v), want %q (option 121 wins over option 3)", dst, gw, ok, want)
		}
	}
}

func TestUpNoServerThenServerAppears(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.13.1/24"))
	start := time.Now()
	st, err, ch, _ := upInPair(t, p, "", 2*time.Second)
	took := time.Since(start)
	if err == nil {
		t.Fatal("Up without a DHCP server returned no error")
	}
	if want := "no DHCP lease on eth0 after 2s; still trying in the background"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	if !errors.Is(err, ErrLeasePending) {
		t.Errorf("error does not wrap ErrLeasePending")
	}
	if took > 12*time.Second {
		t.Errorf("Up took %s with a 2s lease timeout", took)
	}
	if st == nil {
		t.Fatal("no State returned")
	}
	// The server appears later: the background client gets the lease.
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.13.1/24"), PoolFrom: netip.MustParseAddr("10.99.13.10"),
		Lease: 60 * time.Second, Router: netip.MustParseAddr("10.99.13.1"),
	})
	waitEvent(t, ch, dhcpclient.EventBound, 20*time.Second)
	in := inspect(t, p.Client)
	if got := in.addrs("eth0"); len(got) != 1 || got[0] != "10.99.13.10/24" {
		t.Fatalf("eth0 addresses %v after the late server", got)
	}
	if gw, _ := in.route("0.0.0.0/0"); gw != "10.99.13.1" {
		t.Fatalf("default route via %q", gw)
	}
}

func TestUpNAKRemovesAddressAndRebinds(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.14.1/24"))
	srv := dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.14.1/24"), PoolFrom: netip.MustParseAddr("10.99.14.10"),
		Lease: 4 * time.Second, Router: netip.MustParseAddr("10.99.14.1"),
	})
	st, err, ch, _ := upInPair(t, p, "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in := inspect(t, p.Client)
	srv.NakRenewals.Store(true)
	waitEvent(t, ch, dhcpclient.EventNAK, 10*time.Second)
	// OnEvent runs after the event is applied: the address is gone now,
	// until the re-DORA (which the server grants) binds it again.
	srv.NakRenewals.Store(false)
	if got := in.addrs("eth0"); len(got) != 0 {
		// The re-DORA may already have re-added it; only a stale
		// address with the NAK still recorded is wrong.
		if is, _ := st.Interface("eth0"); is.Phase == "nak" {
			t.Fatalf("after NAK eth0 still has %v", got)
		}
	}
	waitEvent(t, ch, dhcpclient.EventBound, 15*time.Second)
	if got := in.addrs("eth0"); len(got) != 1 || got[0] != "10.99.14.10/24" {
		t.Fatalf("after re-DORA eth0 has %v", got)
	}
}

func TestUpStatic(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.15.1/24"))
	st, err, _, resolv := upInPair(t, p, "10.99.15.5::10.99.15.1:255.255.255.0:dh1:eth0:off:10.99.15.53", time.Second)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	in := inspect(t, p.Client)
	if got := in.addrs("eth0"); len(got) != 1 || got[0] != "10.99.15.5/24" {
		t.Fatalf("eth0 addresses %v", got)
	}
	if gw, ok := in.route("0.0.0.0/0"); !ok || gw != "10.99.15.1" {
		t.Fatalf("default route via %q", gw)
	}
	b, _ := os.ReadFile(resolv)
	if !strings.Contains(string(b), "nameserver 10.99.15.53\n") {
		t.Fatalf("resolv.conf:\n%s", b)
	}
	is, _ := st.Interface("eth0")
	if is.Mode != "static" || is.Address.String() != "10.99.15.5/24" {
		t.Fatalf("status %+v", is)
	}
	// The address really works: a datagram from the server namespace reaches it.
	udpRoundTrip(t, p, "10.99.15.5:9999")
}

// udpRoundTrip listens on addr in the client namespace and sends to it
// from the server namespace.
func udpRoundTrip(t *testing.T, p *dhcptest.Pair, addr string) {
	t.Helper()
	var l, c net.PacketConn
	if err := nsdo.DoPath(p.Client, func() (err error) { l, err = net.ListenPacket("udp4", addr); return }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := nsdo.DoPath(p.Server, func() (err error) { c, err = net.ListenPacket("udp4", ":0"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to, _ := net.ResolveUDPAddr("udp4", addr)
	if _, err := c.WriteTo([]byte("hello"), to); err != nil {
		t.Fatal(err)
	}
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, _, err := l.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("datagram to %s: %q %v", addr, buf[:n], err)
	}
}

func TestUpOffOnlyLoopback(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.16.1/24"))
	if _, err, _, _ := upInPair(t, p, "off", time.Second); err != nil {
		t.Fatal(err)
	}
	in := inspect(t, p.Client)
	if !in.linkUp("lo") || in.linkUp("eth0") {
		t.Fatalf("ip=off: want lo up and eth0 untouched")
	}
}

func TestUpBadCmdlineFallsBackToDHCP(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.17.1/24"))
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.17.1/24"), PoolFrom: netip.MustParseAddr("10.99.17.10"), Lease: 60 * time.Second,
	})
	_, err, _, _ := upInPair(t, p, "10.99.17.5:::255.0.255.0", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "netmask") {
		t.Fatalf("want an error naming the netmask field, got %v", err)
	}
	if got := inspect(t, p.Client).addrs("eth0"); len(got) != 1 || got[0] != "10.99.17.10/24" {
		t.Fatalf("fallback DHCP: eth0 has %v", got)
	}
}

func TestUpNamedDeviceMissing(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.18.1/24"))
	_, err, _, _ := upInPair(t, p, ":::::eth7:dhcp", time.Second)
	if err == nil || !strings.Contains(err.Error(), `"eth7"`) {
		t.Fatalf("want an error naming eth7, got %v", err)
	}
}

// TestUpTwoNICsOneWithoutServer: the NIC with a server is configured, the
// error names only the other one, and the boot is not held past the timeout.
func TestUpTwoNICsOneWithoutServer(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.19.1/24"))
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.19.1/24"), PoolFrom: netip.MustParseAddr("10.99.19.10"), Lease: time.Minute,
		Router: netip.MustParseAddr("10.99.19.1"),
	})
	srvNS, cliNS := filepath.Base(p.Server), filepath.Base(p.Client)
	dhcptest.Must(t, "ip", "link", "add", "msx"+cliNS[6:], "type", "veth", "peer", "name", "msy"+cliNS[6:])
	dhcptest.Must(t, "ip", "link", "set", "msx"+cliNS[6:], "netns", srvNS, "name", "srv1")
	dhcptest.Must(t, "ip", "link", "set", "msy"+cliNS[6:], "netns", cliNS, "name", "eth1")
	dhcptest.Must(t, "ip", "-n", srvNS, "link", "set", "srv1", "up")

	st, err, _, _ := upInPair(t, p, "", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "no DHCP lease on eth1 after 2s; still trying in the background") ||
		strings.Contains(err.Error(), "eth0") {
		t.Fatalf("want an error naming eth1 only, got %v", err)
	}
	if got := inspect(t, p.Client).addrs("eth0"); len(got) != 1 || got[0] != "10.99.19.10/24" {
		t.Fatalf("eth0 has %v", got)
	}
	snap := st.Snapshot()
	if len(snap.Interfaces) != 2 || snap.Interfaces[0].Phase != "bound" || snap.Interfaces[1].Phase != "requesting" {
		t.Fatalf("snapshot %+v", snap)
	}
}

// TestUpRecoversFromPanic: a panic while handling a DHCP event is reported
// and the client restarted; the lease comes back.
func TestUpRecoversFromPanic(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.20.1/24"))
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.20.1/24"), PoolFrom: netip.MustParseAddr("10.99.20.10"), Lease: time.Minute,
	})
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bounds := make(chan struct{}, 8)
	var n int
	st, err := Up(ctx, Options{
		Logger: testLogger(t), CarrierTimeout: 5 * time.Second, LeaseTimeout: 10 * time.Second,
		ResolvConf: resolv, Netns: p.Client, DHCP: fastDHCP,
		OnEvent: func(e dhcpclient.Event) {
			if e.Kind == dhcpclient.EventBound {
				n++
				bounds <- struct{}{}
				if n == 1 {
					panic("test panic in an event handler")
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		select {
		case <-bounds:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d bound events: the client was not restarted after the panic", i)
		}
	}
	is, _ := st.Interface("eth0")
	if !strings.Contains(is.LastError, "test panic") {
		t.Errorf("the panic was not reported in the status: %+v", is)
	}
	if is.Address.String() != "10.99.20.10/24" {
		t.Errorf("address after restart: %v", is.Address)
	}
	cancel()
	st.Wait()
}

// TestUpNoCarrier: a NIC whose peer is down never gets carrier; Up says so
// within the carrier timeout, does not also wait for a lease, and leaves
// DHCP running so a cable plugged later still works.
func TestUpNoCarrier(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.21.1/24"))
	dhcptest.Must(t, "ip", "-n", filepath.Base(p.Server), "link", "set", p.ServerIf, "down")
	dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.21.1/24"), PoolFrom: netip.MustParseAddr("10.99.21.10"), Lease: time.Minute,
	})
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, on := events(t)
	start := time.Now()
	st, err := Up(ctx, Options{
		Logger: testLogger(t), CarrierTimeout: time.Second, LeaseTimeout: 30 * time.Second,
		ResolvConf: resolv, Netns: p.Client, DHCP: fastDHCP, OnEvent: on,
	})
	if err == nil || !strings.Contains(err.Error(), "no NIC has carrier after 1s (eth0)") || !errors.Is(err, ErrLeasePending) {
		t.Fatalf("want a no-carrier error that leaves DHCP pending, got %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Up took %s: it waited for a lease with no carrier", took)
	}
	// The cable is plugged in: the background client binds.
	dhcptest.Must(t, "ip", "-n", filepath.Base(p.Server), "link", "set", p.ServerIf, "up")
	waitEvent(t, ch, dhcpclient.EventBound, 30*time.Second)
	cancel()
	st.Wait()
}
