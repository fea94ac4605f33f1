package supervise

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/health"
	"magestack/init/logbuf"
)

const busybox = "/bin/busybox"

func needBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("needs %s (Debian busybox-static): %v", busybox, err)
	}
}

func sh(script string) []string { return []string{busybox, "sh", "-c", script} }

func newSup(t *testing.T, opts Options) *Supervisor {
	t.Helper()
	s := New(slog.New(slog.NewTextHandler(testWriter{t}, nil)), opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.StopAll(ctx); err != nil {
			t.Errorf("StopAll: %v", err)
		}
	})
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitFor polls cond until it holds, failing after a generous bound.
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func unitStatus(t *testing.T, s *Supervisor, name string) UnitStatus {
	t.Helper()
	st, err := s.Unit(name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// alive reports whether pid runs; a zombie waiting for init to reap it is dead.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func TestKillRestartsWithBackoff(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	pol := RestartPolicy{Initial: 100 * time.Millisecond, Max: 400 * time.Millisecond, StableAfter: time.Minute, CrashLoopCount: 100, CrashLoopWindow: time.Minute}
	if err := s.Add(Spec{Name: "victim", Command: sh("echo up $$; exec sleep 1000"), Restart: pol}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), "victim"); err != nil {
		t.Fatal(err)
	}
	// Expected delays: 100ms doubling, capped at 400ms.
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}
	var pid int
	waitFor(t, "first start", 10*time.Second, func() bool {
		st := unitStatus(t, s, "victim")
		pid = st.PID
		return st.State == StateReady
	})
	for i, delay := range want {
		killedAt := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var st UnitStatus
		waitFor(t, fmt.Sprintf("restart %d", i+1), 10*time.Second, func() bool {
			st = unitStatus(t, s, "victim")
			return st.PID != 0 && st.PID != pid && st.State == StateReady
		})
		gap := st.Started.Sub(killedAt)
		t.Logf("kill %d: restarted after %v (backoff %v)", i+1, gap, delay)
		if gap < delay {
			t.Errorf("kill %d: restarted after %v, before the %v backoff", i+1, gap, delay)
		}
		if gap > delay+2*time.Second {
			t.Errorf("kill %d: restarted after %v, far beyond the %v backoff", i+1, gap, delay)
		}
		if st.Restarts != i+1 {
			t.Errorf("restarts = %d, want %d", st.Restarts, i+1)
		}
		if st.LastExit == nil || st.LastExit.Signal != "SIGKILL" || st.LastExit.Reason != "killed by SIGKILL" {
			t.Errorf("last exit %+v, want killed by SIGKILL", st.LastExit)
		}
		pid = st.PID
	}
	// The new process really runs and logs.
	waitFor(t, "log line of the last start", 5*time.Second, func() bool {
		l, _ := s.Logs("victim")
		for _, line := range l.Tail(0) {
			if line.Stream == "stdout" && line.Text == fmt.Sprintf("up %d", pid) {
				return true
			}
		}
		return false
	})
}

func TestStableRunRestartsAtOnce(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	pol := RestartPolicy{Initial: 2 * time.Second, StableAfter: 200 * time.Millisecond}
	if err := s.Add(Spec{Name: "stable", Command: sh("exec sleep 1000"), Restart: pol}); err != nil {
		t.Fatal(err)
	}
	s.Start(context.Background(), "stable")
	var st UnitStatus
	waitFor(t, "ready", 10*time.Second, func() bool { st = unitStatus(t, s, "stable"); return st.State == StateReady })
	time.Sleep(300 * time.Millisecond) // past StableAfter
	pid := st.PID
	killedAt := time.Now()
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "restart", 10*time.Second, func() bool {
		st = unitStatus(t, s, "stable")
		return st.PID != 0 && st.PID != pid
	})
	if gap := st.Started.Sub(killedAt); gap >= 2*time.Second {
		t.Errorf("a unit that ran past StableAfter waited %v (the initial backoff) before restarting", gap)
	}
}

