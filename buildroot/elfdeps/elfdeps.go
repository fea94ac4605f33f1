// Package elfdeps finds the files a dynamically linked program needs at run
// time: its ELF interpreter and the transitive closure of its DT_NEEDED
// shared libraries, resolved the way the dynamic linker would search the
// system directories. It lets the initramfs carry a few userland tools
// (drbdsetup, mkfs.ext4...) next to the static magestack binary.
package elfdeps

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// DefaultSearchDirs are the library directories of Debian's amd64 dynamic
// linker, in its search order.
var DefaultSearchDirs = []string{
	"/lib/x86_64-linux-gnu",
	"/usr/lib/x86_64-linux-gnu",
	"/lib64",
	"/lib",
	"/usr/lib",
}

// File is one file to place in the image: Dst is the absolute path the
// program will look for, Src the regular file on the build host whose
// content belongs there (symlinks already followed).
type File struct {
	Src string
	Dst string
}

// Resolver resolves program dependencies against a set of directories.
type Resolver struct {
	// SearchDirs are tried in order for each DT_NEEDED name.
	SearchDirs []string
}

// Needs returns every file program needs, program itself included (at its
// own absolute path), sorted by Dst. A static program yields only itself. A
// library that cannot be found is an error naming it and who needs it.
func (r Resolver) Needs(program string) ([]File, error) {
	abs, err := filepath.Abs(program)
	if err != nil {
		return nil, err
	}
	files := map[string]File{}
	add := func(dst, path string) error {
		src, err := filepath.EvalSymlinks(path)
		if err != nil {
			return fmt.Errorf("resolve %s: %w", path, err)
		}
		files[dst] = File{Src: src, Dst: dst}
		return nil
	}
	if err := add(abs, abs); err != nil {
		return nil, err
	}
	interp, needed, err := dynamicInfo(abs)
	if err != nil {
		return nil, err
	}
	if interp != "" {
		if err := add(interp, interp); err != nil {
			return nil, fmt.Errorf("interpreter of %s: %w", abs, err)
		}
	}
	type want struct{ name, by string }
	queue := make([]want, 0, len(needed))
	for _, n := range needed {
		queue = append(queue, want{n, abs})
	}
	seen := map[string]bool{}
	for len(queue) > 0 {
		w := queue[0]
		queue = queue[1:]
		if seen[w.name] {
			continue
		}
		seen[w.name] = true
		path, err := r.find(w.name)
		if err != nil {
			return nil, fmt.Errorf("library %s needed by %s: %w", w.name, w.by, err)
		}
		if err := add(path, path); err != nil {
			return nil, err
		}
		_, more, err := dynamicInfo(path)
		if err != nil {
			return nil, err
		}
		for _, n := range more {
			queue = append(queue, want{n, path})
		}
	}
	out := make([]File, 0, len(files))
	for _, f := range files {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst < out[j].Dst })
	return out, nil
}

// find returns the first search-dir path holding name. A name with a slash
// is used as is, as the dynamic linker does.
func (r Resolver) find(name string) (string, error) {
	if filepath.Base(name) != name {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, d := range r.SearchDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %v", r.SearchDirs)
}

// dynamicInfo returns the PT_INTERP path and DT_NEEDED names of an ELF file.
func dynamicInfo(file string) (interp string, needed []string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("read ELF %s: %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", nil, fmt.Errorf("read interpreter of %s: %w", file, err)
		}
		for len(b) > 0 && b[len(b)-1] == 0 {
			b = b[:len(b)-1]
		}
		interp = string(b)
	}
	needed, err = f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return "", nil, fmt.Errorf("read DT_NEEDED of %s: %w", file, err)
	}
	return interp, needed, nil
}

// IsStatic reports whether program runs without a dynamic linker: no
// PT_INTERP and no DT_NEEDED libraries.
func IsStatic(program string) (bool, error) {
	interp, needed, err := dynamicInfo(program)
	if err != nil {
		return false, err
	}
	return interp == "" && len(needed) == 0, nil
}
