package dhcpclient

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"magestack/init/dhcpclient/dhcptest"
)

func TestLeaseFromACKTimers(t *testing.T) {
	ack := func(mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
		m, err := dhcpv4.New(append([]dhcpv4.Modifier{
			dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
			dhcpv4.WithYourIP(net.IPv4(10, 99, 1, 10)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 1, 1))),
		}, mods...)...)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		name          string
		ack           *dhcpv4.DHCPv4
		lease, t1, t2 time.Duration
		addr          string
	}{
		{"defaults from lease", ack(dhcpv4.WithLeaseTime(800), dhcpv4.WithNetmask(net.CIDRMask(24, 32))), 800 * time.Second, 400 * time.Second, 700 * time.Second, "10.99.1.10/24"},
		{"options 58 and 59", ack(dhcpv4.WithLeaseTime(800), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(100*time.Second)), dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(200*time.Second))),
			800 * time.Second, 100 * time.Second, 200 * time.Second, "10.99.1.10/24"},
		{"T2 past the lease is ignored", ack(dhcpv4.WithLeaseTime(800), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(900*time.Second))),
			800 * time.Second, 400 * time.Second, 700 * time.Second, "10.99.1.10/24"},
		{"T1 after T2 is ignored", ack(dhcpv4.WithLeaseTime(800), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(750*time.Second))),
			800 * time.Second, 400 * time.Second, 700 * time.Second, "10.99.1.10/24"},
		{"no lease time, no mask", ack(), DefaultLeaseTime, DefaultLeaseTime / 2, DefaultLeaseTime * 7 / 8, "10.99.1.10/8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := leaseFromACK("eth0", tt.ack, time.Unix(1000, 0))
			if err != nil {
				t.Fatal(err)
			}
			if l.Duration != tt.lease || l.T1 != tt.t1 || l.T2 != tt.t2 {
				t.Errorf("lease/T1/T2 = %v/%v/%v, want %v/%v/%v", l.Duration, l.T1, l.T2, tt.lease, tt.t1, tt.t2)
			}
			if l.Address.String() != tt.addr {
				t.Errorf("address %v, want %s", l.Address, tt.addr)
			}
			if !l.RenewAt().Equal(time.Unix(1000, 0).Add(tt.t1)) || !l.Expiry().Equal(time.Unix(1000, 0).Add(tt.lease)) {
				t.Errorf("timers not counted from acquisition: renew %v expiry %v", l.RenewAt(), l.Expiry())
			}
		})
	}
	if _, err := leaseFromACK("eth0", ack(dhcpv4.WithYourIP(net.IPv4zero)), time.Now()); err == nil {
		t.Error("an ACK without yiaddr was accepted")
	}
}

func TestLeaseFromACKRoutesAndDNS(t *testing.T) {
	_, dst, _ := net.ParseCIDR("10.98.0.0/16")
	_, def, _ := net.ParseCIDR("0.0.0.0/0")
	m, _ := dhcpv4.New(
		dhcpv4.WithYourIP(net.IPv4(10, 99, 1, 10)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithOption(dhcpv4.OptRouter(net.IPv4(10, 99, 1, 1))),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 99, 1, 53), net.IPv4(10, 99, 1, 54))),
		dhcpv4.WithOption(dhcpv4.OptDomainName("stack.test")),
		dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
			&dhcpv4.Route{Dest: dst, Router: net.IPv4(10, 99, 1, 254)},
			&dhcpv4.Route{Dest: def, Router: net.IPv4(10, 99, 1, 253)},
		)),
	)
	l, err := leaseFromACK("eth0", m, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{Dest: netip.MustParsePrefix("10.98.0.0/16"), Gateway: netip.MustParseAddr("10.99.1.254")},
		{Dest: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.99.1.253")},
	}
	if len(l.Routes) != 2 || l.Routes[0] != want[0] || l.Routes[1] != want[1] {
		t.Errorf("routes %v, want %v", l.Routes, want)
	}
	if l.Gateway != netip.MustParseAddr("10.99.1.1") || len(l.DNS) != 2 || l.Domain != "stack.test" {
		t.Errorf("gateway %v dns %v domain %q", l.Gateway, l.DNS, l.Domain)
	}
}

func TestRetryInterval(t *testing.T) {
	tests := []struct{ remaining, floor, want time.Duration }{
		{10 * time.Minute, time.Minute, 5 * time.Minute},  // half the remaining time
		{90 * time.Second, time.Minute, time.Minute},      // floor
		{30 * time.Second, time.Minute, 30 * time.Second}, // never past the phase end
		{0, time.Minute, 0},
		{-time.Second, time.Minute, 0},
	}
	for _, tt := range tests {
		if got := retryInterval(tt.remaining, tt.floor); got != tt.want {
			t.Errorf("retryInterval(%v, %v) = %v, want %v", tt.remaining, tt.floor, got, tt.want)
		}
	}
}

