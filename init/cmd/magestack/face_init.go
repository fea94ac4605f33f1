package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/api"
	"magestack/init/cmdline"
	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/klog"
	"magestack/init/kmod"
	"magestack/init/mounts"
	"magestack/init/netconf"
	"magestack/init/pid1"
	"magestack/init/reap"
	"magestack/init/reconcile"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
	"magestack/init/supervise"
	"magestack/init/sysctl"
	"magestack/init/timeline"
)

// bootEnv is what PID 1's boot steps share. A step reads what earlier steps
// produced through its accessors; shutdown stops what steps started via
// Shutdown.OnShutdown (reverse order of registration).
type bootEnv struct {
	ctx      context.Context // lives as long as PID 1
	log      *slog.Logger
	klog     *klog.Handler
	cmdline  *cmdline.Cmdline
	timeline *timeline.Timeline
	reaper   *reap.Reaper
	shutdown *pid1.Shutdown

	powerButton sync.Once

	mu           sync.Mutex
	modules      *kmod.Loader
	hostname     string
	hostnameFrom string
	stack        *stackfile.Stack
	revision     configsource.Revision
	network      *netconf.State

	// Set by the later steps (boot_*.go): the control API, PID 1's
	// supervisor of role instances, and the cluster member.
	api     *api.Server
	sup     *supervise.Supervisor
	cluster *clusterMember
	// imageRoot is where verified role images were published ("" until
	// the images step found a MAGESTACK-IMAGES disk: built-in images only).
	imageRoot string
	// maintenanceDir keeps the sites' maintenance switches; "" is
	// /var/lib/magestack/maintenance (tests point elsewhere).
	maintenanceDir string
	// running is the reconciler's stack in force (set by the reconcile
	// step).
	running func() *stackfile.Stack
	// secret derives the stack's passwords, certificate and keys (set by
	// the secrets step; the zero Secret before).
	secret       stacksecret.Secret
	secretSource stacksecret.Source
	// vols are the role volumes on the data disk (nil without one; see
	// volumes()).
	vols *hostVolumes
}

// Stack is the stack in force: the revision the reconciler runs once the
// reconcile step wired it, before that the loaded stack file (nil before
// the config step succeeded). Operator commands must see sites and
// instances a live revision added.
func (b *bootEnv) Stack() *stackfile.Stack {
	b.mu.Lock()
	running, st := b.running, b.stack
	b.mu.Unlock()
	if running != nil {
		if s := running(); s != nil {
			return s
		}
	}
	return st
}

// Network is the live network state (nil before the network step).
func (b *bootEnv) Network() *netconf.State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.network
}

// Hostname is the name the hostname step set.
func (b *bootEnv) Hostname() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hostname
}

// TimelineSnapshot is the boot timeline for the status API
// (api.Options.Timeline) and `magestack boot`.
func (b *bootEnv) TimelineSnapshot() any { return b.timeline.Snapshot() }

// Modules is the module loader (nil before the kmod step).
func (b *bootEnv) Modules() *kmod.Loader {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.modules
}

// Boot steps after the stack config load come from other files of this
// package, each registering its steps from an init function:
//
//	func init() { registerBootSteps(orderFirewall, "firewall", firewallBootSteps) }
//	func firewallBootSteps(b *bootEnv) []pid1.Step { ... }
//
// They run in the order below (the contract's: firewall apply, internal
// bridge and roles, cluster), whatever the file names. A step's Run reads
// b.Stack(), b.Network(), b.Hostname(), b.Revision(); it starts children only
// through b.reaper.Start (see init/reap) and registers its stop with
// b.shutdown.OnShutdown(name, grace, stop), so shutdown stops things in
// reverse order. The ready line is printed once every step, these included,
// has succeeded, so a roles step returns only once every role is healthy.
// The API server's step passes b.TimelineSnapshot as api.Options.Timeline.
const (
	orderAPI      = 10 // control API socket (status, boot timeline)
	orderFirewall = 20 // nftables policy, one batch
	orderRoles    = 30 // internal bridge + role environments under supervise
	orderCluster  = 40 // pair peer, witness, failover
)

type bootStepProvider struct {
	order int
	name  string
	steps func(b *bootEnv) []pid1.Step
}

