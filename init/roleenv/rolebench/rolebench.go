// Package rolebench measures role start on this host for `make bench`: from
// the start request to the role's first service exec'd, through cgroup and
// spec preparation, clone into new namespaces, role-init's mounts and
// pivot, the veth, capability drop and seccomp. It runs as root inside a
// private network namespace (bridge and veths never touch the host's
// network) with the busybox test image and cgroups where cgroup2 exists.
package rolebench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"magestack/images/busybox"
	"magestack/init/cgroup"
	"magestack/init/roleenv"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services"
)

// Result is the distribution of role start times.
type Result struct {
	N                     int
	Median, P99, Min, Max time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("role start (first service exec'd): median %.1f ms, p99 %.1f ms (min %.1f, max %.1f, %d starts)",
		ms(r.Median), ms(r.P99), ms(r.Min), ms(r.Max), r.N)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Measure starts and stops role instance mail1 of the default stack n
// times; exe is a magestack binary (it has the role-init face).
func Measure(ctx context.Context, exe string, n int) (Result, error) {
	if os.Geteuid() != 0 {
		return Result{}, fmt.Errorf("role start bench needs root")
	}
	tmp, err := os.MkdirTemp("", "rolebench")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(tmp)
	images := filepath.Join(tmp, "images")
	if err := busybox.Build(filepath.Join(images, "busybox"), busybox.Options{}); err != nil {
		return Result{}, err
	}
	ns, err := newNS()
	if err != nil {
		return Result{}, err
	}
	defer ns.Close()
	opts := roleenv.Options{
		Exe:        exe,
		StateRoot:  filepath.Join(tmp, "roles"),
		LogRoot:    filepath.Join(tmp, "logs"),
		VolumeRoot: filepath.Join(tmp, "volumes"),
		ImageRoot:  images,
		// The default stack names no images: run the built-in one.
		DefaultImage: services.BuiltinImage,
		BridgeNS:     ns,
	}
	if root := cgroupRoot(); root != "" {
		opts.CgroupRoot = root
		opts.CgroupParent = fmt.Sprintf("magestack-bench-%d", os.Getpid())
		b, _ := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
		for _, c := range []string{"cpu", "memory", "pids"} {
			if !slices.Contains(strings.Fields(string(b)), c) {
				opts.NoLimits = true
			}
		}
		defer func() {
			if g, err := cgroup.Open(root, opts.CgroupParent); err == nil {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				g.Remove(rctx)
				cancel()
			}
		}()
	}
	stack := stackfile.Default()
	gw, _ := stack.HostBridgeAddr(0)
	if err := roleenv.EnsureBridge(ns, roleenv.DefaultBridge, netip.PrefixFrom(gw, stack.Internal.Bits())); err != nil {
		return Result{}, err
	}
	insts, err := stack.Instances()
	if err != nil {
		return Result{}, err
	}
	i := slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == "mail1" })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	env, err := roleenv.New(log, opts, stack, 0, insts[i])
	if err != nil {
		return Result{}, err
	}
	sup := supervise.New(log, supervise.Options{})
	if err := sup.Add(env.Unit()); err != nil {
		return Result{}, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sup.StopAll(sctx)
		cancel()
	}()
	var ds []time.Duration
	for k := 0; k < n; k++ {
		d, err := startOnce(ctx, sup, env)
		if err != nil {
			return Result{}, err
		}
		ds = append(ds, d)
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = sup.Stop(sctx, "mail1")
		cancel()
		if err != nil {
			return Result{}, err
		}
	}
	slices.Sort(ds)
	p99 := ds[(len(ds)*99+99)/100-1]
	return Result{N: len(ds), Median: ds[len(ds)/2], P99: p99, Min: ds[0], Max: ds[len(ds)-1]}, nil
}

// startOnce starts the role and reads, from role-init's log, the wall time
// its first service was exec'd (role-init stamps events with at_us).
func startOnce(ctx context.Context, sup *supervise.Supervisor, env *roleenv.Env) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sup.Start(ctx, "mail1"); err != nil {
		return 0, err
	}
	if err := sup.WaitReady(ctx, "mail1"); err != nil {
		return 0, fmt.Errorf("role not ready: %w", err)
	}
	l, err := sup.Logs("mail1")
	if err != nil {
		return 0, err
	}
	begin := env.Timing.Begin
	for ctx.Err() == nil {
		for _, ln := range l.Tail(1000) {
			i := strings.Index(ln.Text, "at_us=")
			if !strings.Contains(ln.Text, `msg="service started"`) || i < 0 || ln.Time.Before(begin) {
				continue
			}
			us, err := strconv.ParseInt(strings.Fields(ln.Text[i+6:])[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("role-init log: %w", err)
			}
			return time.UnixMicro(us).Sub(begin), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("no service start in role-init's log")
}

// Run prints the figure, or n/a with the reason.
func Run(ctx context.Context, w io.Writer, exe string, n int) error {
	r, err := Measure(ctx, exe, n)
	if err != nil {
		fmt.Fprintf(w, "role start: n/a: %v\n", err)
		return err
	}
	fmt.Fprintln(w, r)
	return nil
}

func newNS() (netns.NsHandle, error) {
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
		return 0, err
	}
	return ns, nil
}

// cgroupRoot finds a writable cgroup2 mount, "" when there is none.
func cgroupRoot() string {
	for _, p := range []string{cgroup.DefaultRoot, "/sys/fs/cgroup/unified"} {
		if cgroup.IsV2(p) {
			return p
		}
	}
	return ""
}
