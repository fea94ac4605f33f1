package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
	"magestack/qemu-tests/qemu"
	"magestack/qemu-tests/vipprobe"
)

// lab is the failover bench's network: a "switch" namespace holding the
// bridges, and machine namespaces plugged into it by veth pairs. The
// harness's qemu.Net is bound to a testing.TB, so the bench builds its own
// with ip(8) (a fixture, like the tests') and everything it made is removed
// by close, processes first.
type lab struct {
	prefix string
	sw     *qemu.Net // Name only: Impair and DisableTxChecksum need no test
	nss    []string
	procs  []*exec.Cmd
	srvs   []*http.Server
	nveth  int
}

func newLab(name string) (*lab, error) {
	l := &lab{prefix: fmt.Sprintf("fo%d-%s", os.Getpid(), name)}
	sw := l.prefix + "-sw"
	if err := l.addNS(sw); err != nil {
		return nil, err
	}
	l.sw = &qemu.Net{Namespace: qemu.Namespace{Name: sw}}
	if err := l.addBridge("br0"); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *lab) addNS(name string) error {
	_ = exec.Command("ip", "netns", "del", name).Run()
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	l.nss = append(l.nss, name)
	return ip("-n", name, "link", "set", "lo", "up")
}

func (l *lab) addBridge(name string) error {
	if err := ip("-n", l.sw.Name, "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0"); err != nil {
		return err
	}
	if err := ip("-n", l.sw.Name, "link", "set", name, "up"); err != nil {
		return err
	}
	return l.sw.DisableTxChecksum(name)
}

// addTap adds a tap for a VM (QEMU runs in the switch namespace).
func (l *lab) addTap(bridge, name string) error {
	for _, args := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap"},
		{"link", "set", name, "master", bridge},
		{"link", "set", name, "up"},
	} {
		if err := ip(append([]string{"-n", l.sw.Name}, args...)...); err != nil {
			return err
		}
	}
	return nil
}

// addMachine creates namespace <prefix>-<name> with eth0 at cidr, plugged
// into bridge; it returns the namespace's name and the switch-side port.
func (l *lab) addMachine(bridge, name, cidr, mac string) (ns, port string, err error) {
	ns = l.prefix + "-" + name
	if err := l.addNS(ns); err != nil {
		return "", "", err
	}
	l.nveth++
	port = fmt.Sprintf("p%d-%s", l.nveth, name)
	if len(port) > 15 {
		port = port[:15]
	}
	steps := [][]string{
		{"-n", l.sw.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", l.sw.Name, "link", "set", port, "master", bridge},
		{"-n", l.sw.Name, "link", "set", port, "up"},
		{"-n", ns, "addr", "add", cidr, "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	}
	if mac != "" {
		steps = slices.Insert(steps, 3, []string{"-n", ns, "link", "set", "eth0", "address", mac})
	}
	for _, args := range steps {
		if err := ip(args...); err != nil {
			return "", "", err
		}
	}
	for _, off := range []struct{ ns, ifname string }{{l.sw.Name, port}, {ns, "eth0"}} {
		if err := (&qemu.Namespace{Name: off.ns}).DisableTxChecksum(off.ifname); err != nil {
			return "", "", err
		}
	}
	return ns, port, nil
}

// start runs cmd inside ns in its own process group, so a kill takes its
// children too.
func (l *lab) start(ns string, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	h, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer h.Close()
	// exec.Cmd started from a thread switched into ns inherits it.
	if err := nsdo.Do(h, cmd.Start); err != nil {
		return fmt.Errorf("netns %s: starting %s: %w", ns, cmd.Path, err)
	}
	l.procs = append(l.procs, cmd)
	return nil
}

// serve answers HTTP with handler on addr inside ns.
func (l *lab) serve(ns, addr string, handler http.Handler) error {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer h.Close()
	var ln net.Listener
	if err := nsdo.Do(h, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		return fmt.Errorf("netns %s: listen %s: %w", ns, addr, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	l.srvs = append(l.srvs, srv)
	go srv.Serve(ln)
	return nil
}

// killGroup ends a started process and its children at once.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
}

func (l *lab) close() {
	for _, c := range l.procs {
		killGroup(c)
	}
	for _, s := range l.srvs {
		s.Close()
	}
	for _, ns := range slices.Backward(l.nss) {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// nsHandle opens a namespace for the prober (the caller closes it).
func nsHandle(ns string) (netns.NsHandle, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return h, fmt.Errorf("netns %s: %w", ns, err)
	}
	return h, nil
}

// startVIPProbe requests http://vip/ from namespace ns every 50 ms (1 s
// timeout each) and watches ns's ARP entry for vip, for both rigs alike.
func startVIPProbe(ns, vip string) (*vipprobe.Prober, func(), error) {
	h, err := nsHandle(ns)
	if err != nil {
		return nil, nil, err
	}
	p, err := vipprobe.Start(vipprobe.Config{NS: h, URL: "http://" + vip + "/", VIP: netip.MustParseAddr(vip),
		Every: 50 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return p, func() { p.Stop(); h.Close() }, nil
}
