package qemutests

import (
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/dhcpclient/dhcptest"
	"magestack/qemu-tests/qemu"
)

// Console wording these scenarios rely on: init/dhcpclient and
// init/netconf log these messages verbatim (klog prints the message as is).
const (
	boundPattern   = `dhcp: bound eth0 (10\.99\.\d+\.\d+)/24 lease=(\S+)`
	renewedPattern = `dhcp: renewed eth0 (10\.99\.\d+\.\d+) lease=(\S+)`
	noLeaseMessage = `no DHCP lease on eth0 after 10s; still trying in the background`
)

const vmMAC = "52:54:00:99:00:01"

// dhcpNet is a test network with the VM's tap and a namespace "dhcpsrv"
// at .1 of subnet, where a DHCP server can run.
type dhcpNet struct {
	net    *qemu.Net
	srv    *qemu.Namespace
	tap    string
	subnet netip.Prefix
}

func newDHCPNet(t *testing.T, name, serverCIDR string) *dhcpNet {
	t.Helper()
	n := qemu.NewNet(t, name)
	d := &dhcpNet{net: n, subnet: netip.MustParsePrefix(serverCIDR)}
	d.srv = n.AddClient("dhcpsrv", serverCIDR)
	d.tap = n.AddTap("tap-" + name)
	return d
}

// startServer runs insomniacslk/dhcp's server4 in the server namespace,
// handing out short leases so a renewal happens during the test.
func (d *dhcpNet) startServer(t *testing.T, lease time.Duration) *dhcptest.Server {
	t.Helper()
	pool := d.subnet.Addr()
	for range 99 {
		pool = pool.Next()
	}
	return dhcptest.Start(t, "/run/netns/"+d.srv.Name, "eth0", dhcptest.Config{
		Subnet: d.subnet, PoolFrom: pool, Lease: lease,
		Router: d.subnet.Addr(), DNS: []netip.Addr{d.subnet.Addr()}, Domain: "stack.test",
	})
}

func (d *dhcpNet) boot(t *testing.T, appendArgs string) *qemu.VM {
	t.Helper()
	im := qemu.RequireImage(t)
	opts := im.Options(appendArgs)
	opts.Name = "net"
	opts.NetNS = d.net.NetNS()
	opts.NICs = []qemu.NIC{{Tap: d.tap, MAC: vmMAC, ROM: "none"}}
	vm := qemu.Start(t, opts)
	t.Cleanup(func() {
		var lines []string
		for _, l := range strings.Split(vm.Console(), "\n") {
			if strings.Contains(l, "dhcp:") || strings.Contains(l, "net:") || strings.Contains(l, "stack ready") {
				lines = append(lines, l)
			}
		}
		t.Logf("network lines on the console:\n%s", strings.Join(lines, "\n"))
	})
	return vm
}

// probe sends a datagram to addr from the server namespace, which makes
// its kernel resolve addr's MAC.
func (d *dhcpNet) probe(addr string) {
	d.srv.Do(func() error {
		c, err := net.Dial("udp4", addr+":9")
		if err == nil {
			c.Write([]byte("probe"))
			c.Close()
		}
		return nil
	})
}

// answersARP checks from the server namespace that the guest owns addr on
// the wire: a datagram to it makes the kernel resolve its MAC.
func (d *dhcpNet) answersARP(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(30 * time.Second))
	for {
		d.probe(addr)
		time.Sleep(500 * time.Millisecond)
		out, _ := d.srv.Run("ip", "neigh", "show", addr, "dev", "eth0")
		if strings.Contains(strings.ToLower(out), vmMAC) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not answered by the VM (%s) on the test network; neighbour table: %q", addr, vmMAC, out)
		}
	}
}

// TestNetworkDHCPLeaseAndRenewal: the guest gets a lease from a DHCP
// server on the test bridge, applies it, and renews it (same address) at T1.
func TestNetworkDHCPLeaseAndRenewal(t *testing.T) {
	qemu.Require(t)
	d := newDHCPNet(t, "dhcp", "10.99.50.1/24")
	srv := d.startServer(t, 20*time.Second)
	vm := d.boot(t, "")

	m, err := vm.Expect(4*time.Minute, boundPattern)
	if err != nil {
		t.Fatal(err)
	}
	addr, lease := m[1], m[2]
	if lease != "20s" {
		t.Errorf("bound with lease=%s, the server grants 20s", lease)
	}
	got, ok := srv.Lease(mustMAC(t, vmMAC))
	if !ok || got.String() != addr {
		t.Fatalf("console says %s, the server leased %v to %s", addr, got, vmMAC)
	}
	// The lease is on the wire: the VM answers for it.
	d.answersARP(t, addr)

	// T1 is 10 s after the ACK; under TCG allow generously for slowness.
	m, err = vm.Expect(2*time.Minute, renewedPattern)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != addr {
		t.Fatalf("renewal moved the address from %s to %s", addr, m[1])
	}
	// A second renewal proves the lease keeps being maintained.
	if _, err := vm.Expect(2*time.Minute, `dhcp: renewed eth0 `+regexp.QuoteMeta(addr)+` `); err != nil {
		t.Fatal(err)
	}
	var renewals int
	for _, s := range srv.Seen() {
		if s.CIAddr.String() == addr {
			renewals++
			if s.Peer.String() != addr {
				t.Errorf("renewal came from %v, want unicast from %s", s.Peer, addr)
			}
		}
	}
	if renewals < 2 {
		t.Errorf("server saw %d renewal requests from %s, want at least 2", renewals, addr)
	}
}

