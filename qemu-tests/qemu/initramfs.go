package qemu

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File is one entry of a test initramfs: content from Data or from the host
// file Src, or a symlink to Symlink.
type File struct {
	Path    string      // path inside the archive, e.g. "init" or "lib/modules/x.ko"
	Mode    os.FileMode // permission bits; default 0o755
	Data    []byte
	Src     string
	Symlink string
}

// WriteInitramfs writes a gzip-compressed newc cpio archive holding files,
// their parent directories and /dev/console (the kernel opens it for init's
// stdio before any devtmpfs exists).
func WriteInitramfs(dst string, files []File) error {
	recs := []cpio.Record{cpio.CharDev("dev/console", 0o600, 5, 1)}
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if name == "" {
			return fmt.Errorf("initramfs %s: entry with empty path", dst)
		}
		if f.Symlink != "" {
			recs = append(recs, cpio.Symlink(name, f.Symlink))
			continue
		}
		data := f.Data
		if f.Src != "" {
			b, err := os.ReadFile(f.Src)
			if err != nil {
				return fmt.Errorf("initramfs %s: %s: %w", dst, name, err)
			}
			data = b
		}
		perm := uint64(f.Mode.Perm())
		if perm == 0 {
			perm = 0o755
		}
		recs = append(recs, cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm}))
	}

	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	zw := gzip.NewWriter(out)
	w := cpio.NewDedupWriter(cpio.Newc.Writer(zw))
	err = cpio.WriteRecordsAndDirs(w, recs)
	if err == nil {
		err = cpio.WriteTrailer(w)
	}
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("initramfs %s: %w", dst, err)
	}
	return nil
}

// BuildStatic compiles the Go main package pkg (an import path or ./path
// relative to the module root) into a static binary at out.
func BuildStatic(pkg, out string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// NopInitPackage is the do-nothing PID 1 used by the harness self-test and
// as the benchmark's baseline.
const NopInitPackage = "./qemu-tests/testdata/nopinit"

// WithStackSecret returns a copy of im whose initramfs also carries the
// stack secret at /etc/magestack/stack.secret, as netboot hands it to a
// known host: every host booted from it derives the same passwords,
// certificate and keys. The secret's archive goes first (the LZ4 legacy
// initramfs has no end marker).
func (im Image) WithStackSecret(dir string, secret []byte) (Image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, err
	}
	front := filepath.Join(dir, "stack-secret.cpio.gz")
	if err := WriteInitramfs(front, []File{{Path: "etc/magestack/stack.secret", Data: secret, Mode: 0o600}}); err != nil {
		return Image{}, err
	}
	a, err := os.ReadFile(front)
	if err != nil {
		return Image{}, err
	}
	b, err := os.ReadFile(im.Initramfs)
	if err != nil {
		return Image{}, err
	}
	out := filepath.Join(dir, "initramfs-with-secret.img")
	if err := os.WriteFile(out, append(a, b...), 0o644); err != nil {
		return Image{}, fmt.Errorf("initramfs with secret: %w", err)
	}
	im.Initramfs = out
	return im, nil
}

// PrependInitramfs writes files as an archive (WriteInitramfs) followed by
// the image base: the kernel unpacks concatenated archives in order, and
// an LZ4 legacy stream (Debian's, magestack's) has no end marker, so the
// image must come last. Tests put a test binary or a script in front of
// build/initramfs.img this way.
func PrependInitramfs(dst, base string, files []File) error {
	if err := WriteInitramfs(dst, files); err != nil {
		return err
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("initramfs %s: %w", dst, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("initramfs %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("initramfs %s: append %s: %w", dst, base, err)
	}
	return out.Close()
}
