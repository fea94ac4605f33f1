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

func TestDenyFilterLayout(t *testing.T) {
	p := buildDenyFilter(0xc000003e, 0x40000000, []uint32{1, 2, 3})
	// Every jump must land inside the program, and the last two
	// instructions are allow then deny.
	for i, ins := range p {
		if ins.Code&0x07 == unix.BPF_JMP {
			for _, off := range []uint8{ins.Jt, ins.Jf} {
				if i+1+int(off) >= len(p) {
					t.Errorf("instruction %d jumps out of the program", i)
				}
			}
		}
	}
	last := p[len(p)-1]
	if last.K != unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM) || p[len(p)-2].K != unix.SECCOMP_RET_ALLOW {
		t.Errorf("program does not end allow, deny: %+v", p[len(p)-2:])
	}
	// The jeq for syscall 2 (index 5) jumps to deny.
	if got := 5 + 1 + int(p[5].Jt); got != len(p)-1 {
		t.Errorf("deny jump lands on %d, want %d", got, len(p)-1)
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
		out, err := exec.Command("/bin/sh", "-c", "grep ^Seccomp: /proc/self/status; unshare -u true 2>/dev/null; echo unshare=$?").CombinedOutput()
		done <- result{string(out), err}
	}
	go filtered()
	r := <-done
	if r.err != nil {
		t.Fatalf("%v: %s", r.err, r.out)
	}
	if !strings.Contains(r.out, "Seccomp:\t2") || strings.Contains(r.out, "unshare=0") {
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
