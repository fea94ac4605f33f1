package vpn

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"magestack/init/firewall"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

func TestFromStack(t *testing.T) {
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	secret := testSecret(t)
	s := stackfile.Default()
	s.VPN.Peers = []stackfile.VPNPeer{
		{Name: "alice", Key: k1.PublicKey().String()},
		{Name: "bob", Key: k2.PublicKey().String(), Address: netip.MustParseAddr("10.8.0.9")},
		{Name: "carol", Key: k2.PublicKey().String()},
	}
	cfg, err := FromStack(s, secret)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostAddr.String() != "10.8.0.1" || cfg.Peers[0].Addr.String() != "10.8.0.2" || cfg.Peers[1].Addr.String() != "10.8.0.9" || cfg.Peers[2].Addr.String() != "10.8.0.3" {
		t.Fatalf("addresses: host %s peers %+v", cfg.HostAddr, cfg.Peers)
	}
	// A copy of the stack secret (the peer host's) derives the same key.
	peer, err := stacksecret.Parse("peer", secret.Marshal(s.Name))
	if err != nil {
		t.Fatal(err)
	}
	cfg2, err := FromStack(s, peer)
	if err != nil || cfg2.PrivateKey != cfg.PrivateKey {
		t.Fatalf("a copy of the stack secret derived another key: %v", err)
	}
	other, _ := stacksecret.New()
	if cfg3, _ := FromStack(s, other); cfg3.PrivateKey == cfg.PrivateKey {
		t.Fatal("another stack's secret derived the same key")
	}
	if _, err := FromStack(s, stacksecret.Secret{}); err == nil || !strings.Contains(err.Error(), "no stack secret") {
		t.Fatalf("no secret: err = %v", err)
	}
	free, err := cfg.NextFreeAddr()
	if err != nil || free.String() != "10.8.0.4" {
		t.Fatalf("next free %s %v", free, err)
	}

	bad := []struct {
		mutate func(s *stackfile.Stack)
		want   string
	}{
		{func(s *stackfile.Stack) { s.VPN.Peers[0].Key = "nope" }, "vpn.peers[0].key (alice)"},
		{func(s *stackfile.Stack) { s.VPN.Peers[1].Address = netip.MustParseAddr("10.9.0.1") }, "vpn.peers[1].address (bob): 10.9.0.1 is not a host address in vpn.subnet"},
		{func(s *stackfile.Stack) { s.VPN.Peers[1].Address = netip.MustParseAddr("10.8.0.1") }, "already used by the host"},
		{func(s *stackfile.Stack) { s.VPN.Peers[2].Name = "alice" }, "vpn.peers[2].name: \"alice\" listed twice"},
		{func(s *stackfile.Stack) { s.VPN.PrivateKey = "short" }, "vpn.privatekey"},
	}
	for _, b := range bad {
		s2 := stackfile.Default()
		s2.VPN.Peers = append([]stackfile.VPNPeer(nil), s.VPN.Peers...)
		b.mutate(s2)
		if _, err := FromStack(s2, testSecret(t)); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("got %v, want error containing %q", err, b.want)
		}
	}
}

