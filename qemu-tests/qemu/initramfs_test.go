package qemu

import (
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestWriteInitramfs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.ko")
	if err := os.WriteFile(src, []byte("module bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "initramfs.img")
	err := WriteInitramfs(dst, []File{
		{Path: "/init", Data: []byte("#!init")},
		{Path: "lib/modules/01-x.ko", Src: src, Mode: 0o644},
		{Path: "sbin/modprobe", Symlink: "/init"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytesReaderAt(raw)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Record{}
	var order []string
	for _, r := range recs {
		got[r.Name] = r
		order = append(order, r.Name)
	}
	want := map[string]uint64{
		"dev":                 cpio.S_IFDIR,
		"dev/console":         cpio.S_IFCHR,
		"init":                cpio.S_IFREG,
		"lib":                 cpio.S_IFDIR,
		"lib/modules":         cpio.S_IFDIR,
		"lib/modules/01-x.ko": cpio.S_IFREG,
		"sbin/modprobe":       cpio.S_IFLNK,
	}
	for name, typ := range want {
		r, ok := got[name]
		if !ok {
			t.Errorf("%s missing; archive has %q", name, order)
			continue
		}
		if r.Mode&cpio.S_IFMT != typ {
			t.Errorf("%s mode %o, want type %o", name, r.Mode, typ)
		}
	}
	if r := got["lib/modules/01-x.ko"]; r.Mode&0o777 != 0o644 {
		t.Errorf("module perm %o", r.Mode&0o777)
	}
	if r := got["init"]; r.Mode&0o777 != 0o755 {
		t.Errorf("init perm %o, want default 0755", r.Mode&0o777)
	}
	if c := got["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("console device %d:%d", c.Rmajor, c.Rminor)
	}
	b := make([]byte, 12)
	if _, err := got["lib/modules/01-x.ko"].ReadAt(b, 0); err != nil || string(b) != "module bytes" {
		t.Errorf("module content %q, %v", b, err)
	}
}

func TestWriteInitramfsMissingSource(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "i.img")
	err := WriteInitramfs(dst, []File{{Path: "init", Src: "/nonexistent/magestack"}})
	if err == nil {
		t.Fatal("no error for a missing source file")
	}
	if _, serr := os.Stat(dst); serr == nil {
		t.Fatal("half-written archive left behind")
	}
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
