package roleinit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"magestack/init/seccomp"
	"magestack/services"
)

// The test binary doubles as the probe process, so the filter and the
// capability drop are exercised in a real, separate process.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "probe" {
		os.Exit(probe(os.Args[2], os.Args[3:]))
	}
	os.Exit(m.Run())
}

// probe runs in a private mount namespace: it optionally locks itself down,
// then tries a mount and reports the errno.
func probe(mode string, args []string) int {
	switch mode {
	case "seccomp":
		if err := seccomp.InstallAllThreads(); err != nil {
			fmt.Println("install:", err)
			return 1
		}
	case "lockdown":
		if err := lockDown(args, true); err != nil {
			fmt.Println("lockdown:", err)
			return 1
		}
	}
	err := unix.Mount("probe", os.TempDir(), "tmpfs", 0, "size=1m")
	fmt.Printf("mount=%v\n", errName(err))
	_, _, e := unix.Syscall(unix.SYS_KEXEC_LOAD, 0, 0, 0)
	fmt.Printf("kexec=%v\n", errName(e))
	fmt.Printf("unshare=%v\n", errName(unix.Unshare(unix.CLONE_NEWUTS)))
	fmt.Printf("getpid_ok=%v\n", os.Getpid() > 0)
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		b, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"CapEff:", "CapBnd:", "NoNewPrivs:", "Seccomp:"} {
				if strings.HasPrefix(l, k) {
					fmt.Printf("task %s %s\n", t.Name(), strings.Join(strings.Fields(l), " "))
				}
			}
		}
	}
	return 0
}

func errName(err error) string {
	if err == nil || err == syscall.Errno(0) {
		return "ok"
	}
	if e, ok := err.(syscall.Errno); ok {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

func runProbe(t *testing.T, mode string, args ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, capabilities)")
	}
	cmd := exec.Command("/proc/self/exe", append([]string{"probe", mode}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe %s: %v\n%s", mode, err, out)
	}
	return string(out)
}

func TestSeccompDeniesMountAndKexec(t *testing.T) {
	// Without the filter, root in a private mount namespace can mount: the
	// denial below is the filter's doing.
	if out := runProbe(t, "none"); !strings.Contains(out, "mount=ok") || !strings.Contains(out, "unshare=ok") {
		t.Fatalf("control run cannot mount:\n%s", out)
	}
	out := runProbe(t, "seccomp")
	for _, want := range []string{"mount=EPERM", "kexec=EPERM", "unshare=EPERM", "getpid_ok=true"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %s:\n%s", want, out)
		}
	}
	// TSYNC: every thread of the Go process carries the filter.
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Seccomp:") && !strings.HasSuffix(l, "Seccomp: 2") {
			t.Errorf("thread without the filter: %s", l)
		}
	}
}

func TestLockDownEveryThread(t *testing.T) {
	if cgoEnabled {
		t.Skip("lockDown uses syscall.AllThreadsSyscall, which needs CGO_ENABLED=0 (make test sets it)")
	}
	out := runProbe(t, "lockdown", "CAP_NET_BIND_SERVICE", "CAP_KILL")
	want := fmt.Sprintf("%016x", uint64(1)<<unix.CAP_NET_BIND_SERVICE|uint64(1)<<unix.CAP_KILL)
	n := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "task" {
			continue
		}
		switch f[2] {
		case "CapEff:", "CapBnd:":
			n++
			if f[3] != want {
				t.Errorf("task %s %s %s, want %s", f[1], f[2], f[3], want)
			}
		case "NoNewPrivs:":
			if f[3] != "1" {
				t.Errorf("task %s no_new_privs %s", f[1], f[3])
			}
		}
	}
	if n < 2 {
		t.Fatalf("no task status read:\n%s", out)
	}
	if !strings.Contains(out, "mount=EPERM") {
		t.Errorf("locked-down process could mount:\n%s", out)
	}
}

func TestSpecValidate(t *testing.T) {
	img := t.TempDir()
	good := Spec{Name: "web1", Image: img, StateDir: "/run/x", Payload: services.Payload{}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mut  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Name = "a/b" }, "instance name"},
		{func(s *Spec) { s.Image = "rel" }, "image"},
		{func(s *Spec) { s.Image = filepath.Join(img, "missing") }, "not a directory or squashfs"},
		{func(s *Spec) { s.StateDir = "" }, "state_dir"},
		{func(s *Spec) { s.Volume = "data" }, "volume"},
		{func(s *Spec) { s.KeepRoot = true }, "keep_root needs a volume"},
		{func(s *Spec) { s.APISocket = "x.sock" }, "api_socket"},
		{func(s *Spec) { s.Payload.Caps = []string{"CAP_SYS_ADMIN"} }, "CAP_SYS_ADMIN"},
	}
	for _, tt := range tests {
		s := good
		tt.mut(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("got %v, want an error naming %q", err, tt.want)
		}
	}
	path := filepath.Join(t.TempDir(), "spec.json")
	if err := good.Write(path); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("spec mode %v, want 0600", fi.Mode().Perm())
	}
	back, err := LoadSpec(path)
	if err != nil || back.Name != "web1" {
		t.Fatalf("%+v %v", back, err)
	}
	os.WriteFile(path, []byte(`{"name": 3}`), 0o600)
	if _, err := LoadSpec(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("bad spec error should name the file: %v", err)
	}
}

func TestRunRefusesWhenNotPID1(t *testing.T) {
	if code := Main([]string{"/nonexistent/spec.json"}); code == 0 {
		t.Fatal("role-init outside a PID namespace must fail")
	}
}