func TestCrashLoopMarksFailed(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	pol := RestartPolicy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, CrashLoopCount: 4, CrashLoopWindow: time.Minute}
	if err := s.Add(Spec{Name: "crasher", Command: sh("echo boom >&2; exit 3"), Restart: pol}); err != nil {
		t.Fatal(err)
	}
	s.Start(context.Background(), "crasher")
	var st UnitStatus
	waitFor(t, "failed", 10*time.Second, func() bool { st = unitStatus(t, s, "crasher"); return st.State == StateFailed })
	if !strings.Contains(st.Message, "crash loop: 4 exits") || !strings.Contains(st.Message, "exit 3") {
		t.Errorf("message %q", st.Message)
	}
	if st.LastExit == nil || st.LastExit.Code != 3 {
		t.Errorf("last exit %+v, want code 3", st.LastExit)
	}
	if st.Restarts != 3 {
		t.Errorf("restarts = %d, want 3 (4 starts)", st.Restarts)
	}
	if err := s.WaitReady(context.Background(), "crasher"); err == nil || !strings.Contains(err.Error(), "crasher failed") {
		t.Errorf("WaitReady = %v, want failed error", err)
	}
	// No more spinning.
	time.Sleep(300 * time.Millisecond)
	if again := unitStatus(t, s, "crasher"); again.Restarts != 3 || again.State != StateFailed {
		t.Errorf("after failing: state %s restarts %d", again.State, again.Restarts)
	}
	sawCrashLoop := false
	for len(events) > 0 {
		if ev := <-events; ev.Kind == "crash-loop" && ev.Unit == "crasher" {
			sawCrashLoop = true
		}
	}
	if !sawCrashLoop {
		t.Error("no crash-loop event")
	}
	l, _ := s.Logs("crasher")
	n := 0
	for _, line := range l.Tail(0) {
		if line.Stream == "stderr" && line.Text == "boom" {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d stderr lines 'boom', want 4", n)
	}
	// An explicit start revives it.
	if err := s.Start(context.Background(), "crasher"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restarted after explicit start", 10*time.Second, func() bool {
		return unitStatus(t, s, "crasher").Restarts > 3
	})
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestFailingHealthRestartsWithReason(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	index := filepath.Join(dir, "index.html")
	os.WriteFile(index, []byte("shop is up\n"), 0o644)
	addr := freePort(t)
	s := newSup(t, Options{})
	check := &health.Check{HTTP: "http://" + addr + "/index.html", BodyContains: "shop is up",
		Interval: 100 * time.Millisecond, Timeout: time.Second, Retries: 2, StartPeriod: 5 * time.Second}
	err := s.Add(Spec{Name: "web", Command: []string{busybox, "httpd", "-f", "-p", addr, "-h", dir}, Health: check,
		StopGrace: 2 * time.Second, Restart: RestartPolicy{Initial: 50 * time.Millisecond, StableAfter: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(context.Background(), "web")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	st := unitStatus(t, s, "web")
	if st.Health != "healthy" {
		t.Errorf("health %q, want healthy", st.Health)
	}
	pid := st.PID
	os.Remove(index) // httpd now answers 404
	waitFor(t, "restart after failing health", 15*time.Second, func() bool {
		st = unitStatus(t, s, "web")
		return st.Restarts == 1
	})
	if st.LastExit == nil || !strings.Contains(st.LastExit.Reason, "unhealthy") || !strings.Contains(st.LastExit.Reason, "status 404") {
		t.Errorf("last exit reason %+v, want unhealthy with status 404", st.LastExit)
	}
	if alive(pid) {
		t.Errorf("old httpd %d still alive", pid)
	}
	os.WriteFile(index, []byte("shop is up\n"), 0o644)
	if err := s.WaitReady(ctx, "web"); err != nil {
		t.Fatal(err)
	}
}

func TestDependencyOrder(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	// db becomes ready only when it says so on fd 3, 300ms after start.
	add := func(name string, after []string, script string, notify bool) {
		err := s.Add(Spec{Name: name, After: after, NotifyFD: notify, Command: sh(script), StopGrace: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	add("web", []string{"db"}, "exec sleep 1000", false) // added first on purpose
	add("lb", []string{"web"}, "exec sleep 1000", false)
	add("db", nil, "sleep 0.3; echo ready >&3; exec sleep 1000", true)
	if err := s.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb waiting for web", 5*time.Second, func() bool {
		st := unitStatus(t, s, "lb")
		return st.State == StateStarting && st.Message == "waiting for web"
	})
	ctx, cancelWait := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancelWait()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, n := range []string{"db", "web", "lb"} {
		pids = append(pids, unitStatus(t, s, n).PID)
	}
	if err := s.StopAll(ctx); err != nil {
		t.Fatal(err)
	}
	var seq []string
	for len(events) > 0 {
		ev := <-events
		if ev.Kind == "started" || ev.Kind == "ready" || ev.Kind == "stopped" {
			seq = append(seq, ev.Kind+" "+ev.Unit)
		}
	}
	want := "[started db ready db started web ready web started lb ready lb stopped lb stopped web stopped db]"
	if fmt.Sprint(seq) != want {
		t.Errorf("events\n %v\nwant\n %s", seq, want)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d alive after StopAll", pid)
		}
	}
	for _, n := range []string{"db", "web", "lb"} {
		if st := unitStatus(t, s, n); st.State != StateStopped || st.PID != 0 {
			t.Errorf("%s: %s pid %d after StopAll", n, st.State, st.PID)
		}
	}
}

// startStubborn starts unit "stubborn": a shell that ignores SIGTERM
// (it prints "got TERM") with a child in its process group; it returns
// both pids once the child is up.
func startStubborn(t *testing.T, s *Supervisor, grace time.Duration) (pid, child int) {
	t.Helper()
	script := `trap "echo got TERM" TERM; sleep 1000 & echo child $!; while :; do sleep 0.05; done`
	if err := s.Add(Spec{Name: "stubborn", Command: sh(script), StopGrace: grace}); err != nil {
		t.Fatal(err)
	}
	s.Start(context.Background(), "stubborn")
	waitFor(t, "child pid logged", 10*time.Second, func() bool {
		l, _ := s.Logs("stubborn")
		for _, line := range l.Tail(0) {
			if _, err := fmt.Sscanf(line.Text, "child %d", &child); err == nil {
				return true
			}
		}
		return false
	})
	return unitStatus(t, s, "stubborn").PID, child
}

func TestStopGraceThenKill(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	pid, child := startStubborn(t, s, 500*time.Millisecond)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Stop(ctx, "stubborn"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < 500*time.Millisecond {
		t.Errorf("stop took %v, less than the grace", took)
	}
	if alive(pid) || alive(child) {
		t.Errorf("after stop: shell alive %v, its child alive %v", alive(pid), alive(child))
	}
	st := unitStatus(t, s, "stubborn")
	if st.State != StateStopped || st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
		t.Errorf("status %s, last exit %+v: want stopped, killed by SIGKILL", st.State, st.LastExit)
	}
	l, _ := s.Logs("stubborn")
	var text []string
	for _, line := range l.Tail(0) {
		text = append(text, line.Text)
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{"got TERM", "SIGKILL"} {
		if !strings.Contains(all, want) {
			t.Errorf("log lacks %q:\n%s", want, all)
		}
	}
}

func TestStopPromptWhenSignalHonoured(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	s.Add(Spec{Name: "polite", Command: sh("exec sleep 1000"), StopGrace: 20 * time.Second})
	s.Start(context.Background(), "polite")
	waitFor(t, "ready", 10*time.Second, func() bool { return unitStatus(t, s, "polite").State == StateReady })
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Stop(ctx, "polite"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("stop took %v although SIGTERM ends sleep", took)
	}
	if st := unitStatus(t, s, "polite"); st.LastExit == nil || st.LastExit.Signal != "SIGTERM" {
		t.Errorf("last exit %+v, want SIGTERM", st.LastExit)
	}
}

func TestLogsCapturedAndRotated(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	s := newSup(t, Options{LogDir: dir, LogFileBytes: 4000, LogFiles: 2})
	script := `i=0; while [ $i -lt 200 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; exec sleep 1000`
	s.Add(Spec{Name: "chatty", Command: sh(script)})
	s.Start(context.Background(), "chatty")
	l, _ := s.Logs("chatty")
	waitFor(t, "400 lines", 10*time.Second, func() bool {
		n := 0
		for _, line := range l.Tail(0) {
			if line.Stream != "supervisor" {
				n++
			}
		}
		return n == 400
	})
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if fmt.Sprint(names) != "[chatty.log chatty.log.1 chatty.log.2]" {
		t.Errorf("log files %v", names)
	}
	// Oldest first: chatty.log.2, chatty.log.1, chatty.log.
	var all string
	for _, n := range []string{"chatty.log.2", "chatty.log.1", "chatty.log"} {
		b, _ := os.ReadFile(filepath.Join(dir, n))
		if len(b) > 4000 {
			t.Errorf("%s is %d bytes, over the 4000 limit", n, len(b))
		}
		all += string(b)
	}
	for _, want := range []string{" stderr err 199\n", " stdout out 199\n"} {
		if !strings.Contains(all, want) {
			t.Errorf("log files lack %q", want)
		}
	}
	kept := 0
	var prev string
	for _, line := range strings.Split(strings.TrimSpace(all), "\n") {
		ts := strings.Fields(line)[0]
		if ts < prev {
			t.Errorf("rotated files out of order: %s after %s", ts, prev)
		}
		prev = ts
		if !strings.Contains(line, " supervisor ") {
			kept++
		}
	}
	if kept >= 400 {
		t.Errorf("all %d lines kept: nothing rotated away (2 rotated files of 4000 bytes)", kept)
	}
}

func TestValidation(t *testing.T) {
	s := newSup(t, Options{})
	tests := []struct {
		spec Spec
		err  string
	}{
		{Spec{Name: "web/nginx", Command: []string{"x"}}, `unit name "web/nginx"`},
		{Spec{Name: "a"}, "command is empty"},
		{Spec{Name: "a", Command: []string{"x"}, After: []string{"a"}}, "depends on itself"},
		{Spec{Name: "a", Command: []string{"x"}, Health: &health.Check{}}, "one of exec, tcp or http"},
		{Spec{Name: "a", Command: []string{"x"}, Restart: RestartPolicy{Initial: time.Minute, Max: time.Second}}, "above max"},
	}
	for _, tt := range tests {
		if err := s.Add(tt.spec); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("Add(%+v) = %v, want %q", tt.spec.Name, err, tt.err)
		}
	}
	s.Add(Spec{Name: "x", Command: []string{"true"}, After: []string{"y"}})
	s.Add(Spec{Name: "y", Command: []string{"true"}, After: []string{"x"}})
	if err := s.StartAll(context.Background()); err == nil || !strings.Contains(err.Error(), "dependency cycle") {
		t.Errorf("StartAll with a cycle = %v", err)
	}
	s.Add(Spec{Name: "z", Command: []string{"true"}, After: []string{"nope"}})
	if err := s.Start(context.Background(), "z"); err == nil || !strings.Contains(err.Error(), `unknown unit "nope"`) {
		t.Errorf("Start with unknown dep = %v", err)
	}
	if err := s.Start(context.Background(), "ghost"); err == nil || !strings.Contains(err.Error(), `unknown unit "ghost"`) {
		t.Errorf("Start(ghost) = %v", err)
	}
	if st := unitStatus(t, s, "x"); st.State != StateStopped {
		t.Errorf("x is %s after failed StartAll", st.State)
	}
}

func TestStartFailureReported(t *testing.T) {
	s := newSup(t, Options{})
	s.Add(Spec{Name: "missing", Command: []string{"/nonexistent/daemon"},
		Restart: RestartPolicy{Initial: 10 * time.Millisecond, CrashLoopCount: 2}})
	s.Start(context.Background(), "missing")
	var st UnitStatus
	waitFor(t, "failed", 10*time.Second, func() bool { st = unitStatus(t, s, "missing"); return st.State == StateFailed })
	if st.LastExit == nil || !strings.Contains(st.LastExit.Reason, "start: ") || !strings.Contains(st.LastExit.Reason, "no such file") {
		t.Errorf("last exit %+v", st.LastExit)
	}
}

// countingStarter proves the process starter is injectable (PID 1 passes its reaper).
type countingStarter struct {
	mu sync.Mutex
	n  int
}

func (c *countingStarter) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return ExecStarter{}.Start(cmd)
}

func TestInjectedStarterAndUsage(t *testing.T) {
	needBusybox(t)
	cs := &countingStarter{}
	s := newSup(t, Options{Starter: cs})
	s.Add(Spec{Name: "busy", Command: sh("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 1000")})
	s.Start(context.Background(), "busy")
	waitFor(t, "cpu time accounted", 20*time.Second, func() bool {
		st := unitStatus(t, s, "busy")
		return st.CPUUsec > 0 && st.MemoryBytes > 0
	})
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.n != 1 {
		t.Errorf("injected starter used %d times, want 1", cs.n)
	}
}

func TestBackoffSequence(t *testing.T) {
	p := RestartPolicy{Initial: 100 * time.Millisecond, Max: 30 * time.Second}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
	for q, w := range want {
		if got := p.backoff(q); got != w {
			t.Errorf("backoff(%d) = %v, want %v", q, got, w)
		}
	}
	if got := p.backoff(20); got != 30*time.Second {
		t.Errorf("backoff(20) = %v, want the 30s cap", got)
	}
	if got := p.backoff(1000); got != 30*time.Second {
		t.Errorf("backoff(1000) = %v (overflow?)", got)
	}
}

func TestParseCgroupFiles(t *testing.T) {
	m := parseKeyed([]byte("low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"))
	if m["oom_kill"] != 1 || m["high"] != 12 {
		t.Errorf("memory.events parsed as %v", m)
	}
	m = parseKeyed([]byte("usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n"))
	if m["usage_usec"] != 123456 {
		t.Errorf("cpu.stat parsed as %v", m)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom 4\noom_kill 3\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "memory.current"), []byte("8675309\n"), 0o644)
	if n, ok := oomKills(dir); !ok || n != 3 {
		t.Errorf("oomKills = %d %v", n, ok)
	}
	if n, ok := cgroupMemory(dir); !ok || n != 8675309 {
		t.Errorf("cgroupMemory = %d %v", n, ok)
	}
	if _, ok := cgroupCPUUsec(dir); ok {
		t.Error("cpu.stat absent but read")
	}
	if IsCgroup2(dir) {
		t.Errorf("%s taken for cgroup2", dir)
	}
}

// The cgroup tests need a writable cgroup v2 hierarchy: QEMU with Debian's
// kernel (qemu-tests/supervise_test.go runs this package as the guest's
// init). This development host mounts cgroups in v1 hybrid mode.
func needCgroup2(t *testing.T, controller string) string {
	t.Helper()
	root := "/sys/fs/cgroup"
	if !IsCgroup2(root) {
		t.Skip("/sys/fs/cgroup is not cgroup2 (statfs magic): cgroup placement, cgroup.kill, memory.events and usage are tested in QEMU (qemu-tests/supervise_test.go)")
	}
	if controller != "" {
		b, _ := os.ReadFile(filepath.Join(root, "cgroup.subtree_control"))
		if !strings.Contains(string(b), controller) {
			t.Skipf("the %s controller is not enabled in %s/cgroup.subtree_control", controller, root)
		}
	}
	needBusybox(t)
	cg := filepath.Join(root, fmt.Sprintf("supervise-test-%d-%s", os.Getpid(), t.Name()))
	t.Cleanup(func() { os.Remove(cg) })
	return cg
}

func TestCgroupPlacementAndKill(t *testing.T) {
	cg := needCgroup2(t, "")
	s := newSup(t, Options{})
	// The shell ignores SIGTERM and starts a child in its own session, out
	// of reach of a process-group kill: only the cgroup catches it.
	// The marker says the trap is set: a SIGTERM before that would end the
	// shell at once, and the exit would not be the grace's SIGKILL.
	armed := filepath.Join(t.TempDir(), "armed")
	script := "trap '' TERM; busybox setsid busybox sleep 1000 & : > " + armed + "; while :; do busybox sleep 0.05; done"
	s.Add(Spec{Name: "grouped", Cgroup: cg, Command: sh(script), StopGrace: 300 * time.Millisecond,
		Env:       []string{"PATH=/bin"},
		AfterStop: func() error { return os.Remove(cg) }}) // needs the cgroup empty
	s.Start(context.Background(), "grouped")
	waitFor(t, "two processes in the cgroup", 20*time.Second, func() bool { return len(cgroupProcs(cg)) >= 2 })
	waitFor(t, "trap set", 20*time.Second, func() bool { _, err := os.Stat(armed); return err == nil })
	st := unitStatus(t, s, "grouped")
	found := false
	for _, p := range cgroupProcs(cg) {
		found = found || p == st.PID
	}
	if !found {
		t.Errorf("main pid %d not in %s (placed at clone time): %v", st.PID, cg, cgroupProcs(cg))
	}
	waitFor(t, "cgroup usage", 20*time.Second, func() bool {
		st = unitStatus(t, s, "grouped")
		return st.CPUUsec > 0 && st.MemoryBytes > 0
	})
	t.Logf("cgroup usage: cpu %d usec, memory %d bytes", st.CPUUsec, st.MemoryBytes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Stop(ctx, "grouped"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Errorf("cgroup %s not removed by AfterStop (processes left: %v)", cg, cgroupProcs(cg))
	}
	l, _ := s.Logs("grouped")
	for _, line := range l.Tail(0) {
		if strings.Contains(line.Text, "after-stop") || strings.Contains(line.Text, "stuck") {
			t.Errorf("log: %s", line.Text)
		}
	}
	if st := unitStatus(t, s, "grouped"); st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
		t.Errorf("last exit %+v, want SIGKILL after the grace", st.LastExit)
	}
}

func TestCgroupOOMReported(t *testing.T) {
	cg := needCgroup2(t, "memory")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "memory.max"), []byte("16777216"), 0); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cg, "memory.swap.max"), []byte("0"), 0) // absent without swap accounting
	s := newSup(t, Options{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	// dd allocates a 64 MiB buffer and fills it from /dev/zero: over the 16 MiB limit.
	s.Add(Spec{Name: "hog", Cgroup: cg, Command: []string{busybox, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"},
		Restart: RestartPolicy{Initial: 50 * time.Millisecond, CrashLoopCount: 3}})
	s.Start(context.Background(), "hog")
	var st UnitStatus
	waitFor(t, "OOM kill reported", 60*time.Second, func() bool {
		st = unitStatus(t, s, "hog")
		return st.LastExit != nil
	})
	if !st.LastExit.OOM || !strings.HasPrefix(st.LastExit.Reason, "oom-killed") || st.LastExit.Signal != "SIGKILL" {
		t.Errorf("last exit %+v, want oom-killed by SIGKILL", st.LastExit)
	}
	waitFor(t, "crash loop after repeated OOM", 60*time.Second, func() bool { return unitStatus(t, s, "hog").State == StateFailed })
	saw := false
	for len(events) > 0 {
		if ev := <-events; ev.Kind == "exited" && strings.Contains(ev.Message, "oom-killed") {
			saw = true
		}
	}
	if !saw {
		t.Error("no exited event naming the OOM kill")
	}
}

func TestStartDuringStopStartsAfresh(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	// The unit is ready as soon as it runs, before the shell has set its
	// trap: a SIGTERM in that window ends it at once and there is no
	// "stopping" to see. The marker says the trap is set.
	armed := filepath.Join(t.TempDir(), "armed")
	s.Add(Spec{Name: "slowstop", Command: sh(`trap "sleep 0.3; exit 0" TERM; : > ` + armed + `; while :; do sleep 0.05; done`), StopGrace: 5 * time.Second})
	s.Start(context.Background(), "slowstop")
	waitFor(t, "ready", 10*time.Second, func() bool { return unitStatus(t, s, "slowstop").State == StateReady })
	waitFor(t, "trap set", 10*time.Second, func() bool { _, err := os.Stat(armed); return err == nil })
	old := unitStatus(t, s, "slowstop").PID
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(context.Background(), "slowstop") }()
	waitFor(t, "stopping", 10*time.Second, func() bool { return unitStatus(t, s, "slowstop").State == StateStopping })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx, "slowstop"); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "running again", 10*time.Second, func() bool {
		st := unitStatus(t, s, "slowstop")
		return st.State == StateReady && st.PID != old
	})
}

