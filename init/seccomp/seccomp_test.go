package seccomp

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// run interprets prog (the instructions build emits) against one
// syscall, as the kernel would, and returns the action.
func run(t *testing.T, prog []unix.SockFilter, arch, nr uint32, arg0 uint64) uint32 {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		ins := prog[pc]
		switch ins.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			switch ins.K {
			case 0:
				acc = nr
			case 4:
				acc = arch
			case 16:
				acc = uint32(arg0)
			case 20:
				acc = uint32(arg0 >> 32)
			default:
				t.Fatalf("load of seccomp_data offset %d", ins.K)
			}
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			var taken bool
			switch ins.Code & 0xf0 {
			case unix.BPF_JEQ:
				taken = acc == ins.K
			case unix.BPF_JGE:
				taken = acc >= ins.K
			case unix.BPF_JSET:
				taken = acc&ins.K != 0
			}
			off := ins.Jf
			if taken {
				off = ins.Jt
			}
			if pc+1+int(off) >= len(prog) {
				t.Fatalf("instruction %d jumps out of the program", pc)
			}
			pc += int(off)
		case unix.BPF_RET | unix.BPF_K:
			return ins.K
		default:
			t.Fatalf("instruction %d: unexpected code %#x", pc, ins.Code)
		}
	}
	t.Fatal("the program ran off its end")
	return 0
}

func TestFilterVerdicts(t *testing.T) {
	prog, err := Program()
	if err != nil {
		t.Skip(err)
	}
	const arch = unix.AUDIT_ARCH_X86_64
	var (
		allow = uint32(unix.SECCOMP_RET_ALLOW)
		eperm = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		// What pthread_create and fork pass to clone.
		thread = uint64(unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD |
			unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID)
		fork = uint64(unix.CLONE_CHILD_SETTID | unix.CLONE_CHILD_CLEARTID | uint64(unix.SIGCHLD))
	)
	for _, tt := range []struct {
		name string
		arch uint32
		nr   uint32
		arg0 uint64
		want uint32
	}{
		{"read", arch, unix.SYS_READ, 0, allow},
		{"a thread", arch, unix.SYS_CLONE, thread, allow},
		{"a fork", arch, unix.SYS_CLONE, fork, allow},
		{"clone into a user namespace", arch, unix.SYS_CLONE, fork | unix.CLONE_NEWUSER, eperm},
		{"clone into a mount namespace", arch, unix.SYS_CLONE, fork | unix.CLONE_NEWNS, eperm},
		{"clone into a network namespace", arch, unix.SYS_CLONE, unix.CLONE_NEWNET, eperm},
		// Go starts services with clone3 (CLONE_INTO_CGROUP); its user
		// namespaces are closed by init/sysctl instead.
		{"clone3", arch, unix.SYS_CLONE3, 0, allow},
		{"unshare", arch, unix.SYS_UNSHARE, 0, eperm},
		{"setns", arch, unix.SYS_SETNS, 0, eperm},
		{"io_uring_setup", arch, unix.SYS_IO_URING_SETUP, 0, eperm},
		{"mount", arch, unix.SYS_MOUNT, 0, eperm},
		{"init_module", arch, unix.SYS_INIT_MODULE, 0, eperm},
		{"x32 numbering", arch, 0x40000000 | unix.SYS_READ, 0, eperm},
		{"i386 syscall", unix.AUDIT_ARCH_I386, 3, 0, eperm},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(t, prog, tt.arch, tt.nr, tt.arg0); got != tt.want {
				t.Errorf("verdict %#x, want %#x", got, tt.want)
			}
		})
	}
}

// A filter on one locked thread reaches the command forked from it and
// nothing else of the process.
func TestInstallThisThreadReachesChildOnly(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("default filter is amd64 only")
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	var filtered func()
	filtered = func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if unix.Gettid() == unix.Getpid() {
			// The main thread never ends; filter another one.
			go filtered()
			runtime.UnlockOSThread()
			return
		}
		if err := InstallThisThread(); err != nil {
			done <- result{err: err}
			return
		}
		// unshare(1) with a user namespace, and busybox's threads and
		// forks, must behave: the first refused, the rest working.
		out, err := exec.Command("/bin/sh", "-c", "grep ^Seccomp: /proc/self/status; unshare -u true 2>/dev/null; echo unshare=$?; "+
			"unshare -U true 2>/dev/null; echo userns=$?; (echo forked) | cat").CombinedOutput()
		done <- result{string(out), err}
	}
	go filtered()
	r := <-done
	if r.err != nil {
		t.Fatalf("%v: %s", r.err, r.out)
	}
	if !strings.Contains(r.out, "Seccomp:\t2") || strings.Contains(r.out, "unshare=0") || strings.Contains(r.out, "userns=0") ||
		!strings.Contains(r.out, "forked") {
		t.Errorf("command forked from the filtered thread is not filtered:\n%s", r.out)
	}
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(unix.Getpid()) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "Seccomp:\t0") {
		t.Errorf("the process's main thread got the filter too")
	}
}
