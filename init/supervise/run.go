package supervise

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/health"
)

// loop owns one unit from Start until Stop, a crash loop or a panic.
func (s *Supervisor) loop(ctx context.Context, u *unit, h *runHandle) {
	final, finalMsg := StateStopped, ""
	defer func() {
		if r := recover(); r != nil {
			final, finalMsg = StateFailed, fmt.Sprintf("internal error: %v", r)
			s.event(u, "panic", fmt.Sprintf("supervision loop: %v", r))
			s.mu.Lock()
			pid, cg := u.pid, u.spec.Cgroup
			s.mu.Unlock()
			if pid != 0 { // do not leave an unsupervised process behind
				syscall.Kill(-pid, syscall.SIGKILL)
			}
			if cg != "" {
				killCgroup(cg)
			}
		}
		s.mu.Lock()
		u.run, u.pid = nil, 0
		s.setStateLocked(u, final, finalMsg)
		if final == StateStopped {
			msg := "stopped on request"
			if ctx.Err() == nil {
				msg = "one-shot finished"
			}
			s.emitLocked(u, "stopped", msg)
		}
		s.mu.Unlock()
		close(h.done)
	}()

	quick := 0 // consecutive exits before StableAfter
	pol := u.spec.Restart
	for {
		if err := s.waitDeps(ctx, u); err != nil {
			return
		}
		exit, requested := s.runOnce(ctx, u)
		if requested {
			s.mu.Lock()
			u.lastExit = &exit
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		u.lastExit = &exit
		now := time.Now()
		u.exits = append(u.exits, now)
		for len(u.exits) > 0 && now.Sub(u.exits[0]) > pol.CrashLoopWindow {
			u.exits = u.exits[1:]
		}
		n := len(u.exits)
		s.emitLocked(u, "exited", fmt.Sprintf("%s after %v", exit.Reason, exit.Uptime.Round(time.Millisecond)))
		s.mu.Unlock()

		if pol.Never {
			if exit.Code != 0 {
				final, finalMsg = StateFailed, "one-shot "+exit.Reason
				s.event(u, "failed", finalMsg)
			}
			return
		}
		if n >= pol.CrashLoopCount {
			final = StateFailed
			finalMsg = fmt.Sprintf("crash loop: %d exits within %v, last: %s", n, pol.CrashLoopWindow, exit.Reason)
			s.event(u, "crash-loop", finalMsg)
			return
		}
		if exit.Uptime >= pol.StableAfter {
			quick = 0
		} else {
			quick++
		}
		delay := pol.backoff(quick)
		s.mu.Lock()
		u.restarts++
		s.setStateLocked(u, StateBackoff, fmt.Sprintf("restarting in %v after %s", delay, exit.Reason))
		s.mu.Unlock()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		} else if ctx.Err() != nil {
			return
		}
	}
}

