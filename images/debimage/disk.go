package debimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"magestack/images/manifest"
	"magestack/images/recipes"
)

// DiskLabel is the filesystem label hosts look for (init/imagestore).
const DiskLabel = "MAGESTACK-IMAGES"

// Extra is a prebuilt image added to the set as is (the busybox test image
// that fw runs).
type Extra struct {
	Name string
	Path string
}

// BuildAll builds (or takes from the cache) every recipe, copies the
// images and any extras to outDir/<name>.squashfs and writes
// outDir/manifest.json. Other files in outDir are left alone.
func BuildAll(ctx context.Context, rs []recipes.Recipe, extras []Extra, outDir string, opts Options) (*manifest.Manifest, []Result, error) {
	opts = opts.withDefaults()
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("images: %w", err)
	}
	m := &manifest.Manifest{Version: manifest.Version}
	var results []Result
	for _, r := range rs {
		res, err := Build(ctx, r, opts)
		if err != nil {
			return nil, results, err
		}
		results = append(results, res)
		file := r.Role + ".squashfs"
		if err := syncFile(res.Path, filepath.Join(outDir, file), res.SHA256, res.Size); err != nil {
			return nil, results, fmt.Errorf("image %s: %w", r.Role, err)
		}
		m.Images = append(m.Images, manifest.Image{Name: r.Role, File: file, Size: res.Size, SHA256: res.SHA256,
			Recipe: res.Recipe, Packages: res.Packages})
	}
	for _, x := range extras {
		file := x.Name + ".squashfs"
		dst := filepath.Join(outDir, file)
		if abs(x.Path) != abs(dst) {
			if err := copyFile(x.Path, dst); err != nil {
				return nil, results, fmt.Errorf("image %s: %w", x.Name, err)
			}
		}
		sum, size, err := FileDigest(dst)
		if err != nil {
			return nil, results, fmt.Errorf("image %s: %w", x.Name, err)
		}
		m.Images = append(m.Images, manifest.Image{Name: x.Name, File: file, Size: size, SHA256: sum})
	}
	if err := m.Write(outDir); err != nil {
		return nil, results, err
	}
	return m, results, nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// syncFile makes dst a copy of src unless it already holds the digest.
func syncFile(src, dst, sha string, size int64) error {
	if fi, err := os.Stat(dst); err == nil && fi.Size() == size {
		if got, _, err := FileDigest(dst); err == nil && got == sha {
			return nil
		}
	}
	return copyFile(src, dst)
}

// copyFile copies src to dst through a temporary name and a rename.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Chmod(0o644); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(out.Name(), dst)
}

// MakeDisk writes out: a raw disk image whose whole device is an ext4
// filesystem labelled DiskLabel holding the manifest of dir and the image
// files it lists (nothing else from dir). It has no journal (hosts mount it
// read-only) and its UUID, hash seed and times derive from the manifest,
// so the same images give the same disk bytes.
func MakeDisk(ctx context.Context, dir, out string, epoch int64, opts Options) error {
	opts = opts.withDefaults()
	m, err := manifest.Read(dir)
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".images-disk-")
	if err != nil {
		return fmt.Errorf("images disk: %w", err)
	}
	defer os.RemoveAll(stage)
	when := time.Unix(epoch, 0)
	total := int64(0)
	files := []string{manifest.FileName}
	for _, im := range m.Images {
		files = append(files, im.File)
	}
	for _, f := range files {
		dst := filepath.Join(stage, f)
		// mke2fs only reads the files: a hard link spares a copy.
		if err := os.Link(filepath.Join(dir, f), dst); err != nil {
			if err := copyFile(filepath.Join(dir, f), dst); err != nil {
				return fmt.Errorf("images disk: %w", err)
			}
		}
		if err := os.Chtimes(dst, when, when); err != nil {
			return err
		}
		fi, err := os.Stat(dst)
		if err != nil {
			return err
		}
		total += fi.Size()
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	if err := os.Chtimes(stage, when, when); err != nil {
		return err
	}
	// Room for metadata: 5% plus 16 MiB, rounded up to a MiB.
	size := total + total/20 + 16<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	mb, err := manifest.Read(dir)
	if err != nil {
		return err
	}
	raw, _ := mb.Marshal()
	sum := sha256.Sum256(raw)
	uuid := uuidFrom(sum[:16])
	tmp := out + ".tmp"
	os.Remove(tmp)
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("images disk: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("images disk: %w", err)
	}
	f.Close()
	env := append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(epoch, 10), "SOURCE_DATE_EPOCH="+strconv.FormatInt(epoch, 10))
	if err := run(ctx, opts, env, "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0",
		"-L", DiskLabel, "-U", uuid, "-E", "hash_seed="+uuid+",root_owner=0:0", "-d", stage, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("images disk: %w", err)
	}
	// mke2fs -d copies each file's times, and the change time (and the
	// access time of a file read meanwhile) cannot be set beforehand: pin
	// them to the epoch so the disk's bytes do not depend on when the
	// files were written.
	var script strings.Builder
	for _, f := range files {
		for _, field := range []string{"atime", "mtime", "ctime"} {
			fmt.Fprintf(&script, "set_inode_field /%s %s @%d\n", f, field, epoch)
		}
	}
	scriptFile := filepath.Join(stage, ".ctime")
	if err := os.WriteFile(scriptFile, []byte(script.String()), 0o600); err != nil {
		return err
	}
	if err := run(ctx, opts, env, "debugfs", "-w", "-f", scriptFile, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("images disk: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("images disk: %w", err)
	}
	return nil
}

func uuidFrom(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
