package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

const staticProg = "/bin/busybox" // busybox-static: stands in for the static magestack binary

type entry struct {
	rec  cpio.Record
	data []byte
}

func readImage(t *testing.T, file string) map[string]entry {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, io.SeekStart)
	var zr io.Reader
	switch {
	case bytes.Equal(magic[:2], []byte{0x1f, 0x8b}):
		if zr, err = gzip.NewReader(f); err != nil {
			t.Fatal(err)
		}
	case bytes.Equal(magic, []byte{0x02, 0x21, 0x4c, 0x18}): // LZ4 legacy, what the kernel reads
		zr = lz4.NewReader(f)
	case string(magic) == "0707":
		zr = f
	default:
		t.Fatalf("image starts with %x: not gzip, LZ4 legacy or cpio", magic)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("image is not newc cpio: %v", err)
	}
	out := map[string]entry{}
	for _, r := range recs {
		var data []byte
		if r.ReaderAt != nil {
			data, _ = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		}
		out[r.Name] = entry{r, data}
	}
	return out
}

// kernelModules returns the module tree of the kernel `make kernel` chose,
// else any extracted one, else "".
func kernelModules(t *testing.T) string {
	const kernelDir = "../../../build/kernel"
	if v, err := os.ReadFile(filepath.Join(kernelDir, "version")); err == nil {
		d := filepath.Join(kernelDir, "root/lib/modules", strings.TrimSpace(string(v)))
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(kernelDir, "root/lib/modules/*"))
	if len(dirs) == 0 {
		return ""
	}
	return dirs[len(dirs)-1]
}

func TestImageContent(t *testing.T) {
	for _, p := range []string{staticProg, "/bin/ls"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "busybox-image")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.Symlink("busybox", filepath.Join(tree, "bin", "sh"))
	os.WriteFile(filepath.Join(dir, "motd"), []byte("hello\n"), 0o644)
	out := filepath.Join(dir, "initramfs.img")
	args := []string{"-o", out, "-init", staticProg, "-bin", "/bin/ls",
		"-tree", tree + ":/usr/share/magestack/images/busybox", "-file", filepath.Join(dir, "motd") + ":/etc/motd", "-symlink", "/sbin/ls:../bin/ls"}
	mods := kernelModules(t)
	if mods != "" {
		args = append(args, "-modules", mods, "-modules-list", "../../modules.txt")
	} else {
		t.Log("kernel not fetched: module part of the image not checked (run `make kernel`)")
	}
	if err := run(args); err != nil {
		t.Fatal(err)
	}
	img := readImage(t, out)

	want, _ := os.ReadFile(staticProg)
	if !bytes.Equal(img["init"].data, want) || img["init"].rec.Mode != cpio.S_IFREG|0o755 {
		t.Errorf("/init is not the given binary with mode 0755 (mode %#o)", img["init"].rec.Mode)
	}
	if e := img["bin/magestack"]; e.rec.Mode&cpio.S_IFMT != cpio.S_IFLNK || string(e.data) != "../init" {
		t.Errorf("/bin/magestack should link to ../init, got mode %#o %q", e.rec.Mode, e.data)
	}
	devs := map[string][2]uint64{"dev/console": {5, 1}, "dev/null": {1, 3}}
	for name, mm := range devs {
		e, ok := img[name]
		if !ok || e.rec.Mode&cpio.S_IFMT != cpio.S_IFCHR || e.rec.Rmajor != mm[0] || e.rec.Rminor != mm[1] {
			t.Errorf("%s: want char device %d:%d, got %+v", name, mm[0], mm[1], e.rec.Info)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "var", "lib/modules"} {
		if img[d].rec.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("base directory /%s missing", d)
		}
	}
	if string(img["etc/motd"].data) != "hello\n" {
		t.Errorf("-file not placed at /etc/motd")
	}
	if e := img["sbin/ls"]; e.rec.Mode&cpio.S_IFMT != cpio.S_IFLNK || string(e.data) != "../bin/ls" {
		t.Errorf("-symlink /sbin/ls:../bin/ls: got mode %#o %q", e.rec.Mode, e.data)
	}
	if string(img["usr/share/magestack/images/busybox/bin/sh"].data) != "busybox" {
		t.Errorf("-tree not placed under /usr/share/magestack/images/busybox")
	}
	var libc, interp bool
	for name := range img {
		libc = libc || strings.HasSuffix(name, "/libc.so.6")
		interp = interp || name == "lib64/ld-linux-x86-64.so.2"
	}
	if img["bin/ls"].rec.FileSize == 0 || !libc || !interp {
		t.Errorf("-bin /bin/ls: program %v, libc %v, interpreter %v", img["bin/ls"].rec.FileSize > 0, libc, interp)
	}

	if mods == "" {
		return
	}
	base := "lib/modules/" + filepath.Base(mods) + "/"
	dep := string(img[base+"modules.dep"].data)
	if dep == "" {
		t.Fatal("modules.dep missing")
	}
	included := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(dep), "\n") {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("modules.dep line %q has no colon", line)
		}
		for _, p := range append(strings.Fields(deps), mod) {
			if img[base+p].rec.FileSize == 0 {
				t.Errorf("modules.dep names %s, not in the image", p)
			}
		}
		included[strings.ReplaceAll(strings.TrimSuffix(filepath.Base(mod), ".ko"), "-", "_")] = true
	}
	for _, m := range []string{"virtio_net", "virtio_rng", "nf_tables", "wireguard", "drbd", "i6300esb", "ext4", "jbd2"} {
		if !included[m] {
			t.Errorf("module %s not in modules.dep", m)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(img[base+"modules.alias"].data)), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" || !included[f[2]] {
			t.Errorf("modules.alias line %q: not an alias of an included module", line)
		}
	}
	if img[base+"modules.builtin"].rec.FileSize == 0 {
		t.Error("modules.builtin missing")
	}
}

