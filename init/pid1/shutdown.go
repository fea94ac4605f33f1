package pid1

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Action is what happens to the machine at the end of a shutdown.
type Action int

const (
	Poweroff Action = iota
	Reboot
	Halt
)

func (a Action) String() string {
	switch a {
	case Reboot:
		return "reboot"
	case Halt:
		return "halt"
	}
	return "poweroff"
}

func (a Action) rebootCmd() int {
	switch a {
	case Reboot:
		return unix.LINUX_REBOOT_CMD_RESTART
	case Halt:
		return unix.LINUX_REBOOT_CMD_HALT
	}
	return unix.LINUX_REBOOT_CMD_POWER_OFF
}

// SignalAction maps a signal to PID 1 to its action, following busybox init:
// SIGTERM reboot, SIGUSR1 halt, SIGUSR2 power off, SIGINT (Ctrl-Alt-Del)
// reboot; SIGPWR (power failing, sent by UPS daemons) powers off.
func SignalAction(s os.Signal) (Action, bool) {
	switch s {
	case unix.SIGTERM, unix.SIGINT:
		return Reboot, true
	case unix.SIGUSR1:
		return Halt, true
	case unix.SIGUSR2, unix.SIGPWR:
		return Poweroff, true
	}
	return 0, false
}

// HandledSignals are the signals HandleSignals takes over.
var HandledSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR}

// HandleSignals installs PID 1's signal handlers and returns. Call it first,
// before any child exists: the kernel drops signals to PID 1 that have no
// handler, and a fast child could signal before one is installed. It also
// tells the kernel to turn Ctrl-Alt-Del into SIGINT instead of an immediate
// reboot. Each signal calls onSignal in its own recovered goroutine.
func HandleSignals(log *slog.Logger, onSignal func(Action, string)) {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, HandledSignals...)
	signal.Ignore(unix.SIGHUP, unix.SIGPIPE, unix.SIGTTIN, unix.SIGTTOU)
	if os.Getpid() == 1 {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
			log.Warn("cannot route Ctrl-Alt-Del to SIGINT", "err", err)
		}
	}
	Go(log, "signal handler", func() {
		for s := range ch {
			a, _ := SignalAction(s)
			name := s.String()
			if n, ok := s.(syscall.Signal); ok {
				name = unix.SignalName(n)
			}
			Go(log, "signal "+name, func() { onSignal(a, "signal "+name) })
		}
	})
}

// Shutdown stops what PID 1 started and ends the machine.
type Shutdown struct {
	Log *slog.Logger
	// KillGrace is how long processes get between SIGTERM and SIGKILL
	// (default 3s).
	KillGrace time.Duration
	// Unmount unmounts everything (init/mounts.UnmountAll); nil: skip.
	Unmount func() error
	// Console prints the verbatim console line announcing the action; nil: log.
	Console func(string)

	mu       sync.Mutex
	stoppers []stopper
	started  bool
	// final is unix.Reboot, replaceable in tests.
	final func(cmd int) error
	// killAll signals every process but PID 1 (kill(-1, sig)); others
	// lists the processes still there. Both replaceable in tests.
	killAll func(sig syscall.Signal) error
	others  func() []int
}

type stopper struct {
	name  string
	grace time.Duration
	stop  func(ctx context.Context) error
}

// OnShutdown registers a stopper. Stoppers run in reverse registration
// order (roles registered in start order stop in reverse), each bounded by
// grace (default 10s).
func (s *Shutdown) OnShutdown(name string, grace time.Duration, stop func(ctx context.Context) error) {
	if grace <= 0 {
		grace = 10 * time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stoppers = append(s.stoppers, stopper{name, grace, stop})
}

// Started reports whether a shutdown has begun (boot should not announce
// readiness any more).
func (s *Shutdown) Started() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// Do shuts down and performs the action. Only the first call acts; later
// calls return at once. When the final reboot syscall fails (not PID 1,
// or the kernel refuses), Do returns its error and the caller keeps running.
func (s *Shutdown) Do(action Action, reason string) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("shutdown already in progress")
	}
	s.started = true
	stoppers := append([]stopper(nil), s.stoppers...)
	s.mu.Unlock()

	s.say(fmt.Sprintf("magestack: shutdown %s (%s)", action, reason))
	for i := len(stoppers) - 1; i >= 0; i-- {
		s.runStopper(stoppers[i])
	}
	s.killEverything()
	unix.Sync()
	if s.Unmount != nil {
		if err := Safely(s.Log, "unmount", s.Unmount); err != nil {
			s.Log.Warn("unmount at shutdown", "err", err)
		}
	}
	unix.Sync()
	s.say(fmt.Sprintf("magestack: %s now", action))
	final := s.final
	if final == nil {
		final = unix.Reboot
	}
	if err := final(action.rebootCmd()); err != nil {
		s.Log.Error("reboot syscall failed", "action", action.String(), "err", err)
		return fmt.Errorf("%s: %w", action, err)
	}
	return nil
}

func (s *Shutdown) say(line string) {
	if s.Console != nil {
		s.Console(line)
		return
	}
	s.Log.Info(line)
}

func (s *Shutdown) runStopper(st stopper) {
	ctx, cancel := context.WithTimeout(context.Background(), st.grace)
	defer cancel()
	s.Log.Info("stopping", "unit", st.name)
	done := make(chan error, 1)
	Go(s.Log, "stop "+st.name, func() {
		done <- Safely(s.Log, "stop "+st.name, func() error { return st.stop(ctx) })
	})
	select {
	case err := <-done:
		if err != nil {
			s.Log.Warn("stop failed", "unit", st.name, "err", err)
		} else {
			s.Log.Info("stopped", "unit", st.name)
		}
	case <-time.After(st.grace + time.Second):
		s.Log.Warn("stop did not finish within its grace; going on", "unit", st.name, "grace", st.grace)
	}
}

// killEverything sends SIGTERM to every remaining process, waits up to
// KillGrace for them to go (the reaper collects them), then SIGKILLs the rest.
func (s *Shutdown) killEverything() {
	kill, others := s.killAll, s.others
	if kill == nil {
		if os.Getpid() != 1 {
			return // kill(-1) from anything but PID 1 would hit the caller's session
		}
		kill = func(sig syscall.Signal) error { return unix.Kill(-1, sig) }
	}
	if others == nil {
		others = userProcesses
	}
	grace := s.KillGrace
	if grace <= 0 {
		grace = 3 * time.Second
	}
	if len(others()) == 0 {
		return
	}
	_ = kill(unix.SIGTERM)
	if waitGone(others, grace) {
		return
	}
	left := others()
	s.Log.Warn("processes left after SIGTERM; sending SIGKILL", "pids", fmt.Sprint(left))
	_ = kill(unix.SIGKILL)
	if !waitGone(others, time.Second) {
		s.Log.Warn("processes survived SIGKILL", "pids", fmt.Sprint(others()))
	}
}

func waitGone(others func() []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if len(others()) == 0 {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return len(others()) == 0
}

// userProcesses lists every process but PID 1 and kernel threads (kthreadd,
// pid 2, and its children). kill(-1, 0) cannot answer this: it succeeds as
// long as any kernel thread exists.
func userProcesses() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 2 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		st := string(b)
		i := strings.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(st[i+1:])
		if len(f) < 2 || f[1] == "2" {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// SleepForever is where PID 1 ends up when it has nothing left to do or
// cannot go on: it must never return from main, and the timers keep the Go
// runtime from declaring a deadlock.
func SleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
