package main

// The website figure: requests per second and latency of the default PHP
// page through magestack against the same nginx + PHP-FPM run plainly.
//
// Everything runs on this host's CPU (no QEMU, whose emulation cost would
// swamp the difference being measured), in private network namespaces:
//
//	client ns  192.0.2.100 ──veth── 192.0.2.1 pub0   host ns (router, nftables)
//	                                            ms-int 172.16.0.1 ── web1, lb1 (role environments)
//
//   - plain: the web image's squashfs mounted with an overlay, the rendered
//     web1 configuration written into it, its two services (the payload's
//     own start scripts) run chrooted in the host namespace with no ruleset:
//     what "nginx + PHP-FPM on the host" means.
//   - magestack web1: web1 as a real role environment (role-init as PID 1,
//     mount/PID/net/UTS/IPC namespaces, pivot_root into the verified image,
//     reduced capabilities, seccomp, veth on the bridge) behind the stack's
//     real ruleset applied in one batch (conntrack, filter chains, rate
//     meter, DNAT on the public address), with its public rules aimed at
//     web1 instead of lb1 (publicTo) so the path differs from plain only by
//     what magestack adds.
//   - magestack fw → lb1 → web1: the stack's unmodified ruleset, DNAT to
//     lb1 (HAProxy, logging every request as configured), which forwards
//     to web1: the whole public path, with its extra proxy hop.
//   - two diagnostics that split the overhead: the plain services in a
//     network namespace of their own on the bridge (a role's network path
//     without the rest of a role), and web1 reached by its internal
//     address with no ruleset (the role without the firewall).
//
// The client is the same Go load client for every side (fixed concurrency,
// fixed duration, kept-alive connections, every request timed), at
// http://192.0.2.1/ (the diagnostics at their internal address); the sides run in turn, interleaved round by round,
// so a busy neighbour on this shared machine slows them alike.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/cgroup"
	"magestack/init/firewall"
	"magestack/init/imagestore"
	"magestack/init/nsdo"
	"magestack/init/roleenv"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
	"magestack/init/supervise"
	"magestack/qemu-tests/qemu"
	"magestack/services"
	"magestack/services/render"
)

// websiteBench is `bench website`: rounds interleaved runs of each side.
func websiteBench(w io.Writer, rounds int) error {
	build, err := qemu.BuildDir()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nwebsite: nginx + PHP-FPM plain on this host against the same image as a magestack role behind its firewall")
	err = runWebsite(context.Background(), w, websiteOptions{
		Exe: filepath.Join(build, "magestack"), ImagesDir: filepath.Join(build, "images"), Work: filepath.Join(build, "bench"),
		Rounds: max(rounds, 5), Duration: 6 * time.Second, Warmup: 2 * time.Second, Concurrency: 8,
	})
	if err != nil {
		fmt.Fprintf(w, "website: n/a: %v\n", err)
	}
	return err
}

// websiteOptions sets up one website bench.
type websiteOptions struct {
	Exe         string // magestack binary (role-init face)
	ImagesDir   string // build/images: <role>.squashfs + manifest.json
	Work        string // scratch directory (removed afterwards)
	Rounds      int
	Duration    time.Duration // one side's run in one round
	Warmup      time.Duration
	Concurrency int
}

// Addresses of the bench's private namespaces (documentation range).
const (
	benchPublicHost   = "192.0.2.1/24"
	benchPublicClient = "192.0.2.100/24"
	benchPublicIface  = "pub0"
	benchSiteWant     = "magestack default site on "
	// benchBridgedPlain is the diagnostic plain server's address on the
	// roles' bridge, far above the stack's instance addresses.
	benchBridgedPlain = "172.16.0.250/32"
)

// websiteSide is one way of serving the site.
type websiteSide struct {
	name    string
	note    string
	url     string
	ruleset *firewall.Ruleset // applied in the host namespace before the run
	runs    []latencyStats
	byRound map[int]latencyStats
	errs    []string
	log     *lockedBuffer // a plain side's services' output; nil: a role's
}