func TestClientConfig(t *testing.T) {
	s := stackfile.Default()
	cfg, err := FromStack(s, testSecret(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(s, cfg, "alice", DefaultEndpoint(s))
	if err != nil {
		t.Fatal(err)
	}
	conf := c.WGQuick()
	for _, want := range []string{"[Interface]", "PrivateKey = " + c.PrivateKey.String(), "Address = 10.8.0.2/32",
		"PublicKey = " + cfg.PublicKey().String(), "Endpoint = 10.0.2.50:51820", "AllowedIPs = 10.8.0.0/24, 172.16.0.0/24"} {
		if !strings.Contains(conf, want) {
			t.Errorf("client config lacks %q:\n%s", want, conf)
		}
	}
	snip := c.StackSnippet()
	// The snippet must be accepted by the stack file and give the same
	// address back.
	var line string
	for _, l := range strings.Split(snip, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "- {") {
			line = strings.TrimSpace(l)
		}
	}
	y := string(stackfile.DefaultYAML()) + "" // default has a vpn block; append peers to it
	y = strings.Replace(y, "  subnet: 10.8.0.0/24\n", "  subnet: 10.8.0.0/24\n  peers:\n    "+line+"\n", 1)
	s2, err := stackfile.Parse("with-peer.yaml", []byte(y))
	if err != nil {
		t.Fatalf("snippet not accepted: %v\n%s", err, y)
	}
	cfg2, err := FromStack(s2, testSecret(t))
	if err != nil || len(cfg2.Peers) != 1 || cfg2.Peers[0].Addr != c.Addr || cfg2.Peers[0].PublicKey != c.PrivateKey.PublicKey() {
		t.Fatalf("snippet round trip: %+v %v", cfg2.Peers, err)
	}
	if _, err := NewClient(s2, cfg2, "alice", "x"); err == nil {
		t.Error("a second alice was accepted")
	}
}

// --- real WireGuard (userspace wireguard-go) through the firewall ---

func newNS(t *testing.T) (string, int) {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := "msvpn-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return name, fd
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func inNetNS(fd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

func serve(t *testing.T, fd int, addr, name string) {
	var ln net.Listener
	if err := inNetNS(fd, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
}

func dial(fd int, addr string, timeout time.Duration) (string, error) {
	var got string
	err := inNetNS(fd, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		got, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(got), err
}

// wireguardGo starts a userspace WireGuard interface in a namespace (this
// machine's kernel has no WireGuard module; in QEMU the kernel module is
// used instead).
func wireguardGo(t *testing.T, ns, name string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "wireguard-go", "-f", name)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); os.Remove("/var/run/wireguard/" + name + ".sock") })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/var/run/wireguard/" + name + ".sock"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("wireguard-go %s did not create its socket", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVPNThroughFirewall: a real WireGuard client reaches acc:22 and the
// monitor portal through the host's tunnel configured by Up; the same
// client without the tunnel (plain public path) does not.
func TestVPNThroughFirewall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, bin := range []string{"wireguard-go", "wg", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is missing (packages wireguard-go, wireguard-tools, iproute2)", bin)
		}
	}
	hostNS, hostFD := newNS(t)
	clientNS, clientFD := newNS(t)
	var roles = map[string]int{}
	ipn := func(ns string, args ...string) { t.Helper(); run(t, append([]string{"ip", "-n", ns}, args...)...) }
	run(t, "ip", "netns", "exec", hostNS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "link", "add", "vpnta", "type", "veth", "peer", "name", "vpntb")
	run(t, "ip", "link", "set", "vpnta", "netns", hostNS)
	run(t, "ip", "link", "set", "vpntb", "netns", clientNS)
	ipn(hostNS, "link", "set", "vpnta", "name", "eth0")
	ipn(clientNS, "link", "set", "vpntb", "name", "eth0")
	ipn(hostNS, "addr", "add", "192.0.2.1/24", "dev", "eth0")
	ipn(clientNS, "addr", "add", "192.0.2.100/24", "dev", "eth0")
	ipn(hostNS, "link", "set", "eth0", "up")
	ipn(clientNS, "link", "set", "eth0", "up")
	ipn(hostNS, "link", "set", "lo", "up")
	ipn(clientNS, "route", "add", "default", "via", "192.0.2.1")
	ipn(hostNS, "link", "add", "ms-int", "type", "bridge")
	ipn(hostNS, "addr", "add", "172.16.0.1/24", "dev", "ms-int")
	ipn(hostNS, "link", "set", "ms-int", "up")
	for i, r := range []struct {
		name, addr string
		port       int
	}{{"acc1", "172.16.0.60", 22}, {"monitor1", "172.16.0.70", 80}, {"web1", "172.16.0.100", 80}} {
		ns, fd := newNS(t)
		roles[r.name] = fd
		a, b := fmt.Sprintf("vr%da", i), fmt.Sprintf("vr%db", i)
		run(t, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
		run(t, "ip", "link", "set", a, "netns", hostNS)
		run(t, "ip", "link", "set", b, "netns", ns)
		ipn(hostNS, "link", "set", a, "master", "ms-int", "up")
		ipn(ns, "link", "set", b, "name", "eth0")
		ipn(ns, "link", "set", "eth0", "up")
		ipn(ns, "addr", "add", r.addr+"/24", "dev", "eth0")
		ipn(ns, "route", "add", "default", "via", "172.16.0.1")
		serve(t, fd, fmt.Sprintf("%s:%d", r.addr, r.port), r.name)
	}

	clientKey, _ := wgtypes.GeneratePrivateKey()
	s := stackfile.Default()
	s.VPN.Peers = []stackfile.VPNPeer{{Name: "alice", Key: clientKey.PublicKey().String()}}
	rs, err := firewall.Build(s, firewall.HostView{PublicIfaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := firewall.NewInNetNS(hostFD).Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}

	cfg, err := FromStack(s, testSecret(t))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	cfg.Iface = "msv" + hex.EncodeToString(b) // UAPI sockets are global: unique names
	wireguardGo(t, hostNS, cfg.Iface)
	if err := Up(cfg, hostFD); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "netns", "exec", hostNS, "wg", "show", cfg.Iface, "listen-port"); strings.TrimSpace(out) != "51820" {
		t.Fatalf("listen port %q", out)
	}

	// Before the tunnel: the public path does not reach management.
	if got, err := dial(clientFD, "172.16.0.60:22", 400*time.Millisecond); err == nil {
		t.Fatalf("public client reached acc without VPN: %q", got)
	}

	client, err := NewClient(s, cfg, "alice2", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	wgc := "msc" + hex.EncodeToString(b)
	wireguardGo(t, clientNS, wgc)
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte(clientKey.String()), 0o600)
	run(t, "ip", "netns", "exec", clientNS, "wg", "set", wgc, "private-key", keyFile,
		"peer", cfg.PublicKey().String(), "endpoint", client.Endpoint, "allowed-ips", "10.8.0.0/24,172.16.0.0/24")
	ipn(clientNS, "addr", "add", cfg.Peers[0].Addr.String()+"/32", "dev", wgc)
	ipn(clientNS, "link", "set", wgc, "up")
	ipn(clientNS, "route", "add", "10.8.0.0/24", "dev", wgc)
	ipn(clientNS, "route", "add", "172.16.0.0/24", "dev", wgc)

	for _, c := range []struct{ addr, want string }{{"172.16.0.60:22", "acc1"}, {"172.16.0.70:80", "monitor1"}} {
		got, err := dial(clientFD, c.addr, 5*time.Second)
		if err != nil || got != c.want {
			t.Errorf("vpn client -> %s: %q %v, want %s", c.addr, got, err, c.want)
		}
	}
	if got, err := dial(clientFD, "172.16.0.100:80", 400*time.Millisecond); err == nil {
		t.Errorf("vpn client reached web (not a management port): %q", got)
	}
	t.Log(run(t, "ip", "netns", "exec", hostNS, "wg", "show", cfg.Iface))
}

func testSecret(t *testing.T) stacksecret.Secret {
	t.Helper()
	s, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