// bootStepProviders is filled by init functions only (before main runs) and
// read-only afterwards.
var bootStepProviders []bootStepProvider

// registerBootSteps adds steps run after the stack config load; call it
// from an init function.
func registerBootSteps(order int, name string, steps func(b *bootEnv) []pid1.Step) {
	bootStepProviders = append(bootStepProviders, bootStepProvider{order, name, steps})
}

// laterSteps assembles the registered steps in their order.
func laterSteps(b *bootEnv) []pid1.Step {
	providers := append([]bootStepProvider(nil), bootStepProviders...)
	sort.SliceStable(providers, func(i, j int) bool { return providers[i].order < providers[j].order })
	var steps []pid1.Step
	for _, p := range providers {
		steps = append(steps, p.steps(b)...)
	}
	return steps
}

// initMain is PID 1. It never returns: when boot is over or broken it
// sleeps, with the console still logging, until a signal, the power button
// or the API shuts the machine down.
func initMain(args []string) int {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "magestack init: must run as PID 1 (it mounts, loads modules and kills every process at shutdown)")
		return 2
	}
	level := new(slog.LevelVar) // raised to debug by magestack.loglevel=debug
	h := klog.New(klog.Options{Console: os.Stderr, Level: level})
	log := slog.New(h)
	b := &bootEnv{ctx: context.Background(), log: log, klog: h}
	b.shutdown = &pid1.Shutdown{
		Log:     log,
		Console: h.Console,
		Unmount: func() error { return mounts.UnmountAll(log, "/") },
	}
	// Before anything can start a child.
	pid1.HandleSignals(log, b.shutdownNow)
	defer func() {
		if p := recover(); p != nil {
			log.Error("init: recovered panic; PID 1 keeps running", "panic", fmt.Sprint(p))
		}
		pid1.SleepForever()
	}()
	b.reaper = reap.New(log)
	pid1.Go(log, "reaper", func() {
		for {
			b.reaper.Run(b.ctx)
			time.Sleep(time.Second)
		}
	})

	// /proc first, quietly, for the command line; the mounts step redoes
	// it idempotently and reports.
	_ = mounts.Mount{Source: "proc", Target: "/proc", FSType: "proc"}.Apply("/")
	if c, err := cmdline.Read(); err == nil {
		b.cmdline = c
	} else {
		log.Error("cannot read the kernel command line; using defaults", "err", err)
		b.cmdline = cmdline.Parse("")
	}
	if v := b.cmdline.Value("magestack.loglevel"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			log.Warn("ignoring magestack.loglevel", "value", v, "err", err)
		}
	}
	b.timeline = timeline.New(klog.UptimeMS, h.Console)

	steps := bootSteps(b)
	if b.cmdline.Has("magestack.test.core_only") {
		// PID 1's own scenarios (qemu-tests/init_test.go) stop after the
		// config load: the ready line then means "every step of this
		// boot succeeded", independent of the role images.
		log.Warn("test hook: core boot steps only (magestack.test.core_only)")
	} else {
		steps = append(steps, laterSteps(b)...)
	}
	steps = withTestHooks(b, steps)
	runner := &pid1.Runner{Log: log, Timeline: b.timeline}
	done := runner.Run(b.ctx, steps)
	if d, ok := testDuration(b, "test.poweroff_after"); ok {
		log.Info("test hook: powering off", "after", d)
		time.AfterFunc(d, func() {
			pid1.Go(log, "poweroff hook", func() { b.shutdownNow(pid1.Poweroff, "test hook magestack.test.poweroff_after") })
		})
	}
	if sig, d, ok := testSignal(b); ok {
		log.Info("test hook: signalling PID 1", "signal", unix.SignalName(sig), "after", d)
		time.AfterFunc(d, func() { _ = unix.Kill(os.Getpid(), sig) })
	}
	pid1.Go(log, "ready line", func() {
		res := <-done
		if b.shutdown.Started() {
			return // going down: not ready, whatever the steps did
		}
		if len(res.Failed) > 0 {
			h.Console(fmt.Sprintf("magestack: boot incomplete: steps gave up: %s", strings.Join(res.Failed, " ")))
			return
		}
		h.Console(fmt.Sprintf("magestack: stack ready uptime_ms=%d", klog.UptimeMS()))
		log.Info("pid1 resident memory", "rss_kib", residentKiB())
	})
	pid1.SleepForever()
	return 0
}