func runWebsite(ctx context.Context, w io.Writer, o websiteOptions) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (namespaces, mounts, nftables)")
	}
	if err := os.MkdirAll(o.Work, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(o.Work, "website-")
	if err != nil {
		return err
	}
	// The plain side's root has /dev and /proc bound below it: the scratch
	// directory is removed only once they are surely unmounted.
	removeTmp := true
	defer func() {
		if removeTmp {
			os.RemoveAll(tmp)
		} else {
			fmt.Fprintf(w, "website: left %s in place (a mount below it did not detach)\n", tmp)
		}
	}()

	setupCtx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	store := imagestore.New(nil, "")
	if _, err := store.Load(setupCtx, o.ImagesDir); err != nil {
		return fmt.Errorf("images in %s: %w", o.ImagesDir, err)
	}
	for _, r := range []string{"web", "lb"} {
		if store.Path(r) == "" {
			return fmt.Errorf("no verified %s image in %s (make images)", r, o.ImagesDir)
		}
	}
	imageRoot := filepath.Join(tmp, "images")
	if err := store.Publish(imageRoot, ""); err != nil {
		return err
	}

	client, host, err := websiteNetwork()
	if err != nil {
		return fmt.Errorf("bench network: %w", err)
	}
	defer client.Close()
	defer host.Close()

	stack := stackfile.Default()
	for _, r := range []string{"web", "lb"} {
		role := stack.Roles[r]
		role.Image = r
		stack.Roles[r] = role
	}
	insts, err := stack.Instances()
	if err != nil {
		return err
	}
	inst := func(name string) stackfile.Instance {
		return insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == name })]
	}
	gw, _ := stack.HostBridgeAddr(0)
	if err := roleenv.EnsureBridge(host, roleenv.DefaultBridge, netip.PrefixFrom(gw, stack.Internal.Bits())); err != nil {
		return err
	}
	secrets, err := stacksecret.New()
	if err != nil {
		return err
	}

	// The plain side first: its services are the payload's, chrooted.
	plainLog := &lockedBuffer{}
	stopPlain, err := startPlainWeb(setupCtx, filepath.Join(tmp, "plain"), store.Path("web"), stack, inst("web1"), secrets, host, plainLog)
	if stopPlain != nil {
		defer func() {
			if err := stopPlain(); err != nil {
				removeTmp = false
				fmt.Fprintf(w, "website: stopping the plain services: %v\n", err)
			}
		}()
	}
	if err != nil {
		return fmt.Errorf("plain nginx + PHP-FPM: %w", err)
	}
	// The same, in a namespace of its own on the bridge: the network path
	// of a role (veth, bridge, routing) without the rest of a role
	// environment. A diagnostic that splits the overhead.
	bridgedAddr := netip.MustParsePrefix(benchBridgedPlain)
	bridged, err := bridgedNetNS(host, roleenv.DefaultBridge, netip.PrefixFrom(bridgedAddr.Addr(), stack.Internal.Bits()), gw)
	if err != nil {
		return fmt.Errorf("bridged plain namespace: %w", err)
	}
	defer bridged.Close()
	bridgedLog := &lockedBuffer{}
	stopBridged, err := startPlainWeb(setupCtx, filepath.Join(tmp, "plain-bridged"), store.Path("web"), stack, inst("web1"), secrets, bridged, bridgedLog)
	if stopBridged != nil {
		defer func() {
			if err := stopBridged(); err != nil {
				removeTmp = false
				fmt.Fprintf(w, "website: stopping the bridged plain services: %v\n", err)
			}
		}()
	}
	if err != nil {
		return fmt.Errorf("plain nginx + PHP-FPM on the bridge: %w", err)
	}

	// The magestack side: web1 and lb1 as real role environments.
	logRoot := filepath.Join(tmp, "logs")
	opts := roleenv.Options{Exe: o.Exe, StateRoot: filepath.Join(tmp, "roles"), LogRoot: logRoot,
		VolumeRoot: filepath.Join(tmp, "volumes"), ImageRoot: imageRoot, BridgeNS: host, NoLimits: true,
		Render: render.Func(secrets)}
	limits := "no cgroup v2 on this host: roles run without cgroup limits"
	if cgroup.IsV2(cgroup.DefaultRoot) {
		opts.CgroupParent = fmt.Sprintf("magestack-bench-%d", os.Getpid())
		opts.NoLimits = false
		limits = "cgroup v2 limits from the stack"
		// Runs after the roles are stopped (deferred before them).
		defer func() {
			if g, err := cgroup.Open(cgroup.DefaultRoot, opts.CgroupParent); err == nil {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				g.Remove(rctx)
				cancel()
			}
		}()
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup := supervise.New(log, supervise.Options{})
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		sup.StopAll(sctx)
		scancel()
	}()
	for i, name := range []string{"web1", "lb1"} {
		env, err := roleenv.New(log, opts, stack, 0, inst(name))
		if err != nil {
			return err
		}
		spec := env.Unit()
		if i > 0 {
			spec.After = []string{"web1"}
		}
		if err := sup.Add(spec); err != nil {
			return err
		}
		if err := sup.Start(setupCtx, name); err != nil {
			return err
		}
	}
	if err := sup.WaitReady(setupCtx, "web1", "lb1"); err != nil {
		return fmt.Errorf("roles not ready: %w%s", err, logTails(logRoot))
	}

	// The stack's ruleset, and the same with its public DNAT aimed at web1.
	hv := firewall.HostView{PublicIfaces: []string{benchPublicIface}, InternalBridge: roleenv.DefaultBridge}
	viaLB, err := firewall.Build(stack, hv)
	if err != nil {
		return err
	}
	toWeb := publicTo(viaLB, benchPublicIface, inst("lb1").Addr, inst("web1").Addr)
	bridgeNote := "bridge netfilter on"
	if err := nsdo.Do(host, firewall.EnableBridgeFilter); err != nil {
		bridgeNote = "bridge netfilter unavailable: " + err.Error()
	}
	fw := firewall.NewInNetNS(int(host))
	defer fw.Close()

	public := "http://" + netip.MustParsePrefix(benchPublicHost).Addr().String() + "/"
	sides := []*websiteSide{
		{name: "plain nginx + PHP-FPM (chroot, no ns/fw)", url: public, ruleset: &firewall.Ruleset{}, log: plainLog},
		{name: "magestack: fw DNAT → web1 (role env)", url: public, ruleset: toWeb, note: "target: overhead <= 10%"},
		{name: "  (plain, own netns on the bridge, no fw)", url: "http://" + bridgedAddr.Addr().String() + "/", ruleset: &firewall.Ruleset{},
			note: "diagnostic: a role's network path alone", log: bridgedLog},
		{name: "  (role env web1 routed, no fw)", url: "http://" + inst("web1").Addr.String() + "/", ruleset: &firewall.Ruleset{},
			note: "diagnostic: no firewall"},
		{name: "magestack: fw → lb1 (HAProxy) → web1", url: public, ruleset: viaLB, note: "full public path, one proxy hop more"},
	}
	load := func(side *websiteSide, d time.Duration) (latencyStats, error) {
		if err := fw.Apply(ctx, side.ruleset); err != nil {
			return latencyStats{}, fmt.Errorf("apply ruleset: %w", err)
		}
		res, err := runLoad(ctx, loadSpec{URL: side.url, Concurrency: o.Concurrency, Duration: d,
			Dial: nsdo.DialContext(client), Want: benchSiteWant})
		if err != nil {
			return latencyStats{}, err
		}
		return res.stats()
	}
	// Each side's first answer, then a warm-up run not counted (PHP-FPM
	// spawns its workers, nginx and HAProxy open their upstreams).
	for _, s := range sides {
		if err := waitSite(ctx, fw, s.ruleset, s.url, client); err != nil {
			extra := logTails(logRoot)
			if s.log != nil {
				extra = "\nplain services' output:\n" + tail(s.log.String(), 2000)
			}
			return fmt.Errorf("%s: %w%s", s.name, err, extra)
		}
		if _, err := load(s, o.Warmup); err != nil {
			return fmt.Errorf("%s: warm-up: %w", s.name, err)
		}
	}
	loadStart := loadAverage()
	for r := 1; r <= o.Rounds; r++ {
		// Every other round runs the sides in reverse: a side is not
		// always the one right after another side's load.
		order := slices.Clone(sides)
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, s := range order {
			st, err := load(s, o.Duration)
			if err != nil {
				s.errs = append(s.errs, err.Error())
				fmt.Fprintf(w, "  round %d %-42s n/a: %v\n", r, s.name, err)
				continue
			}
			s.runs = append(s.runs, st)
			if s.byRound == nil {
				s.byRound = map[int]latencyStats{}
			}
			s.byRound[r] = st
			fmt.Fprintf(w, "  round %d %-42s %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  (%d requests, %d failed)\n",
				r, s.name, st.RPS, msOf(st.P50), msOf(st.P99), st.Requests, st.Failures)
			if st.FirstErr != nil {
				fmt.Fprintf(w, "          first failure: %v\n", st.FirstErr)
			}
		}
	}
	if err := fw.Apply(ctx, &firewall.Ruleset{}); err != nil {
		fmt.Fprintf(w, "  (removing the bench ruleset: %v)\n", err)
	}
	printWebsite(w, o, sides, runtime.NumCPU(), loadStart+" at the start, "+loadAverage()+" at the end", limits, bridgeNote)
	return nil
}

