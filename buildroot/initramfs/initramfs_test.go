package initramfs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

type got struct {
	mode   uint64
	data   string
	rmajor uint64
	rminor uint64
}

func readBack(t *testing.T, b []byte) ([]string, map[string]got) {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	var order []string
	m := map[string]got{}
	for _, r := range recs {
		var data []byte
		if r.ReaderAt != nil {
			data, _ = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		}
		if r.MTime != MTime || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want fixed", r.Name, r.MTime, r.UID, r.GID)
		}
		order = append(order, r.Name)
		m[r.Name] = got{r.Mode, string(data), r.Rmajor, r.Rminor}
	}
	return order, m
}

func TestArchiveContent(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "prog")
	os.WriteFile(src, []byte("#!binary"), 0o755)
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("ID=busybox\n"), 0o644)
	os.Symlink("/bin/busybox", filepath.Join(tree, "sh"))

	a := New()
	steps := []error{
		a.File("/init", src),
		a.Symlink("/bin/magestack", "../init"),
		a.Dir("/proc", 0o555),
		a.CharDev("/dev/console", 0o600, 5, 1),
		a.Bytes("/lib/modules/6.1/modules.dep", []byte("kernel/x.ko:\n"), 0o644),
		a.Tree(tree, "/usr/share/img"),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if err := a.Write(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b.Bytes()[b.Len()-200:], []byte(cpio.Trailer)) {
		t.Error("archive does not end with the cpio trailer")
	}
	order, m := readBack(t, b.Bytes())
	want := []string{"bin", "bin/magestack", "dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/6.1",
		"lib/modules/6.1/modules.dep", "proc", "usr", "usr/share", "usr/share/img", "usr/share/img/etc",
		"usr/share/img/etc/os-release", "usr/share/img/sh"}
	if !reflect.DeepEqual(order, want) {
		t.Fatalf("order:\n%v\nwant\n%v", order, want)
	}
	checks := map[string]got{
		"init":                         {cpio.S_IFREG | 0o755, "#!binary", 0, 0},
		"bin/magestack":                {cpio.S_IFLNK | 0o777, "../init", 0, 0},
		"proc":                         {cpio.S_IFDIR | 0o555, "", 0, 0},
		"lib":                          {cpio.S_IFDIR | 0o755, "", 0, 0},
		"dev/console":                  {cpio.S_IFCHR | 0o600, "", 5, 1},
		"usr/share/img/etc/os-release": {cpio.S_IFREG | 0o644, "ID=busybox\n", 0, 0},
		"usr/share/img/sh":             {cpio.S_IFLNK | 0o777, "/bin/busybox", 0, 0},
	}
	for name, w := range checks {
		if m[name] != w {
			t.Errorf("%s: got %+v want %+v", name, m[name], w)
		}
	}
}

func TestDeterministic(t *testing.T) {
	build := func() []byte {
		a := New()
		for _, p := range []string{"/z", "/a/b/c", "/m"} {
			if err := a.Bytes(p, []byte(p), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var b bytes.Buffer
		if err := a.Write(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	if !bytes.Equal(build(), build()) {
		t.Fatal("two builds of the same input differ")
	}
}

func TestErrors(t *testing.T) {
	a := New()
	if err := a.Bytes("/x", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Bytes("/x", nil, 0o644); err == nil || !strings.Contains(err.Error(), "/x") {
		t.Errorf("duplicate path: want error naming /x, got %v", err)
	}
	if err := a.Dir("/", 0o755); err == nil {
		t.Error("root as destination must be refused")
	}
	if err := a.File("/y", "/nonexistent/file"); err == nil || !strings.Contains(err.Error(), "/nonexistent/file") {
		t.Errorf("missing source: want error naming it, got %v", err)
	}
	if err := a.File("/y", t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as file: got %v", err)
	}
	if err := a.Bytes("/x/child", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(io.Discard); err == nil || !strings.Contains(err.Error(), "parent /x is not a directory") {
		t.Errorf("file under a file: got %v", err)
	}
}