func (b *bootEnv) shutdownNow(a pid1.Action, reason string) {
	if err := b.shutdown.Do(a, reason); err != nil {
		b.log.Error("shutdown did not complete; PID 1 keeps running", "action", a.String(), "err", err)
	}
}

// bootSteps are PID 1's own steps up to the stack config load.
func bootSteps(b *bootEnv) []pid1.Step {
	return []pid1.Step{
		{Name: "mounts", Critical: true, Run: b.mountStep, Timeout: 30 * time.Second},
		{Name: "klog", Run: b.klogStep, Timeout: 10 * time.Second},
		{Name: "kmod", Critical: true, Run: b.kmodStep, Timeout: 3 * time.Minute},
		{Name: "disk", Run: b.diskStep, Timeout: 2 * time.Minute, Retry: pid1.Retry{Initial: 2 * time.Second, Max: time.Minute}},
		{Name: "hostname", Run: b.hostnameStep, Timeout: 10 * time.Second},
		{Name: "network", Run: b.networkStep, Timeout: 2 * time.Minute, Retry: pid1.Retry{Initial: 2 * time.Second, Max: time.Minute}},
		{Name: "config", Critical: true, Run: b.configStep, Timeout: time.Minute, Retry: pid1.Retry{Initial: time.Second, Max: time.Minute}},
	}
}

func (b *bootEnv) mountStep(ctx context.Context) error {
	err := mounts.Apply(b.log, "/", mounts.Default())
	fixStdio(b.log)
	if ctl, rerr := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); rerr == nil {
		b.log.Info("cgroup2 controllers for children", "enabled", strings.TrimSpace(string(ctl)))
	}
	if err != nil {
		return fmt.Errorf("mount boot filesystems: %w", err)
	}
	// Before any child exists (once /proc is there): no role process may
	// start from a user namespace or read kernel addresses.
	if err := sysctl.Apply("/proc/sys", sysctl.Hardening); err != nil {
		b.log.Error("kernel settings not applied", "err", err)
	}
	return nil
}

// fixStdio points fds 0-2 at /dev/console when the kernel could not (an
// initramfs without /dev/console leaves them closed), so children inherit
// a usable console.
func fixStdio(log *slog.Logger) {
	var bad []int
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			bad = append(bad, fd)
		}
	}
	if len(bad) == 0 {
		return
	}
	c, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		log.Warn("no console for stdio", "err", err)
		return
	}
	for _, fd := range bad {
		_ = unix.Dup3(c, fd, 0)
	}
	if c > 2 {
		unix.Close(c)
	}
}

func (b *bootEnv) klogStep(ctx context.Context) error {
	console, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open console: %w", err)
	}
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0o644)
	kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		b.klog.SetOutputs(console, nil, 0)
		return fmt.Errorf("open kernel log: %w", err)
	}
	b.klog.SetOutputs(console, kmsg, klog.KernelConsoleLoglevel())
	b.timeline.PersistTo(timeline.DefaultPath)
	return nil
}

func (b *bootEnv) kmodStep(ctx context.Context) error {
	defer b.powerButton.Do(func() {
		pid1.WatchPowerButton(b.ctx, b.log, "/dev/input", func() {
			b.shutdownNow(pid1.Poweroff, "power button")
		})
	})
	dir, err := kmod.DefaultDir()
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		// A kernel with every driver built in is fine; an image whose
		// module tree is incomplete is not (kmod.Open reports that).
		b.log.Warn("no kernel modules for this kernel; builtin drivers only", "dir", dir)
		return nil
	}
	ix, err := kmod.Open(dir)
	if err != nil {
		return err
	}
	l := kmod.NewLoader(ix, b.log)
	b.mu.Lock()
	b.modules = l
	b.mu.Unlock()

	// Modules the kernel asks for later (nf_tables, veth, overlay...) come
	// through this binary's modprobe face; dispatch picks the face from the
	// name, so the helper is a "modprobe" symlink to ourselves.
	var errs []error
	if err := installModprobe(); err != nil {
		errs = append(errs, err)
	}

	res := l.Coldplug(ctx, "/sys", 4)
	b.log.Info("coldplug done", "loaded", strings.Join(res.Loaded, " "), "unclaimed_devices", res.Unmatched)
	for _, err := range res.Errors {
		b.log.Warn("coldplug: driver did not load", "err", err)
	}
	// The ACPI power button (QEMU system_powerdown, the chassis button)
	// reaches us as KEY_POWER on an evdev device.
	for _, m := range []string{"button", "evdev"} {
		if _, err := l.Load(ctx, m, ""); err != nil {
			b.log.Warn("power button support unavailable", "module", m, "err", err)
		}
	}
	return errors.Join(errs...)
}