// publicTo is rs with its public rules (those matching traffic coming in
// on pub: the DNAT and the forward accepts, allow-list and rate limit)
// aimed at to instead of from. Every other rule is left as it is, so role
// to role traffic (lb1's health checks of web1) is filtered as the stack
// says.
func publicTo(rs *firewall.Ruleset, pub string, from, to netip.Addr) *firewall.Ruleset {
	out := &firewall.Ruleset{Sets: rs.Sets}
	for _, c := range rs.Chains {
		c.Rules = slices.Clone(c.Rules)
		for i, r := range c.Rules {
			if !slices.Contains(r.Stmts, firewall.Stmt(firewall.IfName{Name: pub})) {
				continue
			}
			stmts := slices.Clone(r.Stmts)
			for j, st := range stmts {
				switch st := st.(type) {
				case firewall.DNAT:
					if st.To == from {
						stmts[j] = firewall.DNAT{To: to}
					}
				case firewall.IPAddr:
					if st.Dst && st.Prefix == netip.PrefixFrom(from, 32) {
						stmts[j] = firewall.IPAddr{Dst: true, Prefix: netip.PrefixFrom(to, 32)}
					}
				}
			}
			c.Rules[i] = firewall.Rule{Stmts: stmts, Comment: r.Comment}
		}
		out.Chains = append(out.Chains, c)
	}
	return out
}