// waitDeps blocks until every unit in After is ready.
func (s *Supervisor) waitDeps(ctx context.Context, u *unit) error {
	for {
		s.mu.Lock()
		waiting := ""
		for _, d := range u.spec.After {
			if dep, ok := s.units[d]; !ok || dep.state != StateReady {
				waiting = d
				break
			}
		}
		if waiting == "" {
			s.mu.Unlock()
			return nil
		}
		if msg := "waiting for " + waiting; u.state != StateStarting || u.message != msg {
			s.setStateLocked(u, StateStarting, msg)
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// process is one started instance of a unit.
type process struct {
	pid     int
	started time.Time
	wait    <-chan unix.WaitStatus
	notify  *os.File // read end of fd 3, nil without NotifyFD
	oomBase uint64
}

// launch starts the unit's command with its logs piped, fd 3 for
// readiness, its own process group and, with a cgroup, placed into it at
// clone time.
func (s *Supervisor) launch(u *unit) (*process, error) {
	spec := u.spec
	cmd := exec.Command(spec.Command[0], spec.Command[1:]...)
	cmd.Env, cmd.Dir = spec.Env, spec.Dir
	attr := &syscall.SysProcAttr{}
	if spec.SysProcAttr != nil {
		a, err := spec.SysProcAttr()
		if err != nil {
			return nil, fmt.Errorf("process attributes: %w", err)
		}
		if a != nil {
			attr = a
		}
	}
	if !attr.Setsid {
		attr.Setpgid, attr.Pgid = true, 0 // its own group, so stop reaches its children
	}
	p := &process{}
	if spec.Cgroup != "" {
		fd, err := openCgroup(spec.Cgroup)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		p.oomBase, _ = oomKills(spec.Cgroup)
	}
	cmd.SysProcAttr = attr

	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	var notifyW *os.File
	if spec.NotifyFD {
		if p.notify, notifyW, err = os.Pipe(); err != nil {
			outR.Close()
			outW.Close()
			errR.Close()
			errW.Close()
			return nil, fmt.Errorf("notify pipe: %w", err)
		}
		cmd.ExtraFiles = []*os.File{notifyW}
	}
	wait, err := s.starter.Start(cmd)
	// The child has its copies; ours would keep the readers from seeing EOF.
	outW.Close()
	errW.Close()
	if notifyW != nil {
		notifyW.Close()
	}
	if err != nil {
		outR.Close()
		errR.Close()
		if p.notify != nil {
			p.notify.Close()
		}
		return nil, err
	}
	p.pid, p.started, p.wait = cmd.Process.Pid, time.Now(), wait
	for stream, r := range map[string]*os.File{"stdout": outR, "stderr": errR} {
		go func() {
			defer s.recoverGo(u, "log reader")
			defer r.Close()
			if err := u.log.ReadFrom(stream, r); err != nil {
				s.event(u, "log", fmt.Sprintf("reading %s: %v", stream, err))
			}
		}()
	}
	return p, nil
}

// runOnce starts the unit and returns when its process has ended: by
// itself, after failing health, or stopped because ctx ended (requested).
func (s *Supervisor) runOnce(ctx context.Context, u *unit) (exit ExitInfo, requested bool) {
	spec := u.spec
	s.set(u, StateStarting, "")
	p, err := s.launch(u)
	if err != nil {
		return ExitInfo{At: time.Now(), Code: -1, Reason: "start: " + err.Error()}, false
	}
	s.mu.Lock()
	u.pid, u.started = p.pid, p.started
	u.health, u.healthReason = "", ""
	if spec.Health != nil {
		u.health = health.Starting
	}
	s.setStateLocked(u, StateRunning, "")
	s.emitLocked(u, "started", fmt.Sprintf("pid %d: %v", p.pid, spec.Command))
	s.mu.Unlock()

	defer s.afterExit(u, p)

	if spec.AfterStart != nil {
		if err := spec.AfterStart(p.pid); err != nil {
			reason := "after-start: " + err.Error()
			s.event(u, "failed", reason)
			exit = s.stopProcess(u, p, "after-start failed")
			exit.Reason = reason
			return exit, false
		}
	}

	notified := make(chan struct{})
	if p.notify != nil {
		go func() {
			defer s.recoverGo(u, "notify reader")
			defer p.notify.Close()
			if _, err := bufio.NewReader(p.notify).ReadString('\n'); err == nil {
				close(notified)
			}
		}()
	} else {
		close(notified)
	}
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	healthCh := make(chan health.Status)
	isHealthy := spec.Health == nil
	if spec.Health != nil {
		chk := *spec.Health
		if chk.Starter == nil {
			chk.Starter = s.starter // exec probes must not lose their status to PID 1's reaper
		}
		mon := health.NewMonitor(chk, p.started)
		go func() {
			defer s.recoverGo(u, "health monitor")
			mon.Run(hctx, func(st health.Status) {
				select {
				case healthCh <- st:
				case <-hctx.Done():
				}
			})
		}()
	}
	var oomTick <-chan time.Time
	if spec.Cgroup != "" {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		oomTick = t.C
	}
	lastOOM := p.oomBase
	isNotified := false
	becomeReady := func() {
		if !isNotified || !isHealthy {
			return
		}
		s.mu.Lock()
		if u.state == StateRunning {
			s.setStateLocked(u, StateReady, "")
			s.emitLocked(u, "ready", fmt.Sprintf("pid %d after %v", p.pid, time.Since(p.started).Round(time.Millisecond)))
		}
		s.mu.Unlock()
	}
	notifiedCh := (<-chan struct{})(notified)
	for {
		select {
		case ws := <-p.wait:
			return s.exitInfo(u, p, ws), false
		case <-notifiedCh:
			notifiedCh, isNotified = nil, true
			becomeReady()
		case st := <-healthCh:
			s.mu.Lock()
			u.health, u.healthReason = st.State, st.Reason
			s.mu.Unlock()
			switch st.State {
			case health.Healthy:
				isHealthy = true
				becomeReady()
			case health.Unhealthy:
				reason := "unhealthy: " + st.Reason
				s.event(u, "unhealthy", st.Reason)
				exit = s.stopProcess(u, p, reason)
				exit.Reason = reason + " (then " + exit.Reason + ")"
				return exit, false
			}
		case <-oomTick:
			if n, ok := oomKills(spec.Cgroup); ok && n > lastOOM {
				s.event(u, "oom", fmt.Sprintf("%d process(es) of the unit OOM-killed", n-lastOOM))
				lastOOM = n
			}
		case <-ctx.Done():
			s.set(u, StateStopping, "stopping")
			return s.stopProcess(u, p, "stop requested"), true
		}
	}
}

// stopProcess sends the stop signal to the process group, waits the grace
// period, then kills the cgroup (or the group) and waits a bounded time.
func (s *Supervisor) stopProcess(u *unit, p *process, why string) ExitInfo {
	spec := u.spec
	var kill <-chan struct{}
	s.mu.Lock()
	if u.run != nil {
		kill = u.run.kill
	}
	s.mu.Unlock()
	select {
	case <-kill:
		u.log.Printf("stop: %s: killed without grace", why)
		return s.killProcess(u, p)
	default:
	}
	u.log.Printf("stop: %s: sending %v to process group %d", why, spec.StopSignal, p.pid)
	if err := syscall.Kill(-p.pid, spec.StopSignal); err == syscall.ESRCH {
		syscall.Kill(p.pid, spec.StopSignal)
	}
	grace := time.NewTimer(spec.StopGrace)
	defer grace.Stop()
	select {
	case ws := <-p.wait:
		return s.exitInfo(u, p, ws)
	case <-grace.C:
		u.log.Printf("stop: still running after %v grace: SIGKILL", spec.StopGrace)
	case <-kill:
		u.log.Printf("stop: kill asked during the grace period: SIGKILL")
	}
	return s.killProcess(u, p)
}

// killProcess kills everything of the unit and waits a bounded time.
func (s *Supervisor) killProcess(u *unit, p *process) ExitInfo {
	s.killAll(u, p.pid)
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case ws := <-p.wait:
		return s.exitInfo(u, p, ws)
	case <-t.C:
		msg := fmt.Sprintf("pid %d still there %v after SIGKILL", p.pid, killWait)
		s.event(u, "stuck", msg)
		return ExitInfo{At: time.Now(), Code: -1, Signal: "SIGKILL", Uptime: time.Since(p.started), Reason: msg}
	}
}

// killAll SIGKILLs everything of the unit: its cgroup and its process group.
func (s *Supervisor) killAll(u *unit, pid int) {
	if u.spec.Cgroup != "" {
		if err := killCgroup(u.spec.Cgroup); err != nil {
			u.log.Printf("kill cgroup %s: %v", u.spec.Cgroup, err)
		}
	}
	syscall.Kill(-pid, syscall.SIGKILL)
}

func (s *Supervisor) exitInfo(u *unit, p *process, ws unix.WaitStatus) ExitInfo {
	e := ExitInfo{At: time.Now(), Code: -1, Uptime: time.Since(p.started)}
	switch {
	case ws.Exited():
		e.Code = ws.ExitStatus()
		e.Reason = fmt.Sprintf("exit %d", e.Code)
	case ws.Signaled():
		e.Signal = unix.SignalName(ws.Signal())
		if e.Signal == "" {
			e.Signal = fmt.Sprintf("signal %d", int(ws.Signal()))
		}
		e.Reason = "killed by " + e.Signal
	default:
		e.Reason = fmt.Sprintf("wait status %#x", uint32(ws))
	}
	if u.spec.Cgroup != "" {
		if n, ok := oomKills(u.spec.Cgroup); ok && n > p.oomBase {
			e.OOM = true
			e.Reason = "oom-killed (" + e.Reason + ")"
		}
	}
	return e
}

// afterExit removes what the process left behind: the rest of its process
// group and cgroup, then runs the unit's AfterStop.
func (s *Supervisor) afterExit(u *unit, p *process) {
	// Until the cleanup below is done the unit is neither up nor restarting;
	// a status that still said ready here would send dependents and
	// watchers to a dead process.
	s.mu.Lock()
	if u.state == StateRunning || u.state == StateReady {
		s.setStateLocked(u, StateStopping, "process ended; cleaning up")
	}
	s.mu.Unlock()
	if u.spec.Cgroup != "" {
		if len(cgroupProcs(u.spec.Cgroup)) > 0 {
			s.killAll(u, p.pid)
		}
		// AfterStop may remove the cgroup: rmdir needs it empty, and
		// killed processes take a moment to leave.
		if !waitCgroupEmpty(u.spec.Cgroup, killWait) {
			s.event(u, "stuck", fmt.Sprintf("cgroup %s still has processes %v after SIGKILL", u.spec.Cgroup, cgroupProcs(u.spec.Cgroup)))
		}
	} else {
		syscall.Kill(-p.pid, syscall.SIGKILL) // ESRCH when nothing is left
	}
	s.mu.Lock()
	u.pid = 0
	u.health = ""
	s.mu.Unlock()
	if u.spec.AfterStop != nil {
		func() {
			defer s.recoverGo(u, "after-stop")
			if err := u.spec.AfterStop(); err != nil {
				s.event(u, "after-stop", err.Error())
			}
		}()
	}
}
