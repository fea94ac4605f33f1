package overlay_test

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
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/firewall"
	"magestack/init/overlay"
	"magestack/init/stackfile"
)

const twoHosts = `
stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 10.99.0.1/24, pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 10.99.0.2/24, pair: dh1}
internal: 172.16.0.0/24
`

func TestConfigFor(t *testing.T) {
	s, err := stackfile.Parse("pair.yaml", []byte(twoHosts))
	if err != nil {
		t.Fatal(err)
	}
	cfg, ok, err := overlay.ConfigFor(s, "dh2")
	if err != nil || !ok || cfg.Local.String() != "10.99.0.2" || len(cfg.Peers) != 1 || cfg.Peers[0].String() != "10.99.0.1" || cfg.VNI != overlay.VNIFor("pair") {
		t.Fatalf("%+v %v %v", cfg, ok, err)
	}
	if _, ok, err := overlay.ConfigFor(stackfile.Default(), "dh1"); ok || err != nil {
		t.Fatalf("single host: ok=%v err=%v", ok, err)
	}
	s.Hosts[1].Address = netip.Prefix{}
	if _, _, err := overlay.ConfigFor(s, "dh1"); err == nil || !strings.Contains(err.Error(), "hosts[1] (dh2)") {
		t.Fatalf("DHCP peer: %v", err)
	}
	if overlay.VNIFor("a") == overlay.VNIFor("b") {
		t.Error("two stacks share a VNI")
	}
}

type testNS struct {
	name string
	fd   int
}

func mkNS(t *testing.T) testNS {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	n := "msov-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", n)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	fd, err := unix.Open("/run/netns/"+n, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return testNS{n, fd}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func inNS(fd int, f func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // discarded with the goroutine
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			c <- err
			return
		}
		c <- f()
	}()
	return <-c
}

// role puts an instance namespace on host's bridge with its fixed address
// and MAC, serving port; it returns the namespace and a stop function.
func role(t *testing.T, host testNS, veth string, addr netip.Addr, gw string, port int) (testNS, func()) {
	t.Helper()
	r := mkNS(t)
	run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", veth+"p")
	run(t, "ip", "link", "set", veth, "netns", host.name)
	run(t, "ip", "link", "set", veth+"p", "netns", r.name)
	run(t, "ip", "-n", host.name, "link", "set", veth, "mtu", "1450", "master", "ms-int", "up")
	run(t, "ip", "-n", r.name, "link", "set", veth+"p", "name", "eth0")
	run(t, "ip", "-n", r.name, "link", "set", "eth0", "address", overlay.InstanceMAC(addr).String(), "mtu", "1450", "up")
	run(t, "ip", "-n", r.name, "addr", "add", addr.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", r.name, "route", "add", "default", "via", gw)
	var ln net.Listener
	if port > 0 {
		if err := inNS(r.fd, func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", addr, port)); return }); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, "hello from", addr)
				c.Close()
			}
		}()
	}
	return r, func() {
		if ln != nil {
			ln.Close()
		}
		// Deleting the host end removes the pair: the instance is off the
		// network at once (its namespace lives on until the test's fd closes).
		run(t, "ip", "-n", host.name, "link", "del", veth)
	}
}

func dial(fd int, addr string, timeout time.Duration) (string, error) {
	var line string
	err := inNS(fd, func() error {
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

// TestTwoHostsOneInternalNetwork: two hosts joined only by their uplink,
// each with its bridge, overlay port and firewall. web1 on dh1 reaches
// db1 on dh2; lb1 does not (role-to-role policy holds across hosts); db1
// then moves to dh1 with the same address and MAC, and web1 reaches it
// again with nothing on either host reconfigured.
func TestTwoHostsOneInternalNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	stack, err := stackfile.Parse("pair.yaml", []byte(twoHosts))
	if err != nil {
		t.Fatal(err)
	}
	h := []testNS{mkNS(t), mkNS(t)}
	run(t, "ip", "link", "add", "ovu0", "type", "veth", "peer", "name", "ovu1")
	for i, hn := range h {
		dev := fmt.Sprintf("ovu%d", i)
		run(t, "ip", "link", "set", dev, "netns", hn.name)
		run(t, "ip", "-n", hn.name, "link", "set", dev, "name", "eth0")
		run(t, "ip", "-n", hn.name, "addr", "add", fmt.Sprintf("10.99.0.%d/24", i+1), "dev", "eth0")
		run(t, "ip", "-n", hn.name, "link", "set", "eth0", "up")
		run(t, "ip", "-n", hn.name, "link", "set", "lo", "up")
		run(t, "ip", "-n", hn.name, "link", "add", "ms-int", "type", "bridge")
		br, _ := stack.HostBridgeAddr(i)
		run(t, "ip", "-n", hn.name, "addr", "add", br.String()+"/24", "dev", "ms-int")
		run(t, "ip", "-n", hn.name, "link", "set", "ms-int", "up")
		run(t, "ip", "netns", "exec", hn.name, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
		name := stack.Hosts[i].Name
		rs, err := firewall.Build(stack, firewall.HostView{PublicIfaces: []string{"eth0"}, HostName: name})
		if err != nil {
			t.Fatal(err)
		}
		fw := firewall.NewInNetNS(hn.fd)
		if err := fw.Apply(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
		fw.Close()
		cfg, ok, err := overlay.ConfigFor(stack, name)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		// Twice: Up is idempotent.
		for range 2 {
			if err := overlay.Up(netns.NsHandle(hn.fd), cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	web1 := netip.MustParseAddr("172.16.0.100")
	lb1 := netip.MustParseAddr("172.16.0.30")
	db1 := netip.MustParseAddr("172.16.0.40")
	web, _ := role(t, h[0], "vweb1", web1, "172.16.0.1", 0)
	lb, _ := role(t, h[0], "vlb1", lb1, "172.16.0.1", 0)
	_, stopDB := role(t, h[1], "vdb1", db1, "172.16.0.2", 3306)

	if got, err := dial(web.fd, "172.16.0.40:3306", 10*time.Second); err != nil || got != "hello from 172.16.0.40" {
		t.Fatalf("web1 (dh1) -> db1 (dh2): %q %v", got, err)
	}
	if got, err := dial(lb.fd, "172.16.0.40:3306", time.Second); err == nil {
		t.Fatalf("lb1 (dh1) reached db1 (dh2) across the overlay: %q", got)
	}

	// db1 moves to dh1: same address, same MAC. Like a real failover, the
	// old instance is off the network before the new one starts.
	stopDB()
	role(t, h[0], "vdb1", db1, "172.16.0.1", 3306)
	if got, err := dial(web.fd, "172.16.0.40:3306", 15*time.Second); err != nil || got != "hello from 172.16.0.40" {
		t.Fatalf("web1 -> db1 after db1 moved to dh1: %q %v", got, err)
	}
}
