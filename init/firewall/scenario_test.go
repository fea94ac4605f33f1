package firewall

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/stackfile"
)

// inNetNS runs f on a thread switched into the namespace at fd. The thread
// is never switched back: it stays locked and dies with the goroutine.
// Sockets created in f keep the namespace after f returns.
func inNetNS(fd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// serve listens on addr inside a namespace and greets every connection
// with name, so a client can tell who answered (e.g. after DNAT).
func serve(t *testing.T, fd int, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(fd, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatalf("listen %s for %s: %v", addr, name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", name)
			c.Close()
		}
	}()
}

// dial connects from a namespace and returns the greeting, or an error
// when the connection is refused or dropped within timeout.
func dial(fd int, addr string, timeout time.Duration) (string, error) {
	var greeting string
	err := inNetNS(fd, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		greeting, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(greeting), err
}

type lab struct {
	t                       *testing.T
	host, public, vpn       int // namespace fds
	hostNS, publicNS, vpnNS string
	roles                   map[string]int    // instance name → namespace fd
	roleNS                  map[string]string // instance name → namespace name
	fw                      *Firewall
	rs                      *Ruleset
}

func ipns(t *testing.T, ns string, args ...string) {
	t.Helper()
	run(t, append([]string{"ip", "-n", ns}, args...)...)
}

// veth links namespace a (name an) to namespace b (name bn).
func veth(t *testing.T, a, an, b, bn string) {
	t.Helper()
	tmp := fmt.Sprintf("tmp%d", time.Now().UnixNano()%1000000)
	run(t, "ip", "link", "add", tmp+"a", "type", "veth", "peer", "name", tmp+"b")
	run(t, "ip", "link", "set", tmp+"a", "netns", a)
	run(t, "ip", "link", "set", tmp+"b", "netns", b)
	ipns(t, a, "link", "set", tmp+"a", "name", an)
	ipns(t, b, "link", "set", tmp+"b", "name", bn)
	ipns(t, a, "link", "set", an, "up")
	ipns(t, b, "link", "set", bn, "up")
}

const (
	hostPublic   = "192.0.2.1"
	publicClient = "192.0.2.100"
	hostVPN      = "10.8.0.1"
	vpnClient    = "10.8.0.2"
	apiPort      = 7701
)

// newLab builds the default stack's network in namespaces: a host with the
// ruleset, a public client on its uplink, a VPN client on ms-vpn (the
// firewall sees only the source address, so a veth stands in for
// WireGuard) and one namespace per role instance on the ms-int bridge,
// each serving its role's ports.
func newLab(t *testing.T, tweak ...func(*stackfile.Stack)) *lab {
	return newLabView(t, HostView{PublicIfaces: []string{"eth0"}, APIPort: apiPort}, tweak...)
}

// newLabView is newLab with the host's view of itself spelled out (its
// name in the stack, cluster ports, pair links).
func newLabView(t *testing.T, view HostView, tweak ...func(*stackfile.Stack)) *lab {
	l := &lab{t: t, roles: map[string]int{}, roleNS: map[string]string{}}
	l.hostNS, l.host = netns(t)
	l.publicNS, l.public = netns(t)
	l.vpnNS, l.vpn = netns(t)
	h := l.hostNS
	run(t, "ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "netns", "exec", h, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	ipns(t, h, "link", "set", "lo", "up")
	veth(t, h, "eth0", l.publicNS, "eth0")
	ipns(t, h, "addr", "add", hostPublic+"/24", "dev", "eth0")
	ipns(t, l.publicNS, "addr", "add", publicClient+"/24", "dev", "eth0")
	ipns(t, l.publicNS, "route", "add", "default", "via", hostPublic)
	veth(t, h, "ms-vpn", l.vpnNS, "wg0")
	ipns(t, h, "addr", "add", hostVPN+"/24", "dev", "ms-vpn")
	ipns(t, l.vpnNS, "addr", "add", vpnClient+"/24", "dev", "wg0")
	ipns(t, l.vpnNS, "route", "add", "172.16.0.0/24", "via", hostVPN)
	ipns(t, h, "link", "add", "ms-int", "type", "bridge")
	ipns(t, h, "addr", "add", "172.16.0.1/24", "dev", "ms-int")
	ipns(t, h, "link", "set", "ms-int", "up")

	stack := stackfile.Default()
	for _, f := range tweak {
		f(stack)
	}
	insts, err := stack.Instances()
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string][]int{"lb": {80, 443, 8404}, "web": {80, 22}, "db": {3306, 6379, 11211},
		"mail": {25}, "acc": {22}, "monitor": {80}, "fw": {22}}
	for _, in := range insts {
		ns, fd := netns(t)
		l.roles[in.Name] = fd
		l.roleNS[in.Name] = ns
		veth(t, h, "v"+in.Name, ns, "eth0")
		ipns(t, h, "link", "set", "v"+in.Name, "master", "ms-int")
		ipns(t, ns, "addr", "add", in.Addr.String()+"/24", "dev", "eth0")
		ipns(t, ns, "route", "add", "default", "via", "172.16.0.1")
		for _, p := range ports[in.Role] {
			serve(t, fd, fmt.Sprintf("%s:%d", in.Addr, p), in.Name)
		}
	}
	// The host's own services: the API and an sshd stand-in, on every
	// address; only the VPN may reach the API, nobody the sshd.
	serve(t, l.host, fmt.Sprintf(":%d", apiPort), "host-api")
	serve(t, l.host, ":22", "host-ssh")
	// The public client also runs a service, to prove role egress.
	serve(t, l.public, publicClient+":8080", "internet")

	l.rs, err = Build(stack, view)
	if err != nil {
		t.Fatal(err)
	}
	l.fw = NewInNetNS(l.host)
	if err := l.fw.Apply(context.Background(), l.rs); err != nil {
		t.Fatal(err)
	}
	return l
}

const (
	reachTimeout = 3 * time.Second
	// A dropped SYN never answers; anything that passes the firewall on a
	// veth answers in well under this.
	blockTimeout = 400 * time.Millisecond
)

func (l *lab) mustReach(from int, fromName, addr, want string) {
	l.t.Helper()
	got, err := dial(from, addr, reachTimeout)
	if err != nil {
		l.t.Errorf("%s -> %s: %v, want answer from %s", fromName, addr, err, want)
		return
	}
	if got != want {
		l.t.Errorf("%s -> %s answered by %q, want %q", fromName, addr, got, want)
	}
}

func (l *lab) mustNotReach(from int, fromName, addr string) {
	l.t.Helper()
	if got, err := dial(from, addr, blockTimeout); err == nil {
		l.t.Errorf("%s -> %s reached %q, want blocked", fromName, addr, got)
	}
}

func TestNamespaceScenario(t *testing.T) {
	l := newLab(t)
	r := l.roles
	pub := hostPublic

	t.Run("public reaches only the website", func(t *testing.T) {
		l.t = t
		l.mustReach(l.public, "public", pub+":80", "lb1")
		l.mustReach(l.public, "public", pub+":443", "lb1")
		l.mustNotReach(l.public, "public", pub+":22")
		l.mustNotReach(l.public, "public", fmt.Sprintf("%s:%d", pub, apiPort))
		l.mustNotReach(l.public, "public", "172.16.0.60:22")   // acc
		l.mustNotReach(l.public, "public", "172.16.0.70:80")   // monitor
		l.mustNotReach(l.public, "public", "172.16.0.30:8404") // lb stats
	})
	t.Run("vpn reaches management only", func(t *testing.T) {
		l.t = t
		l.mustReach(l.vpn, "vpn", "172.16.0.60:22", "acc1")
		l.mustReach(l.vpn, "vpn", "172.16.0.70:80", "monitor1")
		l.mustReach(l.vpn, "vpn", "172.16.0.40:3306", "db1")
		l.mustReach(l.vpn, "vpn", "172.16.0.30:8404", "lb1")
		l.mustReach(l.vpn, "vpn", fmt.Sprintf("%s:%d", hostVPN, apiPort), "host-api")
		l.mustNotReach(l.vpn, "vpn", "172.16.0.100:80")  // web
		l.mustNotReach(l.vpn, "vpn", "172.16.0.40:6379") // db, not a management port
		l.mustNotReach(l.vpn, "vpn", hostVPN+":22")
	})
	t.Run("role to role", func(t *testing.T) {
		l.t = t
		l.mustReach(r["web1"], "web1", "172.16.0.40:3306", "db1")
		l.mustReach(r["lb1"], "lb1", "172.16.0.100:80", "web1")
		l.mustReach(r["acc1"], "acc1", "172.16.0.100:22", "web1")
		l.mustReach(r["db1"], "db1", "172.16.0.50:25", "mail1")
		l.mustNotReach(r["lb1"], "lb1", "172.16.0.40:3306")
		l.mustNotReach(r["web1"], "web1", "172.16.0.60:22")
		l.mustNotReach(r["web1"], "web1", "172.16.0.30:8404")
		l.mustNotReach(r["mail1"], "mail1", "172.16.0.40:3306")
	})
	t.Run("roles cannot reach the host", func(t *testing.T) {
		l.t = t
		for _, name := range []string{"web1", "acc1", "monitor1"} {
			l.mustNotReach(r[name], name, fmt.Sprintf("172.16.0.1:%d", apiPort))
			l.mustNotReach(r[name], name, fmt.Sprintf("%s:%d", pub, apiPort))
			l.mustNotReach(r[name], name, "172.16.0.1:22")
		}
	})
	t.Run("roles reach the internet masqueraded", func(t *testing.T) {
		l.t = t
		l.mustReach(r["web1"], "web1", publicClient+":8080", "internet")
	})
	t.Run("wireguard port counted", func(t *testing.T) {
		l.t = t
		err := inNetNS(l.public, func() error {
			for _, port := range []int{51820, 51821} {
				c, err := net.Dial("udp", net.JoinHostPort(pub, fmt.Sprint(port)))
				if err != nil {
					return err
				}
				c.Write([]byte("handshake?"))
				c.Close()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		live, err := l.fw.Read(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range live.Chains {
			for _, rl := range c.Rules {
				if rl.Comment == "wireguard" {
					if cnt := counterOf(rl); cnt.Packets != 1 {
						t.Errorf("wireguard rule counted %d packets, want 1 (51820 only)", cnt.Packets)
					}
					return
				}
			}
		}
		t.Error("no wireguard rule in the live table")
	})
	// Counters moved, rules did not: Check still reports no drift.
	diffs, err := l.fw.Check(context.Background(), l.rs)
	if err != nil || len(diffs) != 0 {
		t.Fatalf("check after traffic: %v %v", diffs, err)
	}
}

func counterOf(r Rule) Counter {
	for _, s := range r.Stmts {
		if c, ok := s.(Counter); ok {
			return c
		}
	}
	return Counter{}
}

// TestPublicPortScan dials every TCP port of the host's public address
// from the public client: exactly 80 and 443 may answer.
func TestPublicPortScan(t *testing.T) {
	if testing.Short() {
		t.Skip("full 65535-port scan skipped in -short mode")
	}
	l := newLab(t)
	// A dropped SYN costs the full timeout, an answered one microseconds
	// on a veth; 80/443 are re-dialed with a long timeout below, so a slow
	// machine cannot turn them into a false "closed".
	const workers = 512
	const timeout = 150 * time.Millisecond
	portc := make(chan int)
	var mu sync.Mutex
	var open []int
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := unix.Setns(l.public, unix.CLONE_NEWNET); err != nil {
				t.Error(err)
				for range portc {
				}
				return
			}
			for p := range portc {
				c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", hostPublic, p), timeout)
				if err == nil {
					c.Close()
					mu.Lock()
					open = append(open, p)
					mu.Unlock()
				}
			}
		}()
	}
	start := time.Now()
	for p := 1; p <= 65535; p++ {
		portc <- p
	}
	close(portc)
	wg.Wait()
	for _, p := range []int{80, 443} {
		if !slices.Contains(open, p) {
			if _, err := dial(l.public, fmt.Sprintf("%s:%d", hostPublic, p), reachTimeout); err == nil {
				open = append(open, p)
			}
		}
	}
	slices.Sort(open)
	t.Logf("scanned 65535 ports in %v; open: %v", time.Since(start).Round(time.Millisecond), open)
	if !slices.Equal(open, []int{80, 443}) {
		t.Fatalf("open ports %v, want exactly [80 443]", open)
	}
}

// TestPublicRateLimit: a public client opening new connections faster than
// public.ratelimit allows sees some dropped; once its address is in the
// allow-list (edited in place), none are.
func TestPublicRateLimit(t *testing.T) {
	l := newLab(t, func(s *stackfile.Stack) { s.Public.RateLimit = 2 })
	const attempts = 20
	try := func(timeout time.Duration) (ok int) {
		for range attempts {
			if got, err := dial(l.public, hostPublic+":80", timeout); err == nil && got == "lb1" {
				ok++
			}
		}
		return ok
	}
	// 20 attempts within a few seconds at 2/s with a burst of 2: several
	// must be dropped whatever the machine's speed.
	if ok := try(300 * time.Millisecond); ok == attempts {
		t.Fatalf("all %d rapid connections passed a 2/s per-source limit", attempts)
	} else {
		t.Logf("rate-limited: %d of %d connections passed", ok, attempts)
	}
	if err := l.fw.UpdateAllow(context.Background(), []netip.Prefix{netip.MustParsePrefix(publicClient + "/32")}, nil); err != nil {
		t.Fatal(err)
	}
	if ok := try(reachTimeout); ok != attempts {
		t.Fatalf("allow-listed client: %d of %d connections passed", ok, attempts)
	}
}
