package roleexec

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"magestack/init/seccomp"
)

// The test binary doubles as a stand-in role-init under the seccomp
// filter: it installs it on every thread, then becomes sleep.
func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == "seccomp-standin" {
		if err := seccomp.InstallAllThreads(); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		err := syscall.Exec("/bin/sleep", []string{"sleep", "60"}, os.Environ())
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// startStandIn starts role in namespaces of its own and waits for it to
// become sleep (its rights are final then); it returns its pid.
func startStandIn(t *testing.T, role *exec.Cmd) int {
	t.Helper()
	role.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID}
	if err := role.Start(); err != nil {
		t.Skipf("cannot create namespaces here: %v", err)
	}
	t.Cleanup(func() { role.Process.Kill(); role.Wait() })
	pid := role.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if strings.TrimSpace(string(b)) == "sleep" {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatal("stand-in role never reached sleep")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestParseStatus(t *testing.T) {
	c, err := parseStatus([]byte("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t00000000000004c1\nCapEff:\t00000000000004c1\nCapBnd:\t00000000000004c1\nNoNewPrivs:\t1\nSeccomp:\t2\n"))
	if err != nil || c.eff != 0x4c1 || c.bnd != 0x4c1 || !c.noNewPrivs || !c.seccompFilter {
		t.Fatalf("parseStatus = %+v, %v", c, err)
	}
	if _, err := parseStatus([]byte("CapInh:\t0\n")); err == nil {
		t.Error("status without all four sets accepted")
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		pid  int
		argv []string
		want string
	}{
		{1234, []string{"nginx", "-t"}, "absolute path"},
		{0, []string{"/bin/true"}, "not running"},
		{1 << 30, []string{"/bin/true"}, "/proc/1073741824/status"},
	} {
		_, err := Run(context.Background(), tc.pid, tc.argv, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%d, %q) = %v, want an error naming %q", tc.pid, tc.argv, err, tc.want)
		}
	}
}

// A stand-in role: its own namespaces, a hostname of its own and a reduced
// bounding set; the command must see all three.
func TestRunInsideNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces)")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to reduce the stand-in role's capabilities")
	}
	pid := startStandIn(t, exec.Command("/bin/sh", "-c", "hostname roleexec-test && exec "+setpriv+" --bounding-set -all,+chown,+kill --inh-caps -all sleep 60"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, pid, []string{"/bin/sh", "-c", "hostname; echo pid=$$; grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; ls /sys/class/net; exit 3"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", res.Output)
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
	for _, want := range []string{"roleexec-test\n", "CapBnd:\t0000000000000021", "NoNewPrivs:\t1"} {
		if !strings.Contains(res.Output, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(res.Output, "pid=1\n") || strings.Contains(res.Output, "pid="+strconv.Itoa(os.Getpid())) {
		t.Errorf("pid looks wrong for a process in the role's PID namespace")
	}
	// The host is unchanged: this test's own threads keep every capability.
	self, err := readCaps(os.Getpid())
	if err != nil || self.bnd == 0x21 {
		t.Errorf("the caller's capabilities changed: %+v %v", self, err)
	}
	// Input reaches the command.
	in, err := Run(ctx, pid, []string{"/bin/sh", "-c", "tr a-z A-Z"}, Options{Stdin: strings.NewReader("config file\n")})
	if err != nil || in.Output != "CONFIG FILE\n" || in.ExitCode != 0 {
		t.Errorf("stdin: %q exit %d, %v", in.Output, in.ExitCode, err)
	}
	// Context end kills a hanging command.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, err := Run(ctx2, pid, []string{"/bin/sleep", "30"}, Options{}); err == nil {
		t.Error("a command outliving its context was not reported")
	}
}

// A command run in a role whose PID 1 is under the seccomp filter meets
// the same filter: it cannot, say, unshare a namespace of its own.
func TestRunUnderTheRoleFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces)")
	}
	if _, err := seccomp.Program(); err != nil {
		t.Skip(err)
	}
	pid := startStandIn(t, exec.Command("/proc/self/exe", "seccomp-standin"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, pid, []string{"/bin/sh", "-c", "grep ^Seccomp: /proc/self/status; unshare -u true 2>/dev/null; echo unshare=$?"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Output, "Seccomp:\t2") || strings.Contains(res.Output, "unshare=0") {
		t.Errorf("command in a filtered role is not filtered:\n%s", res.Output)
	}
	// The caller's own threads stay unfiltered.
	b, _ := os.ReadFile("/proc/self/status")
	if !strings.Contains(string(b), "Seccomp:\t0") {
		t.Error("the caller got the role's filter")
	}
}