func TestJitterBounds(t *testing.T) {
	d := 4 * time.Second
	seen := map[time.Duration]bool{}
	for range 1000 {
		j := jitter(d)
		if j < 3*time.Second || j > 5*time.Second {
			t.Fatalf("jitter(%v) = %v, outside ±25%%", d, j)
		}
		seen[j] = true
	}
	if len(seen) < 100 {
		t.Errorf("jitter produced only %d distinct values", len(seen))
	}
}

// TestXIDsNeverBlock builds many messages: xids come from math/rand/v2
// (seeded by the runtime from AT_RANDOM), never from getrandom, so this
// cannot stall however early in boot it runs; they must still differ.
func TestXIDsNeverBlock(t *testing.T) {
	c := &Client{cfg: Config{ClientID: []byte{1, 2, 3}, Hostname: "dh1"}, hw: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	xids := map[dhcpv4.TransactionID]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10000 {
			xids[c.message(dhcpv4.MessageTypeDiscover).TransactionID] = true
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("building 10000 messages took over 10 s")
	}
	if len(xids) < 9990 {
		t.Errorf("only %d distinct xids in 10000", len(xids))
	}
}

func TestMessageOptions(t *testing.T) {
	c := &Client{cfg: Config{ClientID: []byte{1, 2, 0, 0, 0, 0, 1}, Hostname: "dh1"}, hw: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	m := c.message(dhcpv4.MessageTypeDiscover)
	if m.MessageType() != dhcpv4.MessageTypeDiscover || m.HostName() != "dh1" ||
		!bytes.Equal(m.Options.Get(dhcpv4.OptionClientIdentifier), c.cfg.ClientID) {
		t.Fatalf("discover lacks type/hostname/client id: %s", m.Summary())
	}
	for _, code := range []dhcpv4.OptionCode{
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName,
		dhcpv4.OptionClasslessStaticRoute, dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue,
	} {
		if !m.IsOptionRequested(code) {
			t.Errorf("option %v not requested", code)
		}
	}
	// Round trip through the wire format.
	back, err := dhcpv4.FromBytes(m.ToBytes())
	if err != nil || back.HostName() != "dh1" {
		t.Fatalf("wire round trip: %v %v", err, back)
	}
}

// --- on a real kernel, in network namespaces ---

type recorder struct{ ch chan Event }

func (r recorder) next(t *testing.T, want EventKind, within time.Duration) Event {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-r.ch:
			if e.Kind == want {
				return e
			}
			t.Logf("event %s (waiting for %s)", e.Kind, want)
		case <-deadline:
			t.Fatalf("no %s event within %s", want, within)
		}
	}
}

// addrApplier does what netconf would do, with ip(8), so the client's
// unicast renewal has a source address.
func addrApplier(t *testing.T, p *dhcptest.Pair, rec recorder) func(Event) {
	ns := p.Client[strings.LastIndex(p.Client, "/")+1:]
	return func(e Event) {
		switch e.Kind {
		case EventBound, EventRenewed, EventRebound:
			dhcptest.Run(t, "ip", "-n", ns, "addr", "replace", e.Lease.Address.String(), "dev", p.ClientIf)
		case EventExpired, EventNAK:
			if e.Lease != nil {
				dhcptest.Run(t, "ip", "-n", ns, "addr", "del", e.Lease.Address.String(), "dev", p.ClientIf)
			}
		}
		rec.ch <- e
	}
}

