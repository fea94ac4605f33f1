// Package roleexec runs a command inside a running role environment, the
// way an operator's config check or reload must run: in the role's mount,
// UTS, IPC, network and PID namespaces, in its cgroup, with no more
// capabilities than the role's own PID 1 keeps, no_new_privs set, and the
// role's seccomp filter when its PID 1 runs under one. The
// command is the role's own binary (its image may have been changed by
// whoever controls the role), so it never runs with the host's privileges.
//
// The switch happens on a locked OS thread of the caller that is thrown
// away afterwards (its goroutine ends locked): setns, the capability sets,
// no_new_privs and the seccomp filter are per thread, and the forked child
// inherits them.
package roleexec

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/seccomp"
)

// Starter starts a command and reports its wait status once; PID 1's
// reaper has one, so the child is not reaped from under exec.Cmd.Wait.
type Starter func(cmd *exec.Cmd) (<-chan unix.WaitStatus, error)

// Options of Run.
type Options struct {
	// Env of the command; default PATH, HOME=/root and LANG=C.
	Env []string
	// Start starts the command; default exec.Cmd.Start and Wait.
	Start Starter
	// MaxOutput bounds the output kept (stdout and stderr together);
	// default 64 KiB, the rest is dropped with a note.
	MaxOutput int
	// CgroupRoot is where cgroup2 is mounted on the host; default
	// /sys/fs/cgroup.
	CgroupRoot string
	// Stdin is the command's input; nil: none (/dev/null).
	Stdin io.Reader
}

// Result is how the command ended.
type Result struct {
	Output   string // stdout and stderr, interleaved as written
	ExitCode int    // -1: killed by a signal (Output says which)
}

// DefaultEnv is the command's environment unless Options.Env is set.
var DefaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C"}

// namespaces entered, mount last: after it the host's /proc is out of
// sight, and the others are opened beforehand anyway.
var namespaces = []struct {
	name string
	flag int
}{
	{"ipc", unix.CLONE_NEWIPC}, {"uts", unix.CLONE_NEWUTS}, {"net", unix.CLONE_NEWNET},
	{"pid", unix.CLONE_NEWPID}, {"mnt", unix.CLONE_NEWNS},
}

// Run runs argv (argv[0] an absolute path inside the role) in the role
// whose PID 1 has host pid rolePID, and waits for it until ctx ends (then
// kills it). A non-zero exit is a Result, not an error; errors mean the
// command could not run.
func Run(ctx context.Context, rolePID int, argv []string, opts Options) (Result, error) {
	if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
		return Result{}, fmt.Errorf("role exec: command %q: want an absolute path inside the role first", argv)
	}
	if rolePID <= 1 {
		return Result{}, fmt.Errorf("role exec: role PID %d: the role is not running", rolePID)
	}
	if opts.Env == nil {
		opts.Env = DefaultEnv
	}
	if opts.MaxOutput <= 0 {
		opts.MaxOutput = 64 << 10
	}
	if opts.CgroupRoot == "" {
		opts.CgroupRoot = "/sys/fs/cgroup"
	}
	caps, err := readCaps(rolePID)
	if err != nil {
		return Result{}, err
	}
	var nsFDs []int
	defer func() {
		for _, fd := range nsFDs {
			unix.Close(fd)
		}
	}()
	for _, ns := range namespaces {
		p := fmt.Sprintf("/proc/%d/ns/%s", rolePID, ns.name)
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return Result{}, fmt.Errorf("role exec: namespace %s: %w", p, err)
		}
		nsFDs = append(nsFDs, fd)
	}
	cgFD := -1
	if dir, err := cgroupDir(rolePID, opts.CgroupRoot); err == nil {
		var fs unix.Statfs_t
		if unix.Statfs(dir, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
			if fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
				cgFD = fd
				defer unix.Close(fd)
			}
		}
	}

	out := &limitedBuffer{max: opts.MaxOutput}
	cmd := &exec.Cmd{Path: argv[0], Args: argv, Env: opts.Env, Stdin: opts.Stdin, Stdout: out, Stderr: out,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if cgFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgFD
	}
	type started struct {
		done <-chan unix.WaitStatus
		err  error
	}
	sc := make(chan started, 1)
	var inside func()
	inside = func() {
		// Never unlocked: the thread ends with this goroutine instead of
		// going back to the scheduler inside the role with reduced rights.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never ended, and /proc/<pid>/ns and
			// status describe it: hand the work to another thread, which
			// is not this one while it stays locked here (nothing was
			// changed on it yet, so it goes back unchanged).
			go inside()
			runtime.UnlockOSThread()
			return
		}
		done, err := startInside(cmd, nsFDs, caps, opts.Start)
		sc <- started{done, err}
	}
	go func() {
		inside()
	}()
	s := <-sc
	if s.err != nil {
		return Result{}, fmt.Errorf("role exec %s in role pid %d: %w", argv[0], rolePID, s.err)
	}
	var ws unix.WaitStatus
	select {
	case ws = <-s.done:
	case <-ctx.Done():
		cmd.Process.Kill()
		select {
		case ws = <-s.done:
		case <-time.After(10 * time.Second):
		}
		return Result{Output: out.String(), ExitCode: -1}, fmt.Errorf("role exec %s: %w", argv[0], ctx.Err())
	}
	res := Result{Output: out.String(), ExitCode: ws.ExitStatus()}
	if ws.Signaled() {
		res.ExitCode = -1
		res.Output += fmt.Sprintf("\n(killed by %s)", ws.Signal())
	}
	return res, nil
}

