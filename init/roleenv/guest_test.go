package roleenv

import (
	"os"

	"magestack/init/internal/guest"
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

func guestSetup() error {
	err := guest.MountAll(guest.Basic(
		guest.Mount{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2"}, guest.Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs"}))
	if err != nil {
		return err
	}
	if err := guest.InsertModules(GuestModules, false); err != nil {
		return err
	}
	if err := guest.LoopbackUp(); err != nil {
		return err
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	return nil
}
