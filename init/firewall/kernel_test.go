package firewall

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"magestack/init/stackfile"
)

// TestRenderMatchesKernel loads each golden ruleset into a fresh network
// namespace and checks that the kernel's own listing (nft CLI) is exactly
// Render's text, and that Read decodes the live table back to the same.
func TestRenderMatchesKernel(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ns, fd := netns(t)
			rs, err := Build(loadStack(t, tc.stack), tc.host)
			if err != nil {
				t.Fatal(err)
			}
			fw := NewInNetNS(fd)
			if err := fw.Apply(context.Background(), rs); err != nil {
				t.Fatal(err)
			}
			want := Render(rs)
			if got := nftList(t, ns); got != want {
				t.Fatalf("kernel listing differs from Render:\n%s", strings.Join(lineDiff(strings.Split(want, "\n"), strings.Split(got, "\n")), "\n"))
			}
			live, err := fw.Read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := Render(live); got != want {
				t.Fatalf("decoded live table differs:\n%s", strings.Join(lineDiff(strings.Split(want, "\n"), strings.Split(got, "\n")), "\n"))
			}
			diffs, err := fw.Check(context.Background(), rs)
			if err != nil || len(diffs) != 0 {
				t.Fatalf("Check right after Apply: %v %v", diffs, err)
			}
			// Applying again replaces, never duplicates.
			if err := fw.Apply(context.Background(), rs); err != nil {
				t.Fatal(err)
			}
			if got := nftList(t, ns); got != want {
				t.Fatalf("second apply changed the table:\n%s", got)
			}
		})
	}
}

// TestLargeSetRoundTrip loads a 10,000-address allow-list: every element
// must arrive (large element lists span several netlink messages) and the
// kernel's listing must still be exactly Render's.
func TestLargeSetRoundTrip(t *testing.T) {
	ns, fd := netns(t)
	rs := defaultRuleset(t)
	for i := range 10000 {
		v := uint32(100<<24|64<<16) + uint32(2*i)
		rs.Sets[0].Elements = append(rs.Sets[0].Elements, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32))
	}
	rs.Sets[0].Elements = append(rs.Sets[0].Elements, netip.MustParsePrefix("198.18.0.0/15"))
	fw := NewInNetNS(fd)
	if err := fw.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	want := Render(rs)
	if got := nftList(t, ns); got != want {
		d := lineDiff(strings.Split(want, "\n"), strings.Split(got, "\n"))
		t.Fatalf("kernel listing differs in %d lines, first: %v", len(d), d[:min(len(d), 6)])
	}
	live, err := fw.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(live.Sets[0].Elements); n != 10001 {
		t.Fatalf("read back %d elements, want 10001", n)
	}
}

// TestApplyForStackInNamespace runs PID 1's step in a namespace with an
// uplink carrying the default route: it must pick that uplink and leave
// exactly Build's ruleset for it.
func TestApplyForStackInNamespace(t *testing.T) {
	ns, fd := netns(t)
	run(t, "ip", "-n", ns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
	run(t, "ip", "-n", ns, "link", "set", "uplink0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "192.0.2.10/24", "dev", "uplink0")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", "192.0.2.1")
	run(t, "ip", "-n", ns, "link", "set", "uplink0p", "up")
	_, statErr := os.Stat(DesiredPath)
	if statErr == nil {
		t.Skipf("%s exists: this machine runs a magestack firewall; not overwriting its record", DesiredPath)
	}
	t.Cleanup(func() { os.Remove(DesiredPath) })
	err := inNetNS(fd, func() error {
		return ApplyForStack(context.Background(), stackfile.Default(), "dh1", nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Build(stackfile.Default(), HostView{PublicIfaces: []string{"uplink0"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, ns); got != Render(want) {
		t.Fatalf("ApplyForStack left:\n%s\nwant:\n%s", got, Render(want))
	}
	// The record `firewall check` compares against.
	saved, err := os.ReadFile(DesiredPath)
	if err != nil || string(saved) != Render(want) {
		t.Fatalf("desired record %s: %v\n%s", DesiredPath, err, saved)
	}
	diffs, err := NewInNetNS(fd).CheckText(context.Background(), string(saved))
	if err != nil || len(diffs) != 0 {
		t.Fatalf("CheckText: %v %v", diffs, err)
	}
	if err := NewInNetNS(fd).UpdateAllow(context.Background(), []netip.Prefix{netip.MustParsePrefix("192.0.2.99/32")}, nil); err != nil {
		t.Fatal(err)
	}
	if diffs, _ := NewInNetNS(fd).CheckText(context.Background(), string(saved)); len(diffs) == 0 {
		t.Fatal("CheckText missed an allow-list entry added by hand")
	}
}

// TestBadConfigAppliesNothing: ApplyForStack with a stack the firewall
// rejects returns the field-naming error and leaves the running table as
// it was.
func TestBadConfigAppliesNothing(t *testing.T) {
	ns, fd := netns(t)
	run(t, "ip", "-n", ns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
	run(t, "ip", "-n", ns, "link", "set", "uplink0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "192.0.2.10/24", "dev", "uplink0")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", "192.0.2.1")
	good, err := Build(stackfile.Default(), HostView{PublicIfaces: []string{"uplink0"}})
	if err != nil {
		t.Fatal(err)
	}
	fw := NewInNetNS(fd)
	defer fw.Close()
	if err := fw.Apply(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	before := nftList(t, ns)
	bad := stackfile.Default()
	bad.VPN.Subnet = netip.MustParsePrefix("172.16.0.0/16")
	err = inNetNS(fd, func() error { return ApplyForStack(context.Background(), bad, "dh1", nil) })
	if err == nil || !strings.Contains(err.Error(), "vpn.subnet: 172.16.0.0/16 overlaps internal") {
		t.Fatalf("error %v, want it to name vpn.subnet", err)
	}
	if after := nftList(t, ns); after != before {
		t.Fatalf("a rejected config changed the table:\n%s", after)
	}
}
