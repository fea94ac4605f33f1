package vpn

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"magestack/init/firewall"
	"magestack/init/internal/guest"
	"magestack/init/stackfile"
)

// GuestEnv, set in PID 1's environment (a key=value on the kernel command
// line), makes this test binary the init of a QEMU guest on Debian's
// kernel, where the WireGuard module exists: it mounts the basics, loads
// the modules listed in /lib/modules/order (dependencies first), runs the
// tests, prints GuestResultLine and powers off. The scenario is
// qemu-tests/firewall_test.go.
const (
	GuestEnv        = "MAGESTACK_VPN_GUEST"
	GuestResultLine = "vpn-guest: tests exit code %d"
)

func TestMain(m *testing.M) {
	guest.Main(m, "vpn", GuestEnv, guestSetup)
	os.Exit(m.Run())
}

func guestSetup() error {
	if err := guest.MountAll(guest.Basic(guest.Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs"})); err != nil {
		return err
	}
	order, err := os.ReadFile("/lib/modules/order")
	if err != nil {
		return err
	}
	if err := guest.InsertModules(strings.Fields(string(order)), true); err != nil {
		return err
	}
	os.Setenv("TMPDIR", "/tmp")
	return guest.LoopbackUp()
}

// guestNS creates an unnamed network namespace without moving the caller.
func guestNS(t *testing.T) netns.NsHandle {
	t.Helper()
	c := make(chan netns.NsHandle, 1)
	e := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // left in the new namespace; discarded
		h, err := netns.New()
		if err != nil {
			e <- err
			return
		}
		c <- h
	}()
	select {
	case h := <-c:
		t.Cleanup(func() { h.Close() })
		return h
	case err := <-e:
		t.Fatalf("new netns: %v", err)
	}
	return 0
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func ipnet(cidr string) *net.IPNet {
	p := netip.MustParsePrefix(cidr)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// vethTo creates a veth pair in the root namespace and moves peer into ns
// as "eth0" with addr, default route via gw.
func vethTo(t *testing.T, root, peer string, ns netns.NsHandle, addr, gw string) {
	t.Helper()
	must(t, "veth "+root, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: root}, PeerName: peer}))
	p, err := netlink.LinkByName(peer)
	must(t, "peer", err)
	must(t, "move peer", netlink.LinkSetNsFd(p, int(ns)))
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	must(t, "handle", err)
	defer h.Close()
	l, err := h.LinkByName(peer)
	must(t, "peer in ns", err)
	must(t, "rename", h.LinkSetName(l, "eth0"))
	must(t, "addr", h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(addr)}))
	must(t, "up", h.LinkSetUp(l))
	lo, _ := h.LinkByName("lo")
	h.LinkSetUp(lo)
	must(t, "route", h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}))
	rl, err := netlink.LinkByName(root)
	must(t, "root side", err)
	must(t, "root up", netlink.LinkSetUp(rl))
}

