package roleinit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

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
		if err := installSeccomp(); err != nil {
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

// installSeccomp loads the default filter on every thread (TSYNC).
func installSeccomp() error {
	prog, err := seccompProgram()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("seccomp: install filter: %w", e)
	}
	return nil
}

// buildDenyFilter returns a BPF program that answers EPERM to every syscall
// in deny, to any syscall of a foreign architecture (i386, x32 numbers) and
// allows the rest.
func buildDenyFilter(arch uint32, x32Bit uint32, deny []uint32) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	const (
		ldAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
	)
	// Layout: 0 ld arch; 1 jeq arch; 2 ld nr; 3 jge x32; 4.. jeq nr; allow; deny.
	n := len(deny)
	denyAt := 4 + n + 1
	p := []unix.SockFilter{
		stmt(ldAbs, 4), // seccomp_data.arch
		jump(jeq, arch, 0, uint8(denyAt-2)),
		stmt(ldAbs, 0), // seccomp_data.nr
		jump(jge, x32Bit, uint8(denyAt-4), 0),
	}
	for i, nr := range deny {
		p = append(p, jump(jeq, nr, uint8(denyAt-(4+i)-1), 0))
	}
	p = append(p, stmt(ret, unix.SECCOMP_RET_ALLOW), stmt(ret, unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM)))
	return p
}
