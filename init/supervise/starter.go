package supervise

import (
	"errors"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Starter starts a process and reports its wait status exactly once on the
// returned channel. The default, ExecStarter, waits with exec.Cmd.Wait,
// which is right unless something else in the process reaps children with
// wait4(-1) — as PID 1 does. There, pass the PID 1 reaper, which starts the
// command under its lock and hands each reaped status to its owner.
type Starter interface {
	Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error)
}

// ExecStarter starts with cmd.Start and waits with cmd.Wait.
type ExecStarter struct{}

// lostStatus is reported when the status was taken by someone else's wait4:
// exit code 255, so the unit is treated as failed and restarted.
const lostStatus = unix.WaitStatus(255 << 8)

func (ExecStarter) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- lostStatus // the unit is treated as exited and restarted
			}
		}()
		err := cmd.Wait()
		if cmd.ProcessState != nil {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
				ch <- unix.WaitStatus(ws)
				return
			}
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ch <- unix.WaitStatus(ee.Sys().(syscall.WaitStatus))
			return
		}
		ch <- lostStatus
	}()
	return ch, nil
}
