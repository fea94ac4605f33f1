// Package initramfs assembles a newc cpio archive deterministically: entries
// are collected by destination path, missing parent directories are added,
// and the archive is written sorted with fixed owners and mtimes, so the same
// inputs always give the same bytes. Writing goes through u-root's cpio
// package.
package initramfs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// MTime is the modification time of every entry (seconds since the epoch):
// fixed so rebuilding from the same inputs is bit-for-bit identical.
const MTime = 0

type kind int

const (
	kindDir kind = iota
	kindFile
	kindBytes
	kindSymlink
	kindCharDev
)

type entry struct {
	kind         kind
	perm         uint64
	src          string // kindFile: host path read at write time
	data         []byte // kindBytes
	target       string // kindSymlink
	major, minor uint64 // kindCharDev
	size         int64
}

// Archive is an initramfs under construction. The zero value is not usable;
// call New.
type Archive struct {
	entries map[string]entry
}

// New returns an empty archive.
func New() *Archive { return &Archive{entries: map[string]entry{}} }

// clean turns an absolute or relative destination into the cpio form
// ("usr/bin/x"); "" means the root itself.
func clean(dst string) (string, error) {
	p := cpio.Normalize(dst)
	if p == "." || p == "" || strings.HasPrefix(p, "../") || p == ".." {
		return "", fmt.Errorf("invalid destination path %q", dst)
	}
	return p, nil
}

func (a *Archive) put(dst string, e entry) error {
	p, err := clean(dst)
	if err != nil {
		return err
	}
	if prev, ok := a.entries[p]; ok {
		if prev.kind == kindDir && e.kind == kindDir {
			return nil
		}
		return fmt.Errorf("%s: already in the archive", "/"+p)
	}
	a.entries[p] = e
	return nil
}

// Dir adds a directory.
func (a *Archive) Dir(dst string, perm fs.FileMode) error {
	return a.put(dst, entry{kind: kindDir, perm: uint64(perm.Perm())})
}

// Bytes adds a regular file with the given content.
func (a *Archive) Bytes(dst string, data []byte, perm fs.FileMode) error {
	return a.put(dst, entry{kind: kindBytes, data: data, perm: uint64(perm.Perm()), size: int64(len(data))})
}

// File adds the regular file src (symlinks followed) at dst, keeping its
// permission bits. The content is read when the archive is written.
func (a *Archive) File(dst, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("add %s: %w", dst, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("add %s: %s is not a regular file", dst, src)
	}
	return a.put(dst, entry{kind: kindFile, src: src, perm: uint64(st.Mode().Perm()), size: st.Size()})
}

// Symlink adds a symbolic link dst → target.
func (a *Archive) Symlink(dst, target string) error {
	return a.put(dst, entry{kind: kindSymlink, target: target, perm: 0o777, size: int64(len(target))})
}

// CharDev adds a character device node.
func (a *Archive) CharDev(dst string, perm fs.FileMode, major, minor uint64) error {
	return a.put(dst, entry{kind: kindCharDev, perm: uint64(perm.Perm()), major: major, minor: minor})
}

// Tree adds the directory tree src under dst: directories, regular files and
// symlinks (kept as links). Other file types are an error naming the file.
func (a *Archive) Tree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("add tree %s: %w", src, err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := path.Join(dst, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("add tree %s: %w", src, err)
		}
		switch {
		case d.IsDir():
			return a.Dir(to, info.Mode())
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("add tree %s: %w", src, err)
			}
			return a.Symlink(to, target)
		case info.Mode().IsRegular():
			return a.put(to, entry{kind: kindFile, src: p, perm: uint64(info.Mode().Perm()), size: info.Size()})
		default:
			return fmt.Errorf("add tree %s: %s has unsupported type %s", src, p, info.Mode().Type())
		}
	})
}

// Has reports whether dst is in the archive.
func (a *Archive) Has(dst string) bool {
	p, err := clean(dst)
	if err != nil {
		return false
	}
	_, ok := a.entries[p]
	return ok
}

// Size is the total content size of the archive's files and links, before
// cpio headers and compression.
func (a *Archive) Size() int64 {
	var n int64
	for _, e := range a.entries {
		n += e.size
	}
	return n
}

// Write writes the archive as newc cpio with a trailer: sorted by path so
// every parent directory precedes its children, with missing parents added
// (mode 0755), owner root and mtime MTime.
func (a *Archive) Write(w io.Writer) error {
	all := make(map[string]entry, len(a.entries))
	for p, e := range a.entries {
		all[p] = e
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				if prev, ok := a.entries[d]; ok {
					all[d] = prev
				} else {
					all[d] = entry{kind: kindDir, perm: 0o755}
				}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p, e := range all {
		// A parent must be a directory, or the kernel cannot unpack the child.
		if e.kind != kindDir {
			for d := path.Dir(p); d != "."; d = path.Dir(d) {
				if all[d].kind != kindDir {
					return fmt.Errorf("/%s: parent /%s is not a directory", p, d)
				}
			}
		}
		names = append(names, p)
	}
	sort.Strings(names)
	rw := cpio.Newc.Writer(w)
	for i, p := range names {
		rec, err := all[p].record(p)
		if err != nil {
			return err
		}
		rec.Ino = uint64(i + 1)
		rec.MTime = MTime
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("write /%s: %w", p, err)
		}
	}
	return cpio.WriteTrailer(rw)
}

func (e entry) record(name string) (cpio.Record, error) {
	switch e.kind {
	case kindDir:
		r := cpio.Directory(name, e.perm)
		r.NLink = 2
		return r, nil
	case kindBytes:
		r := cpio.StaticRecord(e.data, cpio.Info{Name: name, Mode: cpio.S_IFREG | e.perm, NLink: 1})
		return r, nil
	case kindSymlink:
		r := cpio.Symlink(name, e.target)
		r.NLink = 1
		return r, nil
	case kindCharDev:
		r := cpio.CharDev(name, e.perm, e.major, e.minor)
		r.NLink = 1
		return r, nil
	case kindFile:
		f, err := os.Open(e.src)
		if err != nil {
			return cpio.Record{}, fmt.Errorf("write /%s: %w", name, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return cpio.Record{}, fmt.Errorf("write /%s: %w", name, err)
		}
		if st.Size() != e.size {
			f.Close()
			return cpio.Record{}, fmt.Errorf("write /%s: %s changed size while building", name, e.src)
		}
		// The cpio writer closes the file once its content is copied.
		return cpio.Record{ReaderAt: f, Info: cpio.Info{
			Name: name, Mode: cpio.S_IFREG | e.perm, NLink: 1, FileSize: uint64(st.Size()),
		}}, nil
	}
	return cpio.Record{}, fmt.Errorf("/%s: unknown entry kind %d", name, e.kind)
}
