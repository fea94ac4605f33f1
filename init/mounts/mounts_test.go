package mounts

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / /proc rw,nosuid,nodev,noexec shared:5 - proc proc rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1k
40 23 0:30 / /mnt/with\040space rw - tmpfs tmpfs rw
41 23 0:31 / /opt rw master:1 propagate_from:2 unbindable - cgroup2 cgroup2 rw
`
	got, err := parseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []MountPoint{
		{22, 1, "/proc", "proc"},
		{23, 22, "/dev", "devtmpfs"},
		{40, 23, "/mnt/with space", "tmpfs"},
		{41, 23, "/opt", "cgroup2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v", got)
	}
	if _, err := parseMountinfo(strings.NewReader("garbage line\n")); err == nil {
		t.Fatal("malformed mountinfo accepted")
	}
}

func TestDefaultCoversTheBootTree(t *testing.T) {
	want := map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs",
		"/run": "tmpfs", "/tmp": "tmpfs", "/sys/fs/cgroup": "cgroup2",
	}
	seen := map[string]int{}
	for i, s := range Default() {
		if m, ok := s.(Mount); ok {
			seen[m.Target] = i
			if w, ok := want[m.Target]; ok && w != m.FSType {
				t.Errorf("%s mounted as %s, want %s", m.Target, m.FSType, w)
			}
		}
	}
	for target := range want {
		if _, ok := seen[target]; !ok {
			t.Errorf("no mount for %s", target)
		}
	}
	if seen["/dev/pts"] < seen["/dev"] || seen["/sys/fs/cgroup"] < seen["/sys"] {
		t.Error("a mount comes before its parent")
	}
}

// TestApplyIsIdempotent mounts real filesystems under a temporary root, twice,
// then unmounts them all.
func TestApplyIsIdempotent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	root := t.TempDir()
	steps := []Step{
		Mount{Source: "proc", Target: "/proc", FSType: "proc"},
		Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Data: "mode=0755"},
		Dir{Path: "/run/magestack", Mode: 0o755},
		Mount{Source: "tmpfs", Target: "/run/magestack/inner", FSType: "tmpfs"},
		Symlink{Target: "/proc/self/fd", Link: "/dev/fd"},
		Mount{Source: "none", Target: "/nope", FSType: "no-such-fs", Optional: true},
	}
	defer unix.Unmount(filepath.Join(root, "run/magestack/inner"), unix.MNT_DETACH)
	defer unix.Unmount(filepath.Join(root, "run"), unix.MNT_DETACH)
	defer unix.Unmount(filepath.Join(root, "proc"), unix.MNT_DETACH)
	for pass := 1; pass <= 2; pass++ {
		if err := Apply(quietLog(), root, steps); err != nil {
			t.Fatalf("pass %d: %v", pass, err)
		}
	}
	count := map[string]int{}
	mps, err := Mounted()
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		if within(mp.Target, root) {
			count[strings.TrimPrefix(mp.Target, root)]++
		}
	}
	if want := map[string]int{"/proc": 1, "/run": 1, "/run/magestack/inner": 1}; !reflect.DeepEqual(count, want) {
		t.Fatalf("mounts after two passes = %v, want %v", count, want)
	}
	if l, err := os.Readlink(filepath.Join(root, "dev/fd")); err != nil || l != "/proc/self/fd" {
		t.Fatalf("symlink = %q, %v", l, err)
	}

	if err := UnmountAll(quietLog(), root); err != nil {
		t.Fatal(err)
	}
	if _, ok := MountedAt(filepath.Join(root, "run")); ok {
		t.Fatal("run still mounted after UnmountAll")
	}
}

func TestApplyReportsFailures(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Apply(quietLog(), root, []Step{
		Dir{Path: "/file/sub", Mode: 0o755},
		Dir{Path: "/ok", Mode: 0o755},
	})
	if err == nil || !strings.Contains(err.Error(), "/file/sub") {
		t.Fatalf("err = %v, want one naming /file/sub", err)
	}
	if _, serr := os.Stat(filepath.Join(root, "ok")); serr != nil {
		t.Fatal("a failing step stopped later steps")
	}
}

func TestCgroupControllersSkipsMissing(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cg")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("cpuset cpu pids\n"), 0o644)
	// A FIFO records every write, like the kernel file, which takes one
	// controller per write.
	ctl := filepath.Join(dir, "cgroup.subtree_control")
	if err := unix.Mkfifo(ctl, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	// Opened read-write, the FIFO always has a writer: reads never hit EOF
	// between the code's writes and its writes never find no reader.
	f, err := os.OpenFile(ctl, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 64)
		for strings.Count(string(all), "+") < 2 {
			n, err := f.Read(buf)
			if err != nil {
				break
			}
			all = append(all, buf[:n]...)
		}
		got <- string(all)
	}()
	if err := (CgroupControllers{Path: "/cg", Controllers: []string{"cpu", "memory", "pids", "io"}}).Apply(root); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "+cpu+pids" {
		t.Fatalf("writes = %q, want +cpu then +pids", s)
	}
}