// printWebsite prints the medians over rounds, side by side.
func printWebsite(w io.Writer, o websiteOptions, sides []*websiteSide, cpus int, loadAvg, limits, bridgeNote string) {
	fmt.Fprintf(w, "\nwebsite: GET / (default PHP page), %d keep-alive clients, %v per run, %d rounds interleaved; median of rounds;\n"+
		"vs plain: median [min..max] of each round's ratio to plain's run in the same round; this host, %d CPUs, load average %s\n",
		o.Concurrency, o.Duration, o.Rounds, cpus, loadAvg)
	fmt.Fprintf(w, "%-44s %10s %10s %10s %9s %s\n", "path", "req/s", "p50", "p99", "failed", "vs plain")

	for i, s := range sides {
		m, ok := sideMedian(s)
		if !ok {
			reason := "no run completed"
			if len(s.errs) > 0 {
				reason = s.errs[0]
			}
			fmt.Fprintf(w, "%-44s n/a: %s\n", s.name, reason)
			continue
		}
		vs := "-"
		if i > 0 {
			rps := pairedRatios(s.byRound, sides[0].byRound, func(r latencyStats) float64 { return r.RPS })
			p99 := pairedRatios(s.byRound, sides[0].byRound, func(r latencyStats) float64 { return float64(r.P99) })
			if len(rps) > 0 {
				vs = fmt.Sprintf("throughput %+.1f%% [%+.0f..%+.0f], p99 x%.2f", 100*(median(rps)-1),
					100*(slices.Min(rps)-1), 100*(slices.Max(rps)-1), median(p99))
			}
		}
		if s.note != "" {
			vs += "  (" + s.note + ")"
		}
		fmt.Fprintf(w, "%-44s %10.0f %7.2f ms %7.2f ms %9d %s\n", s.name, m.RPS, msOf(m.P50), msOf(m.P99), m.Failures, vs)
	}
	fmt.Fprintf(w, "role environments: namespaces, pivot_root, reduced capabilities, seccomp; %s; %s\n", limits, bridgeNote)
}