// modprobeLink is the path the kernel runs for module requests.
const modprobeLink = "/sbin/modprobe"

func installModprobe() error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary for the modprobe helper: %w", err)
	}
	if err := (mounts.Symlink{Target: self, Link: modprobeLink}).Apply("/"); err != nil {
		return fmt.Errorf("install modprobe helper: %w", err)
	}
	return kmod.SetModprobePath(modprobeLink)
}

func (b *bootEnv) hostnameStep(ctx context.Context) error {
	name, source := b.cmdline.Value("magestack.host"), "magestack.host="
	if name == "" {
		// Before the network only a path source (or the default) is
		// readable; the config step renames the host once a fetched stack
		// names it.
		if st, err := b.localStack(); err == nil {
			if h := hostForMACs(st, bootMACs(b.cmdline)); h != "" {
				name, source = h, "stack file host by MAC"
			}
		}
	}
	if name == "" {
		name, source = "magestack", "default"
	}
	return b.setHostname(name, source)
}

func (b *bootEnv) setHostname(name, source string) error {
	if err := validHostname(name); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	_ = os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644)
	b.mu.Lock()
	b.hostname, b.hostnameFrom = name, source
	b.mu.Unlock()
	b.log.Info("hostname set", "name", name, "from", source)
	return nil
}

func validHostname(name string) error {
	if len(name) > 64 {
		return fmt.Errorf("hostname %q: longer than 64 bytes", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("hostname %q: character %q not allowed (letters, digits, '-', '.')", name, r)
		}
	}
	return nil
}

// bootMACs are the MACs that may identify this host: BOOTIF= (the PXE boot
// NIC, "01-aa-bb-cc-dd-ee-ff") first, then every NIC's.
func bootMACs(c *cmdline.Cmdline) []string {
	var macs []string
	if v := c.Value("BOOTIF"); v != "" {
		if _, rest, ok := strings.Cut(v, "-"); ok {
			macs = append(macs, strings.ToLower(strings.ReplaceAll(rest, "-", ":")))
		}
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if len(i.HardwareAddr) == 6 && i.Flags&net.FlagLoopback == 0 {
			macs = append(macs, i.HardwareAddr.String())
		}
	}
	return macs
}

func hostForMACs(st *stackfile.Stack, macs []string) string {
	for _, m := range macs {
		if h, _, ok := st.HostByMAC(m); ok {
			return h.Name
		}
	}
	return ""
}

func (b *bootEnv) networkStep(ctx context.Context) error {
	if b.Network() != nil {
		return nil // Up must not run twice: its DHCP clients keep going
	}
	// The background DHCP clients live as long as PID 1, not this attempt;
	// a failed attempt stops its own so the retry starts clean.
	upCtx, cancel := context.WithCancel(b.ctx)
	st, err := netconf.Up(upCtx, netconf.Options{
		Cmdline:  b.cmdline.Value("ip"),
		Hostname: b.Hostname(),
		Logger:   b.log.With("part", "net"),
	})
	if err != nil && !errors.Is(err, netconf.ErrLeasePending) {
		cancel()
		return fmt.Errorf("network: %w", err)
	}
	b.mu.Lock()
	b.network = st
	b.mu.Unlock()
	// Registered here, before the roles' stoppers: DHCP stops after them.
	b.shutdown.OnShutdown("network", 2*time.Second, func(context.Context) error {
		cancel()
		return nil
	})
	if err != nil {
		b.log.Warn("network: no DHCP lease yet; boot continues, DHCP keeps trying in the background", "err", err)
	}
	return nil
}