func TestCompressionFormats(t *testing.T) {
	if _, err := os.Stat(staticProg); err != nil {
		t.Skipf("needs %s", staticProg)
	}
	want, _ := os.ReadFile(staticProg)
	for _, c := range []string{"gzip", "lz4", "none"} {
		t.Run(c, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "img")
			if err := run([]string{"-o", out, "-init", staticProg, "-compress", c}); err != nil {
				t.Fatal(err)
			}
			img := readImage(t, out)
			if !bytes.Equal(img["init"].data, want) {
				t.Fatalf("%s: /init does not read back as the input binary", c)
			}
		})
	}
}

func TestDeterministicOutput(t *testing.T) {
	if _, err := os.Stat(staticProg); err != nil {
		t.Skipf("needs %s", staticProg)
	}
	for _, c := range []string{"gzip", "lz4"} {
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		for _, o := range []string{a, b} {
			if err := run([]string{"-o", o, "-init", staticProg, "-compress", c}); err != nil {
				t.Fatal(err)
			}
		}
		x, _ := os.ReadFile(a)
		y, _ := os.ReadFile(b)
		if !bytes.Equal(x, y) {
			t.Fatalf("%s: two builds from the same inputs differ", c)
		}
	}
}

func TestRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "img")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no init", []string{"-o", out}, "-init are required"},
		{"dynamic init", []string{"-o", out, "-init", "/bin/ls"}, "dynamically linked"},
		{"bad mapping", []string{"-o", out, "-init", staticProg, "-file", "nocolon"}, "SRC:/absolute/DST"},
		{"bad symlink", []string{"-o", out, "-init", staticProg, "-symlink", "relative:x"}, "/absolute/LINK:TARGET"},
		{"clashing paths", []string{"-o", out, "-init", staticProg, "-symlink", "/init:x"}, "/init: already in the archive"},
		{"missing program", []string{"-o", out, "-init", staticProg, "-bin", "/nonexistent/prog"}, "/nonexistent/prog"},
		{"bad compression", []string{"-o", out, "-init", staticProg, "-compress", "lzma"}, `"lzma"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want error containing %q, got %v", tt.want, err)
			}
			if _, statErr := os.Stat(out); statErr == nil {
				t.Fatal("a failed build left an output file")
			}
		})
	}
}