// pairedRatios is f(side) / f(base) for every round both sides completed,
// in round order. Pairing by round cancels the drift of a shared machine's
// load between rounds; their spread shows what is left of it.
func pairedRatios(side, base map[int]latencyStats, f func(latencyStats) float64) []float64 {
	var v []float64
	for _, r := range slices.Sorted(maps.Keys(side)) {
		b, ok := base[r]
		if !ok || f(b) == 0 {
			continue
		}
		v = append(v, f(side[r])/f(b))
	}
	return v
}

// sideMedian is the median over a side's rounds of each figure (failures:
// the total).
func sideMedian(s *websiteSide) (latencyStats, bool) {
	if len(s.runs) == 0 {
		return latencyStats{}, false
	}
	pick := func(f func(latencyStats) float64) float64 {
		var v []float64
		for _, r := range s.runs {
			v = append(v, f(r))
		}
		return median(v)
	}
	m := latencyStats{
		RPS: pick(func(r latencyStats) float64 { return r.RPS }),
		P50: time.Duration(pick(func(r latencyStats) float64 { return float64(r.P50) })),
		P99: time.Duration(pick(func(r latencyStats) float64 { return float64(r.P99) })),
	}
	for _, r := range s.runs {
		m.Failures += r.Failures
		m.Requests += r.Requests
	}
	return m, true
}