// localStack is the stack file when it can be read before the network is
// up: a path source (inside the initramfs) or the embedded default.
func (b *bootEnv) localStack() (*stackfile.Stack, error) {
	raw := b.cmdline.Value("magestack.config")
	if raw == "" {
		return stackfile.Default(), nil
	}
	src, err := configsource.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("magestack.config=%s: %w", raw, err)
	}
	if src.Kind != configsource.KindPath {
		return nil, fmt.Errorf("magestack.config=%s: a %s source needs the network", raw, src.Kind)
	}
	data, err := os.ReadFile(src.Path)
	if err != nil {
		return nil, fmt.Errorf("read stack file: %w", err)
	}
	return stackfile.Parse(src.Path, data)
}

// configStep picks the stack the host boots with (reconcile.Initial): the
// magestack.config= source if it fetches and validates, else the last good
// revision kept on the host, else the built-in default. It always ends with
// a usable stack; why a better origin was passed over goes to the console.
func (b *bootEnv) configStep(ctx context.Context) error {
	store, err := configstore.Open(configstore.DefaultDir)
	if err != nil {
		b.log.Warn("config: no store for the last good revision", "dir", configstore.DefaultDir, "err", err)
		store = nil
	}
	fetcher := configsource.New(configsource.Options{Logger: b.log})
	source := b.cmdline.Value("magestack.config")
	rev, st, origin, err := reconcile.Initial(ctx, b.log, fetcher, source, store)
	if err != nil {
		b.log.Warn("config: better origin passed over", "used", string(origin), "err", err)
	}
	if st == nil {
		return fmt.Errorf("config: no usable stack (origin %s): %w", origin, err)
	}
	b.mu.Lock()
	b.stack, b.revision = st, rev
	renamable := b.hostnameFrom == "default"
	b.mu.Unlock()
	b.log.Info("stack config loaded", "stack", st.Name, "origin", string(origin), "revision", shortID(rev.ID),
		"hosts", len(st.Hosts), "roles", len(st.Roles))
	if renamable && b.cmdline.Value("magestack.host") == "" {
		if h := hostForMACs(st, bootMACs(b.cmdline)); h != "" {
			return b.setHostname(h, "stack file host by MAC")
		}
		if len(st.Hosts) == 1 {
			// A one-host stack (the built-in default among them) is this
			// machine's, whatever its MAC.
			return b.setHostname(st.Hosts[0].Name, "the stack's only host")
		}
	}
	return nil
}

// Revision is the stack file revision the host booted with.
func (b *bootEnv) Revision() configsource.Revision {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.revision
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// withTestHooks wraps steps for the QEMU scenarios (never set in
// production): magestack.test.failstep=<step>[:<n>|:always] fails a step's
// first n attempts (default 2); magestack.test.panicstep=<step> panics in
// its first attempt; magestack.test.fs_request=<fstype> mounts that
// filesystem type once boot is complete, so the kernel asks the modprobe
// face for it. magestack.test.poweroff_after=<duration> and
// magestack.test.signal=<NAME>@<duration> (see initMain) end the machine.
func withTestHooks(b *bootEnv, steps []pid1.Step) []pid1.Step {
	m := b.cmdline.Magestack()
	failName, failSpec, _ := strings.Cut(m["test.failstep"], ":")
	failures := 2
	switch {
	case failSpec == "always":
		failures = -1
	case failSpec != "":
		if n, err := strconv.Atoi(failSpec); err == nil && n >= 0 {
			failures = n
		}
	}
	panicName := m["test.panicstep"]
	for i := range steps {
		s := &steps[i]
		run, attempts := s.Run, 0
		if s.Name == failName {
			s.Run = func(ctx context.Context) error {
				attempts++
				if failures < 0 || attempts <= failures {
					return fmt.Errorf("test hook magestack.test.failstep: attempt %d of %s fails on purpose", attempts, failName)
				}
				return run(ctx)
			}
		} else if s.Name == panicName {
			s.Run = func(ctx context.Context) error {
				attempts++
				if attempts == 1 {
					panic("test hook magestack.test.panicstep: " + panicName)
				}
				return run(ctx)
			}
		}
	}
	if fs := m["test.fs_request"]; fs != "" {
		steps = append(steps, pid1.Step{Name: "test-fs-request", Retry: pid1.Retry{Attempts: 1}, Run: func(ctx context.Context) error {
			return requestFilesystem(b.log, fs)
		}})
	}
	return steps
}

// requestFilesystem mounts fstype on a scratch dir: the kernel, lacking the
// filesystem, runs the modprobe helper for "fs-<fstype>" first.
func requestFilesystem(log *slog.Logger, fstype string) error {
	dir := filepath.Join("/run/magestack/test-fs", fstype)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("none", dir, fstype, 0, "")
	if err == nil {
		_ = unix.Unmount(dir, 0)
	}
	fss, _ := os.ReadFile("/proc/filesystems")
	for _, line := range strings.Split(string(fss), "\n") {
		if strings.TrimSpace(strings.TrimPrefix(line, "nodev")) == fstype {
			log.Info("test hook: kernel module request served by the modprobe face", "fstype", fstype, "mount_err", fmt.Sprint(err))
			return nil
		}
	}
	return fmt.Errorf("filesystem %s still unknown to the kernel after the mount attempt (%v)", fstype, err)
}

// testSignal reads magestack.test.signal=<NAME>@<duration> (e.g. TERM@3s):
// PID 1 sends itself that signal, going through the real handler.
func testSignal(b *bootEnv) (unix.Signal, time.Duration, bool) {
	v, ok := b.cmdline.Magestack()["test.signal"]
	if !ok {
		return 0, 0, false
	}
	name, after, _ := strings.Cut(v, "@")
	sig := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG"))
	d, err := time.ParseDuration(after)
	if sig == 0 || err != nil || d < 0 {
		b.log.Warn("ignoring bad test hook", "key", "magestack.test.signal", "value", v)
		return 0, 0, false
	}
	return sig, d, true
}

// residentKiB is this process's VmRSS from /proc/self/status (-1 unknown).
func residentKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err == nil {
				return n
			}
		}
	}
	return -1
}

