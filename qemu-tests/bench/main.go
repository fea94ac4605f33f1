// Command bench prints magestack's boot figures (`make bench`): boot to
// network-up of the product image against a do-nothing static PID 1
// (qemu-tests/testdata/nopinit) on the same kernel and QEMU flags under TCG,
// each booted N times (median), plus wall times, PID-1 memory and sizes.
// A figure whose feature is missing prints "n/a: <reason>" instead. The
// supervision, role start, firewall and netboot figures follow, each side
// by side with its reference tool, then the failover figures against
// keepalived (failover*.go); `bench NAME` runs one group.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"magestack/firmware/netboot/netbootbench"
	"magestack/init/firewall/firewallbench"
	"magestack/init/roleenv/rolebench"
	"magestack/init/supervise/supervisebench"
	"magestack/qemu-tests/qemu"
)

// Console lines read from the product. A timeline step in networkSteps
// (init-core's names for "network configured") or an explicit
// `magestack: network up uptime_ms=` line marks network-up.
var (
	networkSteps   = []string{"network", "netconf", "net"}
	networkUpRE    = regexp.MustCompile(`magestack: network up uptime_ms=(\d+)`)
	rssRE          = regexp.MustCompile(`pid1 (?:resident memory )?rss_kib=(\d+)`)
	networkWaitFor = `magestack: (stack ready uptime_ms=(\d+)|network up|timeline (network|netconf|net) start_ms=\d+ end_ms=\d+ ok)`
)

