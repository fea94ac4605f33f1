package roleinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/api"
	"magestack/init/reap"
	"magestack/init/supervise"
	"magestack/services"
)

// StopTimeout bounds the orderly stop of all services on SIGTERM; the host
// kills the role's cgroup after its own grace anyway.
const StopTimeout = 20 * time.Second

// Main is the role-init face: `magestack role-init SPEC`.
func Main(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if len(args) != 1 {
		log.Error("usage: magestack role-init SPEC")
		return 2
	}
	if err := Run(context.Background(), log, args[0]); err != nil {
		log.Error("role-init failed", "err", err)
		return 1
	}
	return 0
}

// Run sets the role up from the spec at path, runs its services until
// SIGTERM (or ctx ends) and stops them in reverse order.
func Run(ctx context.Context, log *slog.Logger, path string) error {
	notify := takeNotifyFD()
	// Handlers before any child exists: PID 1 of a namespace ignores
	// signals it has no handler for, so an early SIGTERM would be lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	if os.Getpid() != 1 {
		return errNotPID1
	}
	t0 := time.Now()
	spec, err := LoadSpec(path)
	if err != nil {
		return err
	}
	log = log.With("role", spec.Name)
	unix.Umask(0o022)

	// Host directories the role may still reach after pivot_root, held as
	// descriptors and used through /proc/self/fd (which the role's
	// processes cannot open: role-init is not dumpable).
	cgDir, err := setupCgroup(spec.Cgroup)
	if err != nil {
		return err
	}
	logDir := ""
	if spec.LogDir != "" {
		fd, err := unix.Open(spec.LogDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("log dir %s: %w", spec.LogDir, err)
		}
		logDir = "/proc/self/fd/" + strconv.Itoa(fd)
	}

	var apiLn net.Listener
	if spec.APISocket != "" {
		if apiLn, err = api.Listen(spec.APISocket); err != nil {
			return fmt.Errorf("role API: %w", err)
		}
		defer apiLn.Close()
	}

	root, err := buildRoot(spec)
	if err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	if err := unix.Sethostname([]byte(spec.Name)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := unix.Setdomainname([]byte("i")); err != nil {
		return fmt.Errorf("domainname: %w", err)
	}
	how, err := pivotInto(root)
	if err != nil {
		return err
	}
	tMounted := time.Since(t0)
	if err := waitNetwork(ctx, spec.Interface, spec.Address, spec.NetworkWait); err != nil {
		return err
	}
	tNet := time.Since(t0)
	if err := lockDown(spec.Payload.Caps, !spec.NoSeccomp); err != nil {
		return fmt.Errorf("lock down: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reaper := reap.New(log)
	go reaper.Run(ctx)
	sup := supervise.New(log, supervise.Options{LogDir: logDir, Starter: reaper})
	names, err := addServices(sup, spec.Payload.Services, cgDir)
	if err != nil {
		return err
	}
	events, unsub := sup.Subscribe(64)
	defer unsub()
	if err := sup.StartAll(ctx); err != nil {
		return fmt.Errorf("start services: %w", err)
	}
	go logEvents(log, events, t0)
	if apiLn != nil {
		srv := api.NewServer(api.Options{Units: sup, Log: log})
		go func() {
			if err := srv.ServeListener(ctx, apiLn); err != nil && ctx.Err() == nil {
				log.Error("role API stopped", "err", err)
			}
		}()
	}
	log.Info("role up", "root", how, "mounted_ms", ms(tMounted), "network_ms", ms(tNet), "services", len(names))

	ready := make(chan error, 1)
	go func() { ready <- waitAllReady(ctx, sup, log) }()
	for {
		select {
		case err := <-ready:
			if err == nil {
				notifyReady(log, notify, time.Since(t0))
			}
			ready = nil
		case sig := <-sigs:
			log.Info("stopping services", "signal", sig.String())
			cancel()
			sctx, scancel := context.WithTimeout(context.Background(), StopTimeout)
			defer scancel()
			if err := sup.StopAll(sctx); err != nil {
				return fmt.Errorf("stop services: %w", err)
			}
			return nil
		}
	}
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

// setupCgroup moves role-init out of the role's group into its "init" leaf
// (a group that hands controllers to children may hold no processes) and
// enables what controllers exist for the services' groups. It returns the
// path services' groups are created under, "" without cgroups.
func setupCgroup(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("cgroup %s: %w", dir, err)
	}
	base := "/proc/self/fd/" + strconv.Itoa(fd)
	leaf := filepath.Join(base, "init")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup %s/init: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte("0"), 0); err != nil {
		return "", fmt.Errorf("cgroup %s/init: move role-init: %w", dir, err)
	}
	avail, _ := os.ReadFile(filepath.Join(base, "cgroup.controllers"))
	for _, c := range []string{"cpu", "memory", "pids"} {
		if slices.Contains(strings.Fields(string(avail)), c) {
			if err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
				return "", fmt.Errorf("cgroup %s: enable %s for services: %w", dir, c, err)
			}
		}
	}
	return base, nil
}

// addServices registers the payload's services in order, each in its own
// cgroup below cgDir.
func addServices(sup *supervise.Supervisor, svcs []services.Service, cgDir string) ([]string, error) {
	var names []string
	for _, svc := range svcs {
		sig, err := services.Signal(svc.StopSignal)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
		spec := supervise.Spec{
			Name:       svc.Name,
			Command:    svc.Command,
			Env:        append([]string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"}, svc.Env...),
			Dir:        "/",
			After:      svc.After,
			Health:     svc.Health,
			StopSignal: sig,
			StopGrace:  svc.StopGrace,
		}
		if spec.StopGrace == 0 {
			spec.StopGrace = 5 * time.Second
		}
		if cgDir != "" {
			spec.Cgroup = filepath.Join(cgDir, svc.Name)
		}
		if err := sup.Add(spec); err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
		names = append(names, svc.Name)
	}
	return names, nil
}

// waitAllReady retries while a service is still coming up; a unit in
// failed state keeps the role not ready until someone restarts it.
func waitAllReady(ctx context.Context, sup *supervise.Supervisor, log *slog.Logger) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := sup.WaitReady(wctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("role not ready yet", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// takeNotifyFD claims fd 3 when the host passed a pipe there (s6-style
// readiness), moving it out of the way of descriptors opened later.
func takeNotifyFD() *os.File {
	var st unix.Stat_t
	if err := unix.Fstat(3, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil
	}
	fd, err := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, 10)
	if err != nil {
		return nil
	}
	unix.Close(3)
	return os.NewFile(uintptr(fd), "notify")
}

// notifyReady tells the host supervisor that every service is ready.
// Without a notify pipe (run by hand) it only logs.
func notifyReady(log *slog.Logger, f *os.File, after time.Duration) {
	log.Info("role ready", "after_ms", ms(after))
	if f == nil {
		return
	}
	defer f.Close()
	if _, err := f.Write([]byte("ready\n")); err != nil {
		log.Warn("readiness notification", "err", err)
	}
}

func logEvents(log *slog.Logger, events <-chan supervise.Event, t0 time.Time) {
	for ev := range events {
		log.Info("service "+ev.Kind, "service", ev.Unit, "msg", ev.Message, "t_ms", ms(ev.Time.Sub(t0)), "at_us", ev.Time.UnixMicro())
	}
}