// startInside switches the calling (locked) thread into the role and
// starts cmd from it.
func startInside(cmd *exec.Cmd, nsFDs []int, caps capSets, start Starter) (<-chan unix.WaitStatus, error) {
	// A thread sharing its filesystem context (all Go threads do) may not
	// change mount namespace.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, fmt.Errorf("unshare filesystem context: %w", err)
	}
	for i, ns := range namespaces {
		if err := unix.Setns(nsFDs[i], ns.flag); err != nil {
			return nil, fmt.Errorf("enter %s namespace: %w", ns.name, err)
		}
	}
	if err := unix.Chdir("/"); err != nil {
		return nil, fmt.Errorf("chdir / in the role: %w", err)
	}
	if err := caps.apply(); err != nil {
		return nil, err
	}
	if start != nil {
		return start(cmd)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan unix.WaitStatus, 1)
	go func() {
		cmd.Wait()
		ws := unix.WaitStatus(255 << 8)
		if cmd.ProcessState != nil {
			if s, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
				ws = unix.WaitStatus(s)
			}
		}
		done <- ws
	}()
	return done, nil
}

// capSets are role-init's capability sets, as /proc/<pid>/status shows
// them, and whether it runs under a seccomp filter.
type capSets struct {
	inh, prm, eff, bnd uint64
	noNewPrivs         bool
	seccompFilter      bool
}

func readCaps(pid int) (capSets, error) {
	p := fmt.Sprintf("/proc/%d/status", pid)
	b, err := os.ReadFile(p)
	if err != nil {
		return capSets{}, fmt.Errorf("role exec: %w", err)
	}
	c, err := parseStatus(b)
	if err != nil {
		return capSets{}, fmt.Errorf("role exec: %s: %w", p, err)
	}
	return c, nil
}

func parseStatus(b []byte) (capSets, error) {
	var c capSets
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var dst *uint64
		switch k {
		case "CapInh":
			dst = &c.inh
		case "CapPrm":
			dst = &c.prm
		case "CapEff":
			dst = &c.eff
		case "CapBnd":
			dst = &c.bnd
		case "NoNewPrivs":
			c.noNewPrivs = v == "1"
			continue
		case "Seccomp":
			c.seccompFilter = v == "2" // SECCOMP_MODE_FILTER
			continue
		default:
			continue
		}
		n, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return c, fmt.Errorf("%s %q: %w", k, v, err)
		}
		*dst = n
		seen++
	}
	if seen != 4 {
		return c, errors.New("capability sets missing")
	}
	return c, nil
}

// apply reduces the calling thread to the sets: bounding set first (that
// needs CAP_SETPCAP, which capset may then drop), then no_new_privs, then
// the filter. no_new_privs is always set: a config check never needs to
// gain rights. A role under a filter of its own gets the default filter:
// role-init installs no other.
func (c capSets) apply() error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	for n := uint64(0); n <= last; n++ {
		if c.bnd&(1<<n) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(n), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", n, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(c.eff), Permitted: uint32(c.prm), Inheritable: uint32(c.inh)},
		{Effective: uint32(c.eff >> 32), Permitted: uint32(c.prm >> 32), Inheritable: uint32(c.inh >> 32)},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if c.seccompFilter {
		if err := seccomp.InstallThisThread(); err != nil {
			return err
		}
	}
	return nil
}

func lastCap() (uint64, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 8)
	if err != nil || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q: not a capability number", b)
	}
	return n, nil
}

// cgroupDir is the host path of the cgroup2 group pid is in.
func cgroupDir(pid int, root string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, filepath.Clean("/"+rel)), nil
		}
	}
	return "", errors.New("no cgroup2 group")
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := l.max - l.buf.Len()
	if room < len(p) {
		if room > 0 {
			l.buf.Write(p[:room])
		}
		l.dropped += len(p) - max(room, 0)
		return len(p), nil
	}
	l.buf.Write(p)
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	if l.dropped > 0 {
		s += fmt.Sprintf("\n(%d more bytes of output dropped)", l.dropped)
	}
	return s
}