func TestOneShot(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	s.Add(Spec{Name: "migrate", Command: sh("echo migrated"), Restart: RestartPolicy{Never: true}})
	s.Add(Spec{Name: "broken", Command: sh("exit 4"), Restart: RestartPolicy{Never: true}})
	s.StartAll(context.Background())
	waitFor(t, "one-shots done", 10*time.Second, func() bool {
		return unitStatus(t, s, "migrate").State == StateStopped && unitStatus(t, s, "broken").State == StateFailed
	})
	if st := unitStatus(t, s, "migrate"); st.LastExit == nil || st.LastExit.Code != 0 || st.Restarts != 0 {
		t.Errorf("migrate: %+v", st)
	}
	if st := unitStatus(t, s, "broken"); st.Message != "one-shot exit 4" || st.Restarts != 0 {
		t.Errorf("broken: %s %q restarts %d", st.State, st.Message, st.Restarts)
	}
}

// TestChurn drives 40 units with kills, restarts, stops and starts from
// several goroutines at once; everything must settle and stop in bounds
// (run with -race to check the locking).
func TestChurn(t *testing.T) {
	needBusybox(t)
	if testing.Short() {
		t.Skip("churn takes a few seconds")
	}
	s := newSup(t, Options{})
	var names []string
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("svc%02d", i)
		var after []string
		if i > 0 && i%5 != 0 {
			after = []string{names[i-1]}
		}
		names = append(names, name)
		if err := s.Add(Spec{Name: name, After: after, Command: sh("exec sleep 1000"), StopGrace: 2 * time.Second,
			Restart: RestartPolicy{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, CrashLoopCount: 1000}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	events, cancelEv := s.Subscribe(16) // deliberately small: must not block supervision
	defer cancelEv()
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := 0; time.Now().Before(deadline); i++ {
				name := names[(i*7+g*11)%len(names)]
				switch (i + g) % 4 {
				case 0:
					if st, err := s.Unit(name); err == nil && st.PID != 0 {
						syscall.Kill(st.PID, syscall.SIGKILL)
					}
				case 1:
					s.Restart(ctx, name)
				case 2:
					s.Stop(ctx, name)
				case 3:
					s.Start(ctx, name)
				}
				s.Status()
			}
		}()
	}
	wg.Wait()
	for _, n := range names {
		s.Start(context.Background(), n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("after churn: %v", err)
	}
	var pids []int
	for _, st := range s.Status() {
		pids = append(pids, st.PID)
	}
	if err := s.StopAll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d alive after StopAll", pid)
		}
	}
	_ = events
}