// loadAverage is the 1-minute load average: other work on a shared machine
// is what makes these figures move between runs.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "unknown"
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// waitSite applies rs and waits (bounded) for the first good answer.
func waitSite(ctx context.Context, fw *firewall.Firewall, rs *firewall.Ruleset, url string, client netns.NsHandle) error {
	if err := fw.Apply(ctx, rs); err != nil {
		return fmt.Errorf("apply ruleset: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		res, err := runLoad(ctx, loadSpec{URL: url, Concurrency: 1, Duration: 2 * time.Second, Dial: nsdo.DialContext(client), Want: benchSiteWant})
		if err != nil {
			return err
		}
		if len(res.Latencies) > 0 {
			return nil
		}
		last = res.FirstErr
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("site never answered: %v", last)
}

// websiteNetwork makes the client and host namespaces joined by a veth,
// with forwarding on in the host.
func websiteNetwork() (client, host netns.NsHandle, err error) {
	if client, err = freshNetNS(); err != nil {
		return 0, 0, err
	}
	if host, err = freshNetNS(); err != nil {
		client.Close()
		return 0, 0, err
	}
	fail := func(e error) (netns.NsHandle, netns.NsHandle, error) {
		client.Close()
		host.Close()
		return 0, 0, e
	}
	hh, err := netlink.NewHandleAt(host, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer hh.Close()
	ch, err := netlink.NewHandleAt(client, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer ch.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: benchPublicIface}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(client))}
	if err := hh.LinkAdd(veth); err != nil {
		return fail(fmt.Errorf("veth %s: %w", benchPublicIface, err))
	}
	for _, x := range []struct {
		h          *netlink.Handle
		link, addr string
	}{{hh, benchPublicIface, benchPublicHost}, {ch, "eth0", benchPublicClient}, {hh, "lo", ""}, {ch, "lo", ""}} {
		l, err := x.h.LinkByName(x.link)
		if err != nil {
			return fail(err)
		}
		if x.addr != "" {
			a, err := netlink.ParseAddr(x.addr)
			if err != nil {
				return fail(err)
			}
			if err := x.h.AddrAdd(l, a); err != nil {
				return fail(fmt.Errorf("address %s on %s: %w", x.addr, x.link, err))
			}
		}
		if err := x.h.LinkSetUp(l); err != nil {
			return fail(err)
		}
	}
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		return fail(err)
	}
	gw := netip.MustParsePrefix(benchPublicHost).Addr()
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
		return fail(fmt.Errorf("client default route: %w", err))
	}
	if err := nsdo.Do(host, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return fail(fmt.Errorf("forwarding in the host namespace: %w", err))
	}
	return client, host, nil
}

// bridgedNetNS makes a namespace attached to bridge (in host) by a veth,
// as roleenv attaches a role: addr on its eth0, default route via gw.
func bridgedNetNS(host netns.NsHandle, bridge string, addr netip.Prefix, gw netip.Addr) (netns.NsHandle, error) {
	ns, err := freshNetNS()
	if err != nil {
		return 0, err
	}
	fail := func(e error) (netns.NsHandle, error) {
		ns.Close()
		return 0, e
	}
	hh, err := netlink.NewHandleAt(host, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer hh.Close()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer nh.Close()
	br, err := hh.LinkByName(bridge)
	if err != nil {
		return fail(err)
	}
	const hostSide = "msb-plain"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide, MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := hh.LinkAdd(veth); err != nil {
		return fail(fmt.Errorf("veth %s: %w", hostSide, err))
	}
	hl, err := hh.LinkByName(hostSide)
	if err != nil {
		return fail(err)
	}
	if err := hh.LinkSetUp(hl); err != nil {
		return fail(err)
	}
	for _, name := range []string{"lo", "eth0"} {
		l, err := nh.LinkByName(name)
		if err != nil {
			return fail(err)
		}
		if name == "eth0" {
			ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
			if err := nh.AddrAdd(l, &netlink.Addr{IPNet: ipnet}); err != nil {
				return fail(fmt.Errorf("address %s: %w", addr, err))
			}
		}
		if err := nh.LinkSetUp(l); err != nil {
			return fail(err)
		}
	}
	eth0, err := nh.LinkByName("eth0")
	if err != nil {
		return fail(err)
	}
	if err := nh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
		return fail(fmt.Errorf("default route: %w", err))
	}
	return ns, nil
}

// freshNetNS creates a network namespace without leaving this thread in it.
func freshNetNS() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		return 0, fmt.Errorf("new network namespace: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is in the wrong namespace: keep it locked so it dies
		// with its goroutine.
		runtime.LockOSThread()
		return 0, err
	}
	return ns, nil
}