// TestNetworkStaticIP: ip= with a static address is applied as given and
// no DHCP is attempted.
func TestNetworkStaticIP(t *testing.T) {
	qemu.Require(t)
	d := newDHCPNet(t, "static", "10.99.51.1/24")
	srv := d.startServer(t, time.Minute) // present, and must stay unused
	vm := d.boot(t, "ip=10.99.51.5::10.99.51.1:255.255.255.0::eth0:off:10.99.51.1")

	if _, err := vm.Expect(4*time.Minute, `net: static eth0 10\.99\.51\.5/24 gateway=10\.99\.51\.1`); err != nil {
		t.Fatal(err)
	}
	d.answersARP(t, "10.99.51.5")
	if err := vm.ExpectNot(5*time.Second, `dhcp: `); err != nil {
		t.Error(err)
	}
	if seen := srv.Seen(); len(seen) != 0 {
		t.Errorf("static ip= but the DHCP server saw %d requests", len(seen))
	}
}

// TestNetworkNoDHCPServer: with nobody answering, the boot goes on with a
// clear message and reaches stack ready; DHCP keeps trying and binds once
// a server appears.
func TestNetworkNoDHCPServer(t *testing.T) {
	qemu.Require(t)
	d := newDHCPNet(t, "nodhcp", "10.99.52.1/24")
	vm := d.boot(t, "")

	if _, err := vm.Expect(4*time.Minute, regexp.QuoteMeta(noLeaseMessage)); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatalf("boot did not continue to stack ready without DHCP: %v", err)
	}
	// The background client is still trying: a server that appears now
	// is found without a reboot.
	d.startServer(t, time.Minute)
	m, err := vm.Expect(3*time.Minute, boundPattern)
	if err != nil {
		t.Fatalf("no lease after the server appeared: %v", err)
	}
	d.answersARP(t, m[1])
}

// TestNetworkLeaseExpiry: the server stops answering; the guest tries to
// renew, then rebinds by broadcast, then drops the address when the lease
// ends, and binds again once the server is back.
func TestNetworkLeaseExpiry(t *testing.T) {
	qemu.Require(t)
	d := newDHCPNet(t, "expiry", "10.99.53.1/24")
	srv := d.startServer(t, 20*time.Second)
	vm := d.boot(t, "")

	m, err := vm.Expect(4*time.Minute, boundPattern)
	if err != nil {
		t.Fatal(err)
	}
	addr := m[1]
	srv.Silent.Store(true)
	for _, pat := range []string{
		`dhcp: renewal of ` + regexp.QuoteMeta(addr) + ` on eth0 failed`,
		`dhcp: rebinding of ` + regexp.QuoteMeta(addr) + ` on eth0 failed`,
		`dhcp: lease for ` + regexp.QuoteMeta(addr) + `/24 on eth0 expired`,
		`net: removed ` + regexp.QuoteMeta(addr) + `/24 from eth0 \(lease expired\)`,
	} {
		if _, err := vm.Expect(2*time.Minute, pat); err != nil {
			t.Fatal(err)
		}
	}
	// The address is really gone: the VM no longer answers ARP for it.
	d.noARPAnswer(t, addr)
	srv.Silent.Store(false)
	if _, err := vm.Expect(2*time.Minute, `dhcp: bound eth0 `+regexp.QuoteMeta(addr)+`/24`); err != nil {
		t.Fatal(err)
	}
	d.answersARP(t, addr)
}

// noARPAnswer checks from the server namespace that nobody answers ARP
// for addr any more. It waits for a positive signal, the server kernel's
// neighbour entry for addr reaching FAILED (its ARP requests went out and
// none was answered), rather than for the absence of the VM's MAC after a
// fixed sleep, which a probe that never left would also show; it then
// watches a little longer for a late answer from a slow guest, which
// would still update the entry.
func (d *dhcpNet) noARPAnswer(t *testing.T, addr string) {
	t.Helper()
	d.srv.Run("ip", "neigh", "flush", "dev", "eth0")
	show := func() string {
		out, _ := d.srv.Run("ip", "neigh", "show", addr, "dev", "eth0")
		return strings.ToLower(strings.TrimSpace(out))
	}
	deadline := time.Now().Add(qemu.Scale(30 * time.Second))
	var out string
	var failedAt time.Time
	for lastProbe := (time.Time{}); ; time.Sleep(200 * time.Millisecond) {
		out = show()
		if strings.Contains(out, vmMAC) {
			t.Fatalf("the VM still answers ARP for %s: %q", addr, out)
		}
		switch {
		case strings.Contains(out, "failed") && failedAt.IsZero():
			failedAt = time.Now()
		case !failedAt.IsZero() && time.Since(failedAt) > qemu.Scale(3*time.Second):
			t.Logf("ARP for %s went unanswered: %q", addr, out)
			return
		case time.Now().After(deadline):
			t.Fatalf("no ARP resolution of %s ever failed within %v (entry %q): the probe did not show the address gone", addr, qemu.Scale(30*time.Second), out)
		}
		// A new datagram restarts resolution of a FAILED entry: probe
		// only while none is under way.
		if out == "" && time.Since(lastProbe) > 5*time.Second {
			d.probe(addr)
			lastProbe = time.Now()
		}
	}
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}