func TestCgroupOOMOfChildReported(t *testing.T) {
	cg := needCgroup2(t, "memory")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "memory.max"), []byte("16777216"), 0); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cg, "memory.swap.max"), []byte("0"), 0)
	s := newSup(t, Options{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	// The main process survives; a child it runs is OOM-killed.
	s.Add(Spec{Name: "parent", Cgroup: cg, Env: []string{"PATH=/bin"},
		Command: sh("busybox sleep 0.5; busybox dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd ended $?; exec busybox sleep 1000")})
	s.Start(context.Background(), "parent")
	deadline := time.After(60 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Kind == "oom" {
				if !strings.Contains(ev.Message, "1 process(es) of the unit OOM-killed") {
					t.Errorf("oom event %q", ev.Message)
				}
				if st := unitStatus(t, s, "parent"); st.State != StateReady || st.Restarts != 0 {
					t.Errorf("parent %s restarts %d: the main process should have survived", st.State, st.Restarts)
				}
				return
			}
		case <-deadline:
			t.Fatal("no oom event within 60s")
		}
	}
}

// While an exited unit's cleanup (AfterStop) runs, its status must not
// still say ready: dependents and pollers would take a dead process for a
// live one.
func TestStatusDuringCleanupAfterExit(t *testing.T) {
	needBusybox(t)
	s := newSup(t, Options{})
	inCleanup, release := make(chan struct{}, 1), make(chan struct{})
	pol := RestartPolicy{StableAfter: time.Minute, CrashLoopCount: 100, CrashLoopWindow: time.Minute}
	spec := Spec{Name: "victim", Command: sh("exec sleep 1000"), Restart: pol, AfterStop: func() error {
		select {
		case inCleanup <- struct{}{}:
			<-release
		default:
		}
		return nil
	}}
	if err := s.Add(spec); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), "victim"); err != nil {
		t.Fatal(err)
	}
	var pid int
	waitFor(t, "first start", 10*time.Second, func() bool {
		st := unitStatus(t, s, "victim")
		pid = st.PID
		return st.State == StateReady
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inCleanup:
	case <-time.After(10 * time.Second):
		t.Fatal("AfterStop not called within 10 s of the kill")
	}
	st := unitStatus(t, s, "victim")
	close(release)
	if st.State != StateStopping || st.PID != 0 {
		t.Errorf("during cleanup: state %s pid %d, want %s and no pid", st.State, st.PID, StateStopping)
	}
	waitFor(t, "restart after cleanup", 10*time.Second, func() bool {
		st := unitStatus(t, s, "victim")
		return st.State == StateReady && st.PID != 0 && st.PID != pid
	})
}

