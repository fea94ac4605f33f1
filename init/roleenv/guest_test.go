package roleenv

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GuestEnv, set in PID 1's environment (a key=value on the kernel command
// line), makes this test binary the init of a QEMU guest on Debian's
// kernel: it mounts what roles need (a real cgroup2 hierarchy with its
// controllers), loads the modules from /lib/modules/*.ko in the order
// GuestModules lists, runs the tests, prints GuestResultLine and powers
// off. The scenario is qemu-tests/roles_test.go.
const (
	GuestEnv        = "MAGESTACK_ROLEENV_GUEST"
	GuestResultLine = "roleenv-guest: tests exit code %d"
)

// GuestModules are what roles need from Debian's kernel, dependencies first.
var GuestModules = []string{"llc", "stp", "bridge", "veth", "overlay"}

func guestMain(m *testing.M) {
	if err := guestSetup(); err != nil {
		fmt.Printf("roleenv-guest: setup: %v\n", err)
	}
	flag.Parse()
	flag.Set("test.v", "true")
	code := m.Run()
	fmt.Printf(GuestResultLine+"\n", code)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func guestSetup() error {
	mounts := []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"},
		{"tmpfs", "/tmp", "tmpfs"},
		{"tmpfs", "/run", "tmpfs"},
	}
	for _, mt := range mounts {
		os.MkdirAll(mt.dst, 0o755)
		if err := unix.Mount(mt.src, mt.dst, mt.fs, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", mt.dst, err)
		}
	}
	for _, mod := range GuestModules {
		f, err := os.Open(filepath.Join("/lib/modules", mod+".ko"))
		if err != nil {
			return fmt.Errorf("module %s: %w", mod, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load module %s: %w", mod, err)
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	return nil
}