// TestGuestKernelWireGuard: on a kernel with the WireGuard module, Up
// creates ms-vpn through netlink and configures it through wgctrl's
// generic netlink; a kernel WireGuard client in another namespace then
// reaches acc:22 through the firewall, which it cannot reach without the
// tunnel. The live firewall table also decodes back to what was applied.
func TestGuestKernelWireGuard(t *testing.T) {
	if os.Getenv(GuestEnv) == "" {
		t.Skip("runs as the init of a QEMU guest (qemu-tests/firewall_test.go)")
	}
	client, acc := guestNS(t), guestNS(t)
	must(t, "ip_forward", os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644))
	vethTo(t, "up0", "cpeer", client, "192.0.2.100/24", "192.0.2.1")
	up0, _ := netlink.LinkByName("up0")
	must(t, "up0 addr", netlink.AddrAdd(up0, &netlink.Addr{IPNet: ipnet("192.0.2.1/24")}))
	// The uplink is the link with the default route (what ApplyForStack
	// looks for).
	must(t, "default route", netlink.RouteAdd(&netlink.Route{LinkIndex: up0.Attrs().Index, Gw: net.ParseIP("192.0.2.100")}))
	must(t, "bridge", netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: firewall.DefaultBridge}}))
	br, _ := netlink.LinkByName(firewall.DefaultBridge)
	must(t, "bridge addr", netlink.AddrAdd(br, &netlink.Addr{IPNet: ipnet("172.16.0.1/24")}))
	must(t, "bridge up", netlink.LinkSetUp(br))
	vethTo(t, "vacc1", "apeer", acc, "172.16.0.60/24", "172.16.0.1")
	vacc, _ := netlink.LinkByName("vacc1")
	must(t, "enslave", netlink.LinkSetMaster(vacc, br))

	var ln net.Listener
	must(t, "listen", inNetNS(int(acc), func() (err error) { ln, err = net.Listen("tcp", "172.16.0.60:22"); return }))
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "SSH-2.0-guest")
			c.Close()
		}
	}()

	serverKey, _ := wgtypes.GeneratePrivateKey()
	clientKey, _ := wgtypes.GeneratePrivateKey()
	stack := stackfile.Default()
	stack.VPN.PrivateKey = serverKey.String()
	stack.VPN.Peers = []stackfile.VPNPeer{{Name: "tester", Key: clientKey.PublicKey().String()}}

	// PID 1's steps, as the host runs them.
	must(t, "firewall", firewall.ApplyForStack(context.Background(), stack, "dh1", nil))
	must(t, "vpn", UpForStack(context.Background(), stack, testSecret(t), nil))

	rs, err := firewall.Build(stack, firewall.HostView{PublicIfaces: []string{"up0"}})
	must(t, "build", err)
	fw := firewall.New()
	defer fw.Close()
	live, err := fw.Read(context.Background())
	must(t, "read", err)
	if got, want := firewall.Render(firewall.ZeroCounters(live)), firewall.Render(rs); got != want {
		t.Errorf("live table on Debian's kernel decodes differently:\n%s", got)
	}

	// Without the tunnel the management port is dropped.
	ch, err := netlink.NewHandleAt(client, unix.NETLINK_ROUTE)
	must(t, "client handle", err)
	defer ch.Close()
	ceth, _ := ch.LinkByName("eth0")
	must(t, "route via public", ch.RouteAdd(&netlink.Route{LinkIndex: ceth.Attrs().Index, Dst: ipnet("172.16.0.0/24"), Gw: net.ParseIP("192.0.2.1")}))
	if _, err := dialIn(client, "172.16.0.60:22", time.Second); err == nil {
		t.Fatal("client reached acc:22 without the VPN")
	}
	must(t, "drop public route", ch.RouteDel(&netlink.Route{LinkIndex: ceth.Attrs().Index, Dst: ipnet("172.16.0.0/24"), Gw: net.ParseIP("192.0.2.1")}))

	// A kernel WireGuard client.
	must(t, "client wg", ch.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0"}}))
	wg0, err := ch.LinkByName("wg0")
	must(t, "wg0", err)
	must(t, "wg0 addr", ch.AddrAdd(wg0, &netlink.Addr{IPNet: ipnet("10.8.0.2/32")}))
	must(t, "wg0 up", ch.LinkSetUp(wg0))
	for _, dst := range []string{"10.8.0.0/24", "172.16.0.0/24"} {
		must(t, "wg0 route", ch.RouteAdd(&netlink.Route{LinkIndex: wg0.Attrs().Index, Dst: ipnet(dst)}))
	}
	keepalive := time.Second
	must(t, "client config", inNetNS(int(client), func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.ConfigureDevice("wg0", wgtypes.Config{PrivateKey: &clientKey, ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
			PublicKey: serverKey.PublicKey(), Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820},
			PersistentKeepaliveInterval: &keepalive,
			AllowedIPs:                  []net.IPNet{*ipnet("10.8.0.0/24"), *ipnet("172.16.0.0/24")},
		}}})
	}))
	banner, err := dialIn(client, "172.16.0.60:22", 20*time.Second)
	if err != nil || banner != "SSH-2.0-guest" {
		t.Fatalf("acc:22 over kernel WireGuard: %q %v", banner, err)
	}
	c, err := wgctrl.New()
	must(t, "wgctrl", err)
	defer c.Close()
	dev, err := c.Device(Iface)
	must(t, "device", err)
	if dev.Type != wgtypes.LinuxKernel || len(dev.Peers) != 1 || dev.Peers[0].LastHandshakeTime.IsZero() {
		t.Errorf("ms-vpn: type %v peers %+v", dev.Type, dev.Peers)
	}
	t.Logf("ms-vpn: %s, listen %d, peer %s handshake %v ago, rx %d tx %d", dev.Type, dev.ListenPort,
		dev.Peers[0].Endpoint, time.Since(dev.Peers[0].LastHandshakeTime).Round(time.Millisecond), dev.Peers[0].ReceiveBytes, dev.Peers[0].TransmitBytes)
}

func dialIn(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var line string
	err := inNetNS(int(ns), func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(timeout))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}