// TestKillSkipsTheGrace: Kill ends a unit that ignores SIGTERM without its
// hour of grace, asked at once or while a graceful stop waits.
func TestKillSkipsTheGrace(t *testing.T) {
	needBusybox(t)
	for _, tt := range []struct {
		name       string
		stopFirst  bool
		wantTERMed bool
	}{
		{"kill at once", false, false},
		{"kill during a graceful stop", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newSup(t, Options{})
			pid, child := startStubborn(t, s, time.Hour)
			// Hang bounds, not timings: the grace is an hour.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stopped := make(chan error, 1)
			if tt.stopFirst {
				go func() { stopped <- s.Stop(ctx, "stubborn") }()
				waitFor(t, "the graceful stop under way", 10*time.Second, func() bool {
					l, _ := s.Logs("stubborn")
					return slices.ContainsFunc(l.Tail(0), func(line logbuf.Line) bool { return line.Text == "got TERM" })
				})
			}
			if err := s.Kill(ctx, "stubborn"); err != nil {
				t.Fatal(err)
			}
			if tt.stopFirst {
				if err := <-stopped; err != nil {
					t.Fatalf("the graceful stop: %v", err)
				}
			}
			// SIGKILL reaches a child still in exec a moment later.
			waitFor(t, "the shell and its child gone", 5*time.Second, func() bool { return !alive(pid) && !alive(child) })
			l, _ := s.Logs("stubborn")
			termed := slices.ContainsFunc(l.Tail(0), func(line logbuf.Line) bool { return line.Text == "got TERM" })
			if termed != tt.wantTERMed {
				t.Errorf("SIGTERM seen %v, want %v", termed, tt.wantTERMed)
			}
			if st := unitStatus(t, s, "stubborn"); st.State != StateStopped || st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
				t.Errorf("status %s, last exit %+v: want stopped by SIGKILL", st.State, st.LastExit)
			}
		})
	}
}
