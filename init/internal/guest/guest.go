// Package guest lets a package's test binary be the init of a QEMU guest
// booted on Debian's kernel (qemu-tests builds it with go test -c and boots
// it as PID 1), so tests that need a real kernel facility (cgroup2,
// WireGuard, DRBD) run there: the guest mounts what they need, runs them
// verbosely, prints "<name>-guest: tests exit code N" and powers off.
package guest

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mount is one filesystem the guest mounts before the tests.
type Mount struct{ Source, Target, FSType string }

// Basic is what every guest mounts, followed by more: proc, sysfs,
// devtmpfs and a /tmp.
func Basic(more ...Mount) []Mount {
	return append([]Mount{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/tmp", "tmpfs"},
	}, more...)
}

// ResultLine is what the guest prints when the tests are done; the
// scenario in qemu-tests waits for it.
const ResultLine = "%s-guest: tests exit code %d"

// Main runs the tests as a guest's init when this process is PID 1 and env
// is set in its environment (a key=value on the kernel command line): setup
// first (a failure is printed and the tests run anyway, to say what
// broke), then every test verbosely, the result line, and power off; it
// does not return then. Otherwise it returns at once and the caller runs
// the tests as usual.
func Main(m *testing.M, name, env string, setup func() error) {
	if os.Getpid() != 1 || os.Getenv(env) == "" {
		return
	}
	if err := setup(); err != nil {
		fmt.Printf("%s-guest: setup: %v\n", name, err)
	}
	flag.Parse()
	flag.Set("test.v", "true")
	code := m.Run()
	fmt.Printf(ResultLine+"\n", name, code)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// MountAll mounts ms in order, making each target; one already mounted
// is fine.
func MountAll(ms []Mount) error {
	for _, mt := range ms {
		if err := os.MkdirAll(mt.Target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(mt.Source, mt.Target, mt.FSType, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", mt.Target, err)
		}
	}
	return nil
}

// LoopbackUp brings lo up: tests listen on 127.0.0.1.
func LoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// InsertModules loads each /lib/modules/<name>.ko (a flat directory, as
// the scenario's initramfs has it) in order, dependencies first; one
// already loaded is fine, and with skipNoDev a hardware-specific variant
// the machine lacks (ENODEV: crc32c_intel without SSE4.2 under TCG) is
// skipped.
func InsertModules(names []string, skipNoDev bool) error {
	for _, mod := range names {
		f, err := os.Open("/lib/modules/" + mod + ".ko")
		if err != nil {
			return fmt.Errorf("module %s: %w", mod, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if skipNoDev && errors.Is(err, unix.ENODEV) {
			fmt.Printf("guest: module %s: no such device, skipped\n", mod)
			continue
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", mod, err)
		}
	}
	return nil
}