func main() {
	runs := flag.Int("n", 3, "boots per image (the median is reported)")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on one boot (scaled by MAGESTACK_TIMEOUT_SCALE)")
	fo := failoverOptions{timeout: 10 * time.Minute}
	flag.IntVar(&fo.kills, "failover-kills", 1, "hardware losses per failover variant (each magestack one reboots a host: minutes under TCG)")
	flag.DurationVar(&fo.lossy, "failover-lossy", time.Minute, "lossy-network run per failover variant (0 skips it)")
	flag.IntVar(&fo.lossPct, "failover-loss", 20, "percent of frames dropped on each host's port in the lossy run")
	flag.BoolVar(&fo.magestack, "failover-qemu", true, "boot the magestack pair in QEMU (false: keepalived only)")
	flag.StringVar(&fo.dead3s, "failover-dead3s", "auto", "also run magestack with dead 3s: auto (when 1s shows false failovers, VIP releases or resets), yes, no")
	flag.Parse()
	if *runs < 1 || fo.kills < 1 {
		fmt.Fprintln(os.Stderr, "bench: -n and -failover-kills must be at least 1")
		os.Exit(2)
	}
	only := flag.Arg(0)
	failed := false
	for _, b := range []struct {
		name string
		run  func() error
	}{
		{"boot", func() error { return run(os.Stdout, *runs, *timeout) }},
		{"supervise", func() error {
			fmt.Println("\nsupervision: crash → running again, against s6-supervise and runit (runsv)")
			return supervisebench.Run(os.Stdout)
		}},
		{"roles", func() error {
			fmt.Println("\nrole start (namespaces, mounts, cgroup, first service exec'd), on this host")
			build, err := qemu.BuildDir()
			if err != nil {
				return err
			}
			return rolebench.Run(context.Background(), os.Stdout, filepath.Join(build, "magestack"), 20)
		}},
		{"firewall", func() error {
			fmt.Println("\nfirewall: one-batch apply against nft -f, allow-list edits, DNAT throughput")
			return firewallbench.Run(os.Stdout)
		}},
		{"netboot", func() error {
			build, err := qemu.BuildDir()
			if err != nil {
				return err
			}
			fmt.Println()
			return netbootbench.Run(os.Stdout, netbootbench.Options{Binary: filepath.Join(build, "magestack"),
				ImageDir: build, BootDir: "/usr/lib/ipxe"})
		}},
		{"failover", func() error { return runFailover(context.Background(), os.Stdout, fo) }},
		{"website", func() error { return websiteBench(os.Stdout, *runs) }},
		{"images", func() error { return imagesBench(os.Stdout) }},
		{"volumes", func() error { return volumesBench(os.Stdout) }},
	} {
		if only != "" && only != b.name {
			continue
		}
		if err := b.run(); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", b.name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// figure is one measured value or the reason it is missing.
type figure struct {
	val  float64
	unit string
	na   string
}

// notApplicable marks a figure that has no meaning for that column.
var notApplicable = figure{na: "-"}

func na(format string, args ...any) figure { return figure{na: fmt.Sprintf(format, args...)} }

func (f figure) ok() bool { return f.na == "" }

func (f figure) String() string {
	if !f.ok() {
		return "n/a: " + f.na
	}
	switch f.unit {
	case "ms":
		return fmt.Sprintf("%.0f ms", f.val)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", f.val)
	}
	return fmt.Sprintf("%.2f", f.val)
}

// bootResult is what one boot showed.
type bootResult struct {
	netUpMS  float64 // guest uptime at network-up (nopinit: at PID 1)
	pid1MS   float64 // guest uptime when PID 1 started; -1 when unknown
	netWall  time.Duration
	readyMS  float64 // magestack only; -1 when absent
	rssKiB   float64 // magestack only; -1 when absent
	netUpErr error
}

func run(w io.Writer, n int, timeout time.Duration) error {
	build, err := qemu.BuildDir()
	if err != nil {
		return err
	}
	kernel, kerr := qemu.KernelPath()
	im, _ := qemu.ImagePaths()
	work := filepath.Join(build, "bench")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}

	// The baseline: nopinit alone in an initramfs.
	nopBin := filepath.Join(work, "nopinit")
	nopImg := filepath.Join(work, "nopinit-initramfs.img")
	var nopErr error
	if nopErr = qemu.BuildStatic(qemu.NopInitPackage, nopBin); nopErr == nil {
		nopErr = qemu.WriteInitramfs(nopImg, []qemu.File{{Path: "init", Src: nopBin}})
	}

	// Identical flags for both; only the initramfs differs.
	base := func(initrd string) qemu.Options {
		o := im.Options("")
		o.Kernel, o.Initrd = kernel, initrd
		return o
	}

	var nop, ms []bootResult
	var msErr error
	switch {
	case kerr != nil:
		nopErr, msErr = kerr, kerr
	default:
		if nopErr == nil {
			nop, nopErr = boots(w, work, "nopinit", base(nopImg), n, timeout, measureNop)
		}
		if _, err := os.Stat(im.Initramfs); err != nil {
			msErr = fmt.Errorf("%s missing (run make image)", im.Initramfs)
		} else {
			ms, msErr = boots(w, work, "magestack", base(im.Initramfs), n, timeout, measureMagestack)
		}
	}

	if kernel == "" {
		kernel = "(none)"
	}
	fmt.Fprintf(w, "\nmagestack boot bench: QEMU TCG, kernel %s, %d boots each, median\n", kernel, n)
	fmt.Fprintf(w, "%-40s %-16s %-18s %-8s %s\n", "figure", "magestack", "nopinit baseline", "ratio", "target")
	// Reasons for missing figures are long: the cells refer to notes
	// printed under the table.
	var notes []string
	cell := func(f figure) string {
		if f.ok() {
			return f.String()
		}
		if f == notApplicable {
			return "-"
		}
		i := slices.Index(notes, f.na)
		if i < 0 {
			notes = append(notes, f.na)
			i = len(notes) - 1
		}
		return fmt.Sprintf("n/a [%d]", i+1)
	}
	row := func(name string, a, b figure, target string) {
		ratio := "-"
		if a.ok() && b.ok() && b.val > 0 {
			ratio = fmt.Sprintf("%.2f", a.val/b.val)
		}
		fmt.Fprintf(w, "%-40s %-16s %-18s %-8s %s\n", name, cell(a), cell(b), ratio, target)
	}

	msNet := medianOf(ms, msErr, func(r bootResult) (float64, error) { return r.netUpMS, r.netUpErr }, "ms")
	nopNet := medianOf(nop, nopErr, func(r bootResult) (float64, error) { return r.netUpMS, r.netUpErr }, "ms")
	row("boot to network-up (guest uptime)", msNet, nopNet, "ratio <= 1.3 (nopinit: PID 1 start)")
	msWall := medianOf(ms, msErr, func(r bootResult) (float64, error) { return float64(r.netWall.Milliseconds()), r.netUpErr }, "ms")
	nopWall := medianOf(nop, nopErr, func(r bootResult) (float64, error) { return float64(r.netWall.Milliseconds()), r.netUpErr }, "ms")
	pid1 := func(r bootResult) (float64, error) {
		if r.pid1MS < 0 {
			return 0, errors.New("no first timeline step")
		}
		return r.pid1MS, nil
	}
	row("PID 1 start (guest uptime)", medianOf(ms, msErr, pid1, "ms"), medianOf(nop, nopErr, pid1, "ms"), "- (kernel + initramfs unpack)")
	row("boot to network-up (wall, from exec)", msWall, nopWall, "-")
	row("stack ready (guest uptime)", medianOf(ms, msErr, func(r bootResult) (float64, error) {
		if r.readyMS < 0 {
			return 0, errors.New("no `magestack: stack ready` line")
		}
		return r.readyMS, nil
	}, "ms"), notApplicable, "-")
	row("PID-1 resident memory after ready", medianOf(ms, msErr, func(r bootResult) (float64, error) {
		if r.rssKiB < 0 {
			return 0, errors.New("no `magestack: pid1 rss_kib=` line after ready")
		}
		return r.rssKiB / 1024, nil
	}, "MiB"), notApplicable, "<= 25 MiB")
	row("binary size", fileSize(im.Binary), fileSize(nopBin), "report")
	row("initramfs size (compressed)", fileSize(im.Initramfs), fileSize(nopImg), "<= 40 MiB")
	for i, n := range notes {
		fmt.Fprintf(w, "[%d] n/a: %s\n", i+1, n)
	}
	fmt.Fprintf(w, "console logs: %s\n", work)
	return nil
}

type measure func(ctx context.Context, vm *qemu.VM, start time.Time) bootResult

// boots boots opts n times in a row (the machine has two cores: never in
// parallel) and returns each boot's result. A boot that fails to start is an
// error; a boot without the line measured is recorded in the result.
func boots(w io.Writer, work, name string, opts qemu.Options, n int, timeout time.Duration, m measure) ([]bootResult, error) {
	var res []bootResult
	for i := 1; i <= n; i++ {
		dir := filepath.Join(work, fmt.Sprintf("%s-%d", name, i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		opts.Name = name
		start := time.Now()
		vm, err := qemu.Launch(opts, dir)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), qemu.Scale(timeout))
		r := m(ctx, vm, start)
		cancel()
		vm.Kill()
		if r.netUpErr != nil {
			fmt.Fprintf(w, "%s boot %d: %v (console: %s)\n", name, i, firstLine(r.netUpErr), vm.ConsoleLog())
		} else {
			fmt.Fprintf(w, "%s boot %d: network-up %.0f ms guest, %d ms wall\n", name, i, r.netUpMS, r.netWall.Milliseconds())
		}
		res = append(res, r)
	}
	return res, nil
}

func measureNop(ctx context.Context, vm *qemu.VM, start time.Time) bootResult {
	r := bootResult{readyMS: -1, rssKiB: -1, pid1MS: -1}
	m, err := vm.ExpectContext(ctx, qemu.NopInitPattern)
	r.netWall = time.Since(start)
	if err != nil {
		r.netUpErr = err
		return r
	}
	r.netUpMS, _ = strconv.ParseFloat(m[1], 64)
	r.pid1MS = r.netUpMS
	return r
}

func measureMagestack(ctx context.Context, vm *qemu.VM, start time.Time) bootResult {
	r := bootResult{readyMS: -1, rssKiB: -1, pid1MS: -1}
	m, err := vm.ExpectContext(ctx, networkWaitFor)
	r.netWall = time.Since(start)
	if err != nil {
		r.netUpErr = err
		return r
	}
	r.netUpMS, r.netUpErr = networkUp(vm.Console())
	// The first timeline step starts as soon as PID 1 runs: what lies
	// before it is kernel and initramfs unpacking.
	if steps := qemu.ParseTimeline(vm.Console()); len(steps) > 0 {
		r.pid1MS = float64(steps[0].StartMS)
	}

	// Ready and memory are extra figures: wait for them within what is left.
	readyAt := m[2] // set when ready came first (no network line at all)
	if readyAt == "" {
		if m, err := vm.ExpectContext(ctx, qemu.ReadyPattern); err == nil {
			readyAt = m[1]
		}
	}
	if readyAt != "" {
		r.readyMS, _ = strconv.ParseFloat(readyAt, 64)
		short, cancel := context.WithTimeout(ctx, qemu.Scale(10*time.Second))
		if m, err := vm.ExpectContext(short, rssRE.String()); err == nil {
			r.rssKiB, _ = strconv.ParseFloat(m[1], 64)
		}
		cancel()
	}
	return r
}

// networkUp reads network-up from the console: the explicit line, else the
// end of the network timeline step.
func networkUp(console string) (float64, error) {
	if m := networkUpRE.FindStringSubmatch(console); m != nil {
		v, err := strconv.ParseFloat(m[1], 64)
		return v, err
	}
	steps := qemu.ParseTimeline(console)
	for _, name := range networkSteps {
		if s, ok := qemu.FindStep(steps, name); ok {
			if !s.OK {
				return 0, fmt.Errorf("timeline step %s ended in error", name)
			}
			return float64(s.EndMS), nil
		}
	}
	return 0, fmt.Errorf("no network-up line (`magestack: network up uptime_ms=` or timeline step %s)", strings.Join(networkSteps, "/"))
}

// medianOf is the median of get over the boots that have the figure; if
// none has it, the reason.
func medianOf(rs []bootResult, bootErr error, get func(bootResult) (float64, error), unit string) figure {
	if bootErr != nil {
		return na("%s", firstLine(bootErr))
	}
	var vals []float64
	var last error
	for _, r := range rs {
		v, err := get(r)
		if err != nil {
			last = err
			continue
		}
		vals = append(vals, v)
	}
	if len(vals) == 0 {
		if last == nil {
			last = errors.New("no boots")
		}
		return na("%s", firstLine(last))
	}
	return figure{val: median(vals), unit: unit}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fileSize(path string) figure {
	st, err := os.Stat(path)
	if err != nil {
		return na("%s missing", filepath.Base(path))
	}
	return figure{val: float64(st.Size()) / (1 << 20), unit: "MiB"}
}

// firstLine shortens err for a table cell: a failed console wait is told
// by its cause (kernel panic, QEMU exited, timeout), the rest by its first
// line.
func firstLine(err error) string {
	var ee *qemu.ExpectError
	if errors.As(err, &ee) {
		return "line not seen: " + ee.Err.Error()
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