// startPlainWeb runs web1's rendered payload chrooted in an overlay of the
// web image, in the host namespace: the same daemons, configuration and
// start scripts as the role, without namespaces, capability drop, seccomp
// or firewall. The returned stop kills the services and unmounts; it is
// returned with an error too (whatever was set up must be undone).
func startPlainWeb(ctx context.Context, dir, image string, stack *stackfile.Stack, inst stackfile.Instance,
	sec render.Secrets, host netns.NsHandle, out *lockedBuffer) (stop func() error, err error) {
	role := stack.Roles[inst.Role]
	p, err := services.PayloadFor(role.Image, inst.Role, role.Settings)
	if err != nil {
		return nil, err
	}
	if p, err = render.Payload(p, stack, inst, sec); err != nil {
		return nil, err
	}
	var cleanups []func() error
	stop = func() error {
		var errs []error
		for i := len(cleanups) - 1; i >= 0; i-- {
			errs = append(errs, cleanups[i]())
		}
		return errors.Join(errs...)
	}
	lower, upper, work, root := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{lower, upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return stop, err
		}
	}
	if err := imagestore.MountSquashfs(image, lower); err != nil {
		return stop, err
	}
	cleanups = append(cleanups, func() error { return unmount(lower) })
	if err := unix.Mount("overlay", root, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		return stop, fmt.Errorf("overlay: %w", err)
	}
	// A lazy unmount of root detaches /run, /dev and /proc below it too.
	cleanups = append(cleanups, func() error { return unmount(root) })
	if err := unix.Mount("run", filepath.Join(root, "run"), "tmpfs", 0, "mode=0755"); err != nil {
		return stop, fmt.Errorf("tmpfs /run: %w", err)
	}
	for _, d := range []string{"dev", "proc"} {
		if err := unix.Mount("/"+d, filepath.Join(root, d), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return stop, fmt.Errorf("bind /%s: %w", d, err)
		}
	}
	si := services.Instance{Name: inst.Name, Role: inst.Role, FQDN: inst.Name + ".i", Stack: stack.Name}
	for _, f := range p.Files {
		b, err := f.Render(si)
		if err != nil {
			return stop, err
		}
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return stop, err
		}
		if err := os.WriteFile(dst, b, os.FileMode(f.Mode)|0o400); err != nil {
			return stop, err
		}
	}
	hosts := "127.0.0.1 localhost " + inst.Name + ".i\n"
	if err := os.WriteFile(filepath.Join(root, "etc/hosts"), []byte(hosts), 0o644); err != nil {
		return stop, err
	}
	// Services in payload order (php-fpm, then nginx), each started once
	// the one before answers its TCP port, as role-init orders them.
	for _, s := range p.Services {
		c := exec.Command(s.Command[0], s.Command[1:]...)
		c.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}, s.Env...)
		c.Dir = "/"
		c.Stdout, c.Stderr = out, out
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Setpgid: true, Pdeathsig: syscall.SIGKILL}
		// A child started from a thread inside host stays in it.
		if err := nsdo.Do(host, c.Start); err != nil {
			return stop, fmt.Errorf("start %s: %w", s.Name, err)
		}
		cleanups = append(cleanups, func() error {
			syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			c.Wait()
			return nil
		})
		if s.Health != nil && s.Health.TCP != "" {
			if err := waitTCP(ctx, host, s.Health.TCP); err != nil {
				return stop, fmt.Errorf("%s: %w\n%s", s.Name, err, tail(out.String(), 2000))
			}
		}
	}
	return stop, nil
}

// unmount detaches the mount at dir (and everything below it).
func unmount(dir string) error {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// waitTCP waits until addr accepts a connection from inside ns.
func waitTCP(ctx context.Context, ns netns.NsHandle, addr string) error {
	dial := nsdo.DialContext(ns)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never accepted: %w", addr, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// logTails is the end of every role service log, for an error message.
func logTails(root string) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(root, "*", "*"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		fmt.Fprintf(&b, "\n--- %s:\n%s", l, tail(string(data), 1500))
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// lockedBuffer collects the plain services' output (written from their
// copying goroutines).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
