package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespace is a named network namespace the test created. Processes and
// functions can run inside it; the test's own process stays outside.
type Namespace struct {
	Name string
	t    testing.TB
}

// Net is a test network: a namespace holding bridge BridgeName, onto which
// VM taps and client namespaces are plugged. Create it before the VMs that
// use it so that, at test end, the VMs stop before it is torn down.
type Net struct {
	Namespace
	mu      sync.Mutex
	nveth   int
	clients []*Namespace
	loss    map[string]int // Impair: interface -> percent dropped
}

// BridgeName is the bridge inside every Net.
const BridgeName = "br0"

var netSeq struct {
	sync.Mutex
	n int
}

// NewNet creates namespace "ms-<name>-<pid>-<n>" with an up bridge br0 whose
// TX checksum offload is off (iPXE and other simple DHCP clients drop the
// partially checksummed UDP a local server would otherwise send). It is
// deleted, with every tap and client namespace, when the test ends.
func NewNet(t testing.TB, name string) *Net {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("test network: the ip command (iproute2) is missing")
	}
	netSeq.Lock()
	netSeq.n++
	seq := netSeq.n
	netSeq.Unlock()
	n := &Net{Namespace: Namespace{Name: fmt.Sprintf("ms-%s-%d-%d", name, os.Getpid(), seq), t: t}}
	if err := createNamespace(n.Name); err != nil {
		t.Fatalf("test network %s: %v", name, err)
	}
	t.Cleanup(n.close)
	n.mustIP("link", "set", "lo", "up")
	n.mustIP("link", "add", BridgeName, "type", "bridge", "forward_delay", "0", "stp_state", "0")
	n.mustIP("link", "set", BridgeName, "up")
	if err := n.DisableTxChecksum(BridgeName); err != nil {
		t.Fatalf("test network %s: %v", n.Name, err)
	}
	return n
}

func createNamespace(name string) error {
	// A leftover from a killed earlier run with the same pid would make
	// `ip netns add` fail; the name is ours alone.
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func (n *Net) close() {
	n.mu.Lock()
	clients := n.clients
	n.mu.Unlock()
	for _, c := range clients {
		c.delete()
	}
	n.delete()
}

func (ns *Namespace) delete() {
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		ns.t.Logf("removing netns %s: %v: %s", ns.Name, err, bytes.TrimSpace(out))
	}
}