func testClient(t *testing.T, p *dhcptest.Pair, rec recorder) *Client {
	dhcptest.Must(t, "ip", "-n", p.Client[strings.LastIndex(p.Client, "/")+1:], "link", "set", p.ClientIf, "up")
	c, err := New(Config{
		Interface: p.ClientIf, Hostname: "dh-test", Netns: p.Client,
		ExchangeTimeout: 500 * time.Millisecond, ExchangeTries: 2,
		InitialBackoff: 200 * time.Millisecond, MaxBackoff: time.Second,
		MinRetryInterval: 300 * time.Millisecond,
		OnEvent:          addrApplier(t, p, rec),
		Logger:           testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRenewThenNAKThenRebind(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.1.1/24"))
	srv := dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.1.1/24"), PoolFrom: netip.MustParseAddr("10.99.1.10"),
		Lease: 4 * time.Second, Router: netip.MustParseAddr("10.99.1.1"),
	})
	rec := recorder{make(chan Event, 64)}
	c := testClient(t, p, rec)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()

	bound := rec.next(t, EventBound, 15*time.Second)
	if bound.Lease.Address != netip.MustParsePrefix("10.99.1.10/24") || bound.Lease.Duration != 4*time.Second {
		t.Fatalf("bound %v for %v, want 10.99.1.10/24 for 4s", bound.Lease.Address, bound.Lease.Duration)
	}
	renewed := rec.next(t, EventRenewed, 10*time.Second)
	if renewed.Lease.Address != bound.Lease.Address {
		t.Fatalf("renewal changed the address: %v -> %v", bound.Lease.Address, renewed.Lease.Address)
	}
	if !renewed.Lease.Acquired.After(bound.Lease.Acquired) {
		t.Fatalf("renewal did not move the lease forward")
	}
	// The renewal was unicast from the leased address with ciaddr set,
	// and every request carried client id and hostname.
	var sawUnicastRenew bool
	for _, s := range srv.Seen() {
		if s.Hostname != "dh-test" || len(s.ClientID) != 7 || s.ClientID[0] != 1 {
			t.Errorf("request %v without hostname/client id: %q %x", s.Type, s.Hostname, s.ClientID)
		}
		if s.Type == dhcpv4.MessageTypeRequest && s.CIAddr.Equal(net.IPv4(10, 99, 1, 10)) && s.Peer.Equal(net.IPv4(10, 99, 1, 10)) {
			sawUnicastRenew = true
		}
	}
	if !sawUnicastRenew {
		t.Errorf("no renewal from 10.99.1.10 with ciaddr set; seen %+v", srv.Seen())
	}

	srv.NakRenewals.Store(true)
	nak := rec.next(t, EventNAK, 10*time.Second)
	if nak.Lease == nil || nak.Lease.Address != bound.Lease.Address || !strings.Contains(nak.Message, "test NAK") {
		t.Fatalf("nak event %+v", nak)
	}
	again := rec.next(t, EventBound, 15*time.Second)
	if again.Lease.Address != bound.Lease.Address {
		t.Fatalf("re-DORA after NAK got %v", again.Lease.Address)
	}
	srv.NakRenewals.Store(false)
	rec.next(t, EventRenewed, 10*time.Second)
}

func TestExpiryThenServerReturns(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.2.1/24"))
	srv := dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.2.1/24"), PoolFrom: netip.MustParseAddr("10.99.2.10"),
		Lease: 4 * time.Second,
	})
	rec := recorder{make(chan Event, 64)}
	c := testClient(t, p, rec)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)

	bound := rec.next(t, EventBound, 15*time.Second)
	srv.Silent.Store(true)
	exp := rec.next(t, EventExpired, 10*time.Second)
	if exp.Lease.Address != bound.Lease.Address {
		t.Fatalf("expired %v, bound %v", exp.Lease.Address, bound.Lease.Address)
	}
	if late := time.Since(bound.Lease.Expiry()); late < 0 || late > 3*time.Second {
		t.Errorf("expiry reported %v after the lease's end, want soon after", late)
	}
	srv.Silent.Store(false)
	rec.next(t, EventBound, 15*time.Second)
}

func TestReleaseOnStop(t *testing.T) {
	p := dhcptest.NewPair(t, "eth0", netip.MustParsePrefix("10.99.3.1/24"))
	srv := dhcptest.Start(t, p.Server, p.ServerIf, dhcptest.Config{
		Subnet: netip.MustParsePrefix("10.99.3.1/24"), PoolFrom: netip.MustParseAddr("10.99.3.10"), Lease: time.Minute,
	})
	rec := recorder{make(chan Event, 64)}
	c := testClient(t, p, rec)
	c.cfg.ReleaseOnStop = true
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	rec.next(t, EventBound, 15*time.Second)
	cancel()
	<-errc
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, s := range srv.Seen() {
			if s.Type == dhcpv4.MessageTypeRelease {
				if !s.CIAddr.Equal(net.IPv4(10, 99, 3, 10)) {
					t.Fatalf("RELEASE for %v, want 10.99.3.10", s.CIAddr)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RELEASE reached the server; seen %+v", srv.Seen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FuzzLeaseFromACK: whatever a (possibly hostile) server sends, turning it
// into a lease never panics and never yields a lease that breaks timers.
func FuzzLeaseFromACK(f *testing.F) {
	_, dst, _ := net.ParseCIDR("10.98.0.0/16")
	seed, _ := dhcpv4.New(
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 99, 1, 10)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithLeaseTime(60),
		dhcpv4.WithOption(dhcpv4.OptRouter(net.IPv4(10, 99, 1, 1))),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 99, 1, 53))),
		dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(&dhcpv4.Route{Dest: dst, Router: net.IPv4(10, 99, 1, 254)})),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(10*time.Second)),
		dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, []byte{5, 220}),
	)
	f.Add(seed.ToBytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		ack, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		l, err := leaseFromACK("eth0", ack, time.Unix(0, 0))
		if err != nil {
			return
		}
		if !(0 < l.T1 && l.T1 <= l.T2 && l.T2 < l.Duration) {
			t.Fatalf("timers T1=%v T2=%v lease=%v out of order", l.T1, l.T2, l.Duration)
		}
		if !l.Address.IsValid() || !l.Address.Addr().Is4() {
			t.Fatalf("bad address %v", l.Address)
		}
	})
}
