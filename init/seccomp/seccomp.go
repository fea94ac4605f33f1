// Package seccomp holds the syscall filter every role process runs under
// and installs it: on all threads of role-init (which then forks the
// role's services), or on one locked thread that forks a single command
// into a running role (init/roleexec), so both meet the same wall.
package seccomp

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// InstallAllThreads loads the default filter on every thread of the
// process (TSYNC), so whichever thread forks next hands it down.
func InstallAllThreads() error {
	return install(unix.SECCOMP_FILTER_FLAG_TSYNC)
}

// InstallThisThread loads the default filter on the calling thread only.
// The caller must hold the thread (runtime.LockOSThread) and never give it
// back to the scheduler: a filtered thread would run other goroutines.
func InstallThisThread() error {
	return install(0)
}

func install(flags uintptr) error {
	prog, err := Program()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog))); e != 0 {
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
