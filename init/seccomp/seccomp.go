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

// policy is what a filter refuses.
type policy struct {
	arch   uint32   // the only audit architecture allowed (AUDIT_ARCH_*)
	x32Bit uint32   // syscall numbers at or above this are x32: refused
	deny   []uint32 // refused with EPERM
	// clone is the clone syscall's number; a call whose flags (first
	// argument, low 32 bits) have any of cloneDeny set is refused with
	// EPERM. Threads and forks pass.
	clone, cloneDeny uint32
}

// build returns the BPF program for p. Instructions are laid out as
//
//	ld arch; jeq arch else DENY; ld nr; jge x32 DENY
//	jeq deny[i] DENY ...; jeq clone else ALLOW
//	ld args[0]; jset cloneDeny DENY else ALLOW
//	ALLOW: ret allow; DENY: ret EPERM
//
// and every jump is computed from those labels (BPF jumps only forward).
func (p policy) build() []unix.SockFilter {
	const (
		ldAbs  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge    = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jset   = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret    = unix.BPF_RET | unix.BPF_K
		offNr  = 0
		offArc = 4
		offArg = 16 // seccomp_data.args[0], low half on little-endian
	)
	n := 4 + len(p.deny) + 3
	allow, deny := n, n+1
	var prog []unix.SockFilter
	// to is the jump offset from the instruction being appended to target.
	to := func(target int) uint8 { return uint8(target - len(prog) - 1) }
	add := func(code uint16, k uint32, jt, jf int) {
		ins := unix.SockFilter{Code: code, K: k}
		if code&0x07 == unix.BPF_JMP {
			ins.Jt, ins.Jf = to(jt), to(jf)
		}
		prog = append(prog, ins)
	}
	next := func() int { return len(prog) + 1 }
	add(ldAbs, offArc, 0, 0)
	add(jeq, p.arch, next(), deny)
	add(ldAbs, offNr, 0, 0)
	add(jge, p.x32Bit, deny, next())
	for _, nr := range p.deny {
		add(jeq, nr, deny, next())
	}
	add(jeq, p.clone, next(), allow)
	add(ldAbs, offArg, 0, 0)
	add(jset, p.cloneDeny, deny, allow)
	add(ret, unix.SECCOMP_RET_ALLOW, 0, 0)
	add(ret, unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM), 0, 0)
	return prog
}
