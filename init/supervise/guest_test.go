package supervise

import (
	"os"
	"testing"

	"magestack/init/internal/guest"
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
	guest.Main(m, "supervise", GuestEnv, guestSetup)
	os.Exit(m.Run())
}

func guestSetup() error {
	if err := guest.MountAll(guest.Basic(guest.Mount{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2"})); err != nil {
		return err
	}
	// The health tests listen on 127.0.0.1.
	if err := guest.LoopbackUp(); err != nil {
		return err
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	// Child cgroups get memory.*, cpu.* and pids.* files.
	return os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory +cpu +pids"), 0)
}
