// Package reap is PID 1's central child reaper. PID 1 inherits every orphan
// and must wait for each or zombies pile up, yet a blind wait4(-1) loop would
// steal the exit status of children that other code started with exec.Cmd
// and is about to Wait for.
//
// The rule that makes both work: every child PID 1 starts goes through
// (*Reaper).Start. Start records the child's pid as owned before any reap
// pass can see it exit, and waits for it with exec.Cmd.Wait (so pipes and
// copy goroutines are handled by os/exec). A reap pass only ever waits for
// zombies that are not owned: it peeks with waitid(WNOWAIT) and, when the
// first zombie is an owned child, falls back to scanning /proc for zombie
// children of PID 1. Code in PID 1 must not call cmd.Start/Run directly;
// the supervisor and every helper use Start. One Reaper per process: two
// would reap each other's children.
package reap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper reaps orphans and hands owned children's statuses to their starters.
type Reaper struct {
	log     *slog.Logger
	self    int
	mu      sync.Mutex // held across cmd.Start and around every reap
	owned   map[int]bool
	sigchld chan os.Signal
}

// New returns a reaper for the current process. It subscribes to SIGCHLD
// at once, so a child that exits before Run's goroutine is scheduled is
// still noticed.
func New(log *slog.Logger) *Reaper {
	r := &Reaper{log: log, self: os.Getpid(), owned: map[int]bool{}, sigchld: make(chan os.Signal, 16)}
	signal.Notify(r.sigchld, unix.SIGCHLD)
	return r
}

// Start starts cmd and returns a channel that receives its wait status once
// (then closes). The caller must not call cmd.Wait. A command whose wait fails
// without a status (it never ran to an exit) reports exit status 255.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	r.owned[pid] = true
	r.mu.Unlock()

	ch := make(chan unix.WaitStatus, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("reap: panic waiting for child", "pid", pid, "panic", p)
			}
		}()
		err := cmd.Wait()
		status := unix.WaitStatus(255 << 8)
		if cmd.ProcessState != nil {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
				status = unix.WaitStatus(ws)
			}
		} else if err != nil {
			r.log.Warn("reap: wait failed", "pid", pid, "err", err)
		}
		r.mu.Lock()
		delete(r.owned, pid)
		r.mu.Unlock()
		ch <- status
		close(ch)
	}()
	return ch, nil
}

// Run reaps on every SIGCHLD, and every few seconds as a safety net, until
// ctx ends. Create the Reaper before PID 1 starts any child.
func (r *Reaper) Run(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		r.safeReap()
		select {
		case <-ctx.Done():
			return
		case <-r.sigchld:
		case <-tick.C:
		}
	}
}

func (r *Reaper) safeReap() {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("reap: panic in reap pass", "panic", p)
		}
	}()
	r.Reap()
}

// Reap waits for every exited child that nobody owns and returns how many
// it reaped.
func (r *Reaper) Reap() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for {
		pid, err := peekExited()
		if err != nil || pid <= 0 {
			return n
		}
		if r.owned[pid] {
			// The first zombie is someone's child; waitid cannot look past
			// it, so find the others by name.
			return n + r.reapScanLocked()
		}
		if r.reapPidLocked(pid) {
			n++
		} else {
			return n
		}
	}
}

func (r *Reaper) reapPidLocked(pid int) bool {
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	if err != nil || got != pid {
		return false
	}
	r.log.Debug("reaped orphan", "pid", pid, "status", describe(ws))
	return true
}

// reapScanLocked reaps zombie children of this process found in /proc.
func (r *Reaper) reapScanLocked() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || r.owned[pid] {
			continue
		}
		state, ppid, err := procState(pid)
		if err != nil || state != 'Z' || ppid != r.self {
			continue
		}
		if r.reapPidLocked(pid) {
			n++
		}
	}
	return n
}

// peekExited returns the pid of an exited child without reaping it.
func peekExited() (int, error) {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return peekExited()
		}
		return 0, err
	}
	return siginfoPid(&info), nil
}

// siginfoPid reads si_pid, which x/sys/unix keeps in the struct's padding:
// it follows si_signo, si_errno, si_code and one int of alignment.
func siginfoPid(info *unix.Siginfo) int {
	b := (*[128]byte)(unsafe.Pointer(info))
	return int(*(*int32)(unsafe.Pointer(&b[16])))
}

// procState reads the state letter and parent pid from /proc/<pid>/stat.
func procState(pid int) (byte, int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], ppid, nil
}

func describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("status %#x", uint32(ws))
}