func testDuration(b *bootEnv, key string) (time.Duration, bool) {
	v, ok := b.cmdline.Magestack()[key]
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		b.log.Warn("ignoring bad test hook duration", "key", cmdline.Prefix+key, "value", v)
		return 0, false
	}
	return d, true
}

// modprobeMain is the kernel's module helper: the kernel runs
// `/sbin/modprobe -q -- <name-or-alias>` (our symlink) when it needs a
// module. It also works by hand: `magestack modprobe [-q] [-v] name [param=value...]`.
func modprobeMain(args []string) int {
	quiet, verbose := false, false
	var words []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			words = append(words, args[i+1:]...)
			i = len(args)
		case a == "-q" || a == "--quiet":
			quiet = true
		case a == "-v" || a == "--verbose":
			verbose = true
		case a == "-b" || a == "--use-blacklist":
			// no blacklist in a one-binary system
		case strings.HasPrefix(a, "-") && len(a) > 1:
			fmt.Fprintf(os.Stderr, "modprobe: unknown option %s\n", a)
			return 2
		default:
			words = append(words, a)
		}
	}
	if len(words) == 0 {
		fmt.Fprintln(os.Stderr, "usage: modprobe [-q] [-v] [--] <module-or-alias> [param=value...]")
		return 2
	}
	opts := klog.Options{Tag: "modprobe", Level: slog.LevelInfo}
	if kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		defer kmsg.Close()
		opts.Kmsg = kmsg
	}
	if verbose || !quiet {
		opts.Console = os.Stderr
	}
	log := slog.New(klog.New(opts))
	dir, err := kmod.DefaultDir()
	if err != nil {
		log.Error("modprobe failed", "err", err)
		return 1
	}
	ix, err := kmod.Open(dir)
	if err != nil {
		log.Error("modprobe failed", "err", err)
		return 1
	}
	name, params := words[0], strings.Join(words[1:], " ")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	loaded, err := kmod.NewLoader(ix, log).Load(ctx, name, params)
	if len(loaded) > 0 {
		log.Info("loaded", "request", name, "modules", strings.Join(loaded, " "))
	}
	if err != nil {
		if !quiet || len(ix.Resolve(name)) > 0 {
			// A miss on a speculative kernel request is normal; a module
			// that exists and fails to load is worth the kernel log.
			log.Error("modprobe failed", "request", name, "err", err)
		}
		return 1
	}
	return 0
}
