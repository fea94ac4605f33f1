package roleinit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"magestack/init/seccomp"
	"magestack/services"
)

// lockDown reduces this process (every thread of it, so whichever thread
// forks a service hands the reduced set down) to the role's capabilities,
// sets no_new_privs and, unless disabled, installs the seccomp filter.
// It runs after the last mount: the filter forbids mounting.
func lockDown(capNames []string, withSeccomp bool) error {
	keep := map[uintptr]bool{}
	for _, n := range capNames {
		c, err := services.CapNumber(n)
		if err != nil {
			return fmt.Errorf("capabilities: %w", err)
		}
		keep[c] = true
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	// A capability the host itself lacks cannot be kept; asking for it
	// would fail capset as a whole.
	have, err := permitted()
	if err != nil {
		return err
	}
	for c := range keep {
		if have&(1<<c) == 0 {
			delete(keep, c)
		}
	}
	// Processes outside the role must not be able to read role-init's
	// memory or its file descriptors (which reach the host's cgroup and log
	// directories) through /proc/1: make it non-dumpable.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("set non-dumpable: %w", err)
	}
	for c := uintptr(0); c <= last; c++ {
		if keep[c] {
			continue
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0); e != 0 {
			return fmt.Errorf("drop capability %d from the bounding set: %w%s", c, e, cgoHint(e))
		}
	}
	var mask [2]uint32
	for c := range keep {
		mask[c/32] |= 1 << (c % 32)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: mask[0], Permitted: mask[0], Inheritable: mask[0]},
		{Effective: mask[1], Permitted: mask[1], Inheritable: mask[1]},
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w%s", e, cgoHint(e))
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		return fmt.Errorf("no_new_privs: %w", e)
	}
	if withSeccomp {
		if err := seccomp.InstallAllThreads(); err != nil {
			return err
		}
	}
	return nil
}

func permitted() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget: %w", err)
	}
	return uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32, nil
}

func cgoHint(e syscall.Errno) string {
	if e == syscall.ENOTSUP {
		return " (per-thread syscalls need a binary built with CGO_ENABLED=0)"
	}
	return ""
}

func lastCap() (uintptr, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("capabilities: cap_last_cap: %w", err)
	}
	return uintptr(n), nil
}
