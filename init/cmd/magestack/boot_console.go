package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"magestack/init/pid1"
	"magestack/init/roleenv"
)

// The maintenance shell: with magestack.console=shell on the kernel command
// line, PID 1 keeps a shell on the console (serial or KVM) where staff run
// `magestack status`, `magestack logs`... It is off by default: whoever
// reaches the console gets root on the host, so a site enables it only where
// the console itself is guarded (serial-over-LAN behind the BMC, QEMU).
func init() {
	registerBootSteps(orderAPI+1, "console", func(b *bootEnv) []pid1.Step {
		if b.cmdline.Value("magestack.console") != "shell" {
			return nil
		}
		return []pid1.Step{{Name: "console", Run: b.consoleStep, Timeout: 10 * time.Second}}
	})
}

// consoleShell is busybox from the test image tree the initramfs carries.
var consoleShell = filepath.Join(roleenv.DefaultImageRoot, "busybox", "bin", "busybox")

func (b *bootEnv) consoleStep(ctx context.Context) error {
	bin := "/run/magestack/bin"
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		self = "/init"
	}
	os.Remove(filepath.Join(bin, "magestack"))
	if err := os.Symlink(self, filepath.Join(bin, "magestack")); err != nil {
		return err
	}
	if _, err := os.Stat(consoleShell); err != nil {
		return err
	}
	pid1.Go(b.log, "console shell", func() {
		for b.ctx.Err() == nil {
			b.runShell(bin)
			time.Sleep(time.Second)
		}
	})
	return nil
}

func (b *bootEnv) runShell(bin string) {
	tty, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		b.log.Error("console shell: /dev/console", "err", err)
		time.Sleep(10 * time.Second)
		return
	}
	defer tty.Close()
	cmd := exec.Command(consoleShell, "sh", "-l")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.Env = []string{"PATH=" + bin + ":/usr/share/magestack/images/busybox/bin", "HOME=/root", "TERM=vt100", "PS1=magestack# "}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	done, err := b.reaper.Start(cmd)
	if err != nil {
		b.log.Error("console shell", "err", err)
		time.Sleep(10 * time.Second)
		return
	}
	<-done
}
