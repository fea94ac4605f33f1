package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// v2Root finds a writable cgroup2 mount: /sys/fs/cgroup on a unified host,
// /sys/fs/cgroup/unified on a hybrid one (no controllers there, but groups,
// placement and cgroup.kill work).
func v2Root(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 3 && fs[2] == "cgroup2" && strings.Contains(","+fs[3]+",", ",rw,") {
			return fs[1]
		}
	}
	t.Skip("no writable cgroup2 mount on this host")
	return ""
}

func testGroup(t *testing.T, root string, lim Limits) *Group {
	t.Helper()
	rel := fmt.Sprintf("magestack-test-%d/%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	g, err := Create(root, rel, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		top, _ := Open(root, strings.Split(rel, "/")[0])
		if err := top.Remove(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return g
}

func TestCleanRelRejectsEscapes(t *testing.T) {
	for _, rel := range []string{"", "/", "..", "a/cgroup.procs"} {
		if _, err := Open("/sys/fs/cgroup", rel); err == nil {
			t.Errorf("Open(%q): want error", rel)
		}
	}
	g, err := Open("/sys/fs/cgroup", "/magestack//web1/")
	if err != nil || g.Rel() != "magestack/web1" {
		t.Fatalf("Open: %v %v", g, err)
	}
}

func TestLimitsValidate(t *testing.T) {
	tests := []struct {
		lim Limits
		ok  bool
	}{
		{Limits{}, true},
		{Limits{CPUWeight: 100, MemoryMax: 1 << 20, PidsMax: 10}, true},
		{Limits{CPUWeight: 10001}, false},
		{Limits{PidsMax: -1}, false},
	}
	for _, tt := range tests {
		if err := tt.lim.Validate(); (err == nil) != tt.ok {
			t.Errorf("%+v: err=%v, want ok=%v", tt.lim, err, tt.ok)
		}
	}
}

func TestCreateOnNonCgroup2Fails(t *testing.T) {
	_, err := Create(t.TempDir(), "magestack/web1", Limits{})
	if err == nil || !strings.Contains(err.Error(), "not a cgroup2 mount") {
		t.Fatalf("want a not-cgroup2 error, got %v", err)
	}
}

// A process cloned into the group is there from its first instruction, and
// cgroup.kill takes it and its forked children down together.
func TestPlaceAtCloneKillRemove(t *testing.T) {
	root := v2Root(t)
	g := testGroup(t, root, Limits{})
	fd, err := g.OpenFD()
	if err != nil {
		t.Fatal(err)
	}
	// sh forks a child sleep, so the kill must reach two processes.
	cmd := exec.Command("/bin/busybox", "sh", "-c", "/bin/busybox sleep 300 & /bin/busybox sleep 301; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	waitFor(t, func() bool { p, _ := g.Procs(); return len(p) == 3 }, "3 processes in the group")
	procs, _ := g.Procs()
	if !slices.Contains(procs, cmd.Process.Pid) {
		t.Fatalf("pid %d not in %v", cmd.Process.Pid, procs)
	}
	if pop, err := g.Populated(); err != nil || !pop {
		t.Fatalf("populated=%v err=%v", pop, err)
	}
	if _, err := g.Stats(); err != nil {
		t.Fatalf("stats: %v", err)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("want SIGKILL, got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("group dir still there: %v", err)
	}
}

// Remove kills a populated tree and removes it, deepest first.
func TestRemovePopulatedTree(t *testing.T) {
	root := v2Root(t)
	g := testGroup(t, root, Limits{})
	sub, err := Create(root, g.Rel()+"/svc", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := sub.OpenFD()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/busybox", "sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	go cmd.Wait() // reap, or the zombie keeps the group busy
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("group dir still there: %v", err)
	}
}

// Limits need the cpu, memory and pids controllers, which only a cgroup2
// hierarchy that owns them has (in QEMU with Debian's kernel, not on a
// hybrid host).
func TestLimitsWritten(t *testing.T) {
	root := v2Root(t)
	avail, _ := readWords(filepath.Join(root, "cgroup.controllers"))
	for _, c := range []string{"cpu", "memory", "pids"} {
		if !slices.Contains(avail, c) {
			t.Skipf("controller %q not available in %s (host cgroups are v1 hybrid); covered in QEMU", c, root)
		}
	}
	g := testGroup(t, root, Limits{CPUWeight: 250, MemoryMax: 64 << 20, PidsMax: 32})
	for file, want := range map[string]string{"cpu.weight": "250", "memory.max": "67108864", "pids.max": "32"} {
		b, err := os.ReadFile(filepath.Join(g.Path(), file))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q (%v), want %s", file, b, err, want)
		}
	}
	s, err := g.Stats()
	if err != nil || s.MemoryMax != 64<<20 {
		t.Fatalf("stats %+v %v", s, err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
