package supervise

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GuestEnv, when set in PID 1's environment (a kernel command line
// key=value), makes this test binary the init of a QEMU guest with Debian's
// kernel: it mounts what the tests need, including a real cgroup2
// hierarchy, runs them, prints GuestResultLine and powers off. The scenario
// is qemu-tests/supervise_test.go.
const (
	GuestEnv        = "MAGESTACK_SUPERVISE_GUEST"
	GuestResultLine = "supervise-guest: tests exit code %d"
)

func TestMain(m *testing.M) {
	if os.Getpid() != 1 || os.Getenv(GuestEnv) == "" {
		os.Exit(m.Run())
	}
	if err := guestSetup(); err != nil {
		fmt.Printf("supervise-guest: setup: %v\n", err)
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
	}
	for _, mt := range mounts {
		os.MkdirAll(mt.dst, 0o755)
		if err := unix.Mount(mt.src, mt.dst, mt.fs, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", mt.dst, err)
		}
	}
	// The health tests listen on 127.0.0.1.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	// Child cgroups get memory.*, cpu.* and pids.* files.
	return os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory +cpu +pids"), 0)
}