// ip runs `ip -n <ns> args...`.
func (ns *Namespace) ip(args ...string) error {
	full := append([]string{"-n", ns.Name}, args...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (ns *Namespace) mustIP(args ...string) {
	ns.t.Helper()
	if err := ns.ip(args...); err != nil {
		ns.t.Fatal(err)
	}
}

// AddAddr puts cidr (e.g. "192.0.2.1/24") on ifname inside the namespace.
func (ns *Namespace) AddAddr(ifname, cidr string) {
	ns.t.Helper()
	ns.mustIP("addr", "add", cidr, "dev", ifname)
}

// NetNS is the namespace name to put in Options.NetNS.
func (ns *Namespace) NetNS() string { return ns.Name }

// Run runs a command inside the namespace and returns its combined output.
func (ns *Namespace) Run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startInNetNS(ns.Name, cmd); err != nil {
		return "", fmt.Errorf("netns %s: %s: %w", ns.Name, name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("netns %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// Start starts a long-running cmd (a DHCP server, a prober) inside the
// namespace; it is killed at test end if still running.
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := startInNetNS(ns.Name, cmd); err != nil {
		return fmt.Errorf("netns %s: starting %s: %w", ns.Name, cmd.Path, err)
	}
	ns.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return nil
}

// Do runs fn on an OS thread switched into the namespace (sockets fn opens
// stay in it). Goroutines fn starts do not inherit the namespace.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", ns.Name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- errors.Join(fnErr, fmt.Errorf("restoring netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Link is what the namespace's kernel says about one interface.
type Link struct {
	Name      string
	OperState string // "up", "down", "lower-layer-down", ...
	Carrier   bool   // IFF_LOWER_UP: a peer (QEMU, the veth's other end) is attached
	Master    string // bridge it is plugged into
}

// Link reads ifname's state through netlink inside the namespace.
func (ns *Namespace) Link(ifname string) (Link, error) {
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		return Link{}, fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return Link{}, fmt.Errorf("netns %s: netlink: %w", ns.Name, err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(ifname)
	if err != nil {
		return Link{}, fmt.Errorf("netns %s: link %s: %w", ns.Name, ifname, err)
	}
	a := l.Attrs()
	res := Link{Name: ifname, OperState: a.OperState.String(), Carrier: a.RawFlags&unix.IFF_LOWER_UP != 0}
	if a.MasterIndex > 0 {
		if m, err := nh.LinkByIndex(a.MasterIndex); err == nil {
			res.Master = m.Attrs().Name
		}
	}
	return res, nil
}

// WaitCarrier waits up to timeout (scaled) until ifname has carrier == want.
func (ns *Namespace) WaitCarrier(ifname string, want bool, timeout time.Duration) (Link, error) {
	deadline := time.Now().Add(Scale(timeout))
	for {
		l, err := ns.Link(ifname)
		if err == nil && l.Carrier == want {
			return l, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return l, err
			}
			return l, fmt.Errorf("netns %s: %s carrier=%v after %v (operstate %s)", ns.Name, ifname, l.Carrier, Scale(timeout), l.OperState)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// AddBridge adds another bridge to the namespace (e.g. a pair link next to
// the public LAN), up, with TX checksum offload off. VMs whose NICs sit on
// several bridges need them in one namespace: QEMU runs in just one.
func (n *Net) AddBridge(name string) string {
	n.t.Helper()
	n.mustIP("link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0")
	n.mustIP("link", "set", name, "up")
	if err := n.DisableTxChecksum(name); err != nil {
		n.t.Fatal(err)
	}
	return name
}

// AddTap creates a persistent tap named name on br0, up, for a VM started
// with Options.NetNS = net.NetNS(). It has carrier once QEMU opens it.
func (n *Net) AddTap(name string) string {
	n.t.Helper()
	return n.AddTapTo(BridgeName, name)
}

// AddTapTo is AddTap on another bridge of the namespace.
func (n *Net) AddTapTo(bridge, name string) string {
	n.t.Helper()
	n.mustIP("tuntap", "add", "dev", name, "mode", "tap")
	n.mustIP("link", "set", name, "master", bridge)
	n.mustIP("link", "set", name, "up")
	return name
}

// SetUp sets ifname administratively up or down: a cable cut on the host
// side (the VM's NIC keeps its own link state; see VM.SetLink for that).
func (ns *Namespace) SetUp(ifname string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ns.ip("link", "set", ifname, state)
}

// AddClient creates a namespace "<net>-<name>" with interface eth0 at cidr
// ("" for none), linked by a veth pair to br0: a machine on the test network
// (a public client, a DHCP server, a witness). Its TX checksum offload is off.
func (n *Net) AddClient(name, cidr string) *Namespace {
	n.t.Helper()
	return n.AddClientTo(BridgeName, name, cidr)
}

// AddClientTo is AddClient on another bridge of the namespace.
func (n *Net) AddClientTo(bridge, name, cidr string) *Namespace {
	n.t.Helper()
	n.mu.Lock()
	n.nveth++
	host := fmt.Sprintf("veth%d", n.nveth)
	n.mu.Unlock()
	c := &Namespace{Name: n.Name + "-" + name, t: n.t}
	if err := createNamespace(c.Name); err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	n.clients = append(n.clients, c)
	n.mu.Unlock()
	n.mustIP("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	n.mustIP("link", "set", host, "master", bridge)
	n.mustIP("link", "set", host, "up")
	c.mustIP("link", "set", "lo", "up")
	if cidr != "" {
		c.mustIP("addr", "add", cidr, "dev", "eth0")
	}
	c.mustIP("link", "set", "eth0", "up")
	for _, off := range []struct {
		ns     *Namespace
		ifname string
	}{{&n.Namespace, host}, {c, "eth0"}} {
		if err := off.ns.DisableTxChecksum(off.ifname); err != nil {
			n.t.Fatal(err)
		}
	}
	return c
}

// ethtool ABI (linux/ethtool.h), absent from x/sys.
const (
	ethtoolGTXCSUM = 0x00000016
	ethtoolSTXCSUM = 0x00000017
)

type ethtoolValue struct {
	cmd  uint32
	data uint32
}

type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

// DisableTxChecksum turns TX checksum offload off on ifname, so packets
// leave with complete checksums (what `ethtool -K IF tx off` does).
func (ns *Namespace) DisableTxChecksum(ifname string) error {
	_, err := ns.ethtoolValue(ifname, ethtoolSTXCSUM, 0)
	if err != nil {
		return fmt.Errorf("tx checksum off %s: %w", ifname, err)
	}
	return nil
}

// TxChecksum reports whether TX checksum offload is on for ifname.
func (ns *Namespace) TxChecksum(ifname string) (bool, error) {
	v, err := ns.ethtoolValue(ifname, ethtoolGTXCSUM, 0)
	if err != nil {
		return false, fmt.Errorf("tx checksum of %s: %w", ifname, err)
	}
	return v != 0, nil
}

// ethtoolValue runs one SIOCETHTOOL command taking a struct ethtool_value.
func (ns *Namespace) ethtoolValue(ifname string, cmd, data uint32) (uint32, error) {
	var out uint32
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		val := &ethtoolValue{cmd: cmd, data: data}
		var req ifreqPtr
		copy(req.name[:unix.IFNAMSIZ-1], ifname)
		req.data = uintptr(unsafe.Pointer(val))
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req)))
		runtime.KeepAlive(val)
		if errno != 0 {
			return errno
		}
		out = val.data
		return nil
	})
	return out, err
}

// Impair drops lossPercent (0-100) of the frames the bridges forward from or
// to ifname, at random: a lossy cable. The host kernel has no netem, so this
// is an nftables bridge rule (test fixture, nft CLI); 0 removes the
// impairment. Calls replace the previous setting for ifname.
func (n *Net) Impair(ifname string, lossPercent int) error {
	if lossPercent < 0 || lossPercent > 100 {
		return fmt.Errorf("impair %s: loss %d%% outside 0-100", ifname, lossPercent)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.loss == nil {
		n.loss = map[string]int{}
	}
	prev, had := n.loss[ifname]
	if lossPercent == 0 {
		delete(n.loss, ifname)
	} else {
		n.loss[ifname] = lossPercent
	}
	var rules strings.Builder
	for name, pct := range n.loss {
		// numgen yields 0..99; "< pct" drops pct percent.
		cond := fmt.Sprintf("numgen random mod 100 < %d ", pct)
		if pct == 100 {
			cond = ""
		}
		fmt.Fprintf(&rules, "    iifname %q %sdrop\n", name, cond)
		fmt.Fprintf(&rules, "    oifname %q %sdrop\n", name, cond)
	}
	script := "table bridge ms_impair\ndelete table bridge ms_impair\n" +
		"table bridge ms_impair {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n" +
		rules.String() + "  }\n}\n"
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := startInNetNS(n.Name, cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		if had {
			n.loss[ifname] = prev
		} else {
			delete(n.loss, ifname)
		}
		return fmt.Errorf("impair %s: nft: %w: %s", ifname, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
