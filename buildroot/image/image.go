// Package image decides what goes into magestack's initramfs: the static
// binary as /init, the base directories and device nodes the kernel and PID 1
// need before devtmpfs, a subset of the kernel's modules with regenerated
// depmod files, extra userland programs with their shared libraries, and
// extra files and trees.
package image

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"magestack/buildroot/elfdeps"
	"magestack/buildroot/initramfs"
	"magestack/buildroot/modules"
)

// Mapping copies Src on the build host to Dst in the image.
type Mapping struct {
	Src string
	Dst string
}

// ParseSymlink parses "LINK:TARGET" (LINK absolute) into a Mapping with
// Src = TARGET and Dst = LINK.
func ParseSymlink(s string) (Mapping, error) {
	link, target, ok := strings.Cut(s, ":")
	if !ok || target == "" || !strings.HasPrefix(link, "/") {
		return Mapping{}, fmt.Errorf("symlink %q: want /absolute/LINK:TARGET", s)
	}
	return Mapping{Src: target, Dst: link}, nil
}

// ParseMapping parses "SRC:DST"; DST must be absolute.
func ParseMapping(s string) (Mapping, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || !strings.HasPrefix(dst, "/") {
		return Mapping{}, fmt.Errorf("mapping %q: want SRC:/absolute/DST", s)
	}
	return Mapping{Src: src, Dst: dst}, nil
}

// Spec is everything the image is made of.
type Spec struct {
	// Init is the static magestack binary, placed at /init with
	// /bin/magestack linking to it.
	Init string
	// ModulesDir is the kernel's module tree (…/lib/modules/<version>); its
	// base name is the kernel version. Empty: no modules.
	ModulesDir string
	// ModulePatterns select modules (see modules.Tree.Select); their
	// dependency closure is added.
	ModulePatterns []string
	// Programs are extra userland binaries, copied at their own absolute path
	// with their interpreter and shared libraries.
	Programs []string
	// LibraryDirs are searched for the programs' libraries.
	LibraryDirs []string
	Files       []Mapping
	Trees       []Mapping
	// Symlinks: Src is the link's target, Dst the link.
	Symlinks []Mapping
}

// Summary tells what went in.
type Summary struct {
	KernelVersion string
	Modules       []string // canonical names, closure included
	ProgramFiles  []string // destinations of programs and their libraries
	ContentBytes  int64    // uncompressed file content
}

// baseDirs exist before PID 1 mounts anything on them.
var baseDirs = []struct {
	path string
	perm os.FileMode
}{
	{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"lib/modules", 0o755}, {"proc", 0o555},
	{"root", 0o700}, {"run", 0o755}, {"sys", 0o555}, {"tmp", 0o1777}, {"usr", 0o755},
	{"var", 0o755},
}

// Build assembles the archive for spec.
func Build(spec Spec) (*initramfs.Archive, Summary, error) {
	var sum Summary
	a := initramfs.New()
	for _, d := range baseDirs {
		if err := a.Dir(d.path, d.perm); err != nil {
			return nil, sum, err
		}
	}
	// The kernel opens /dev/console for PID 1's stdio before any devtmpfs.
	if err := a.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, sum, err
	}
	if err := a.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return nil, sum, err
	}
	if spec.Init == "" {
		return nil, sum, fmt.Errorf("image: no init binary given")
	}
	if err := checkStatic(spec.Init); err != nil {
		return nil, sum, err
	}
	if err := a.File("init", spec.Init); err != nil {
		return nil, sum, err
	}
	if err := a.Symlink("bin/magestack", "../init"); err != nil {
		return nil, sum, err
	}
	if spec.ModulesDir != "" {
		ver, names, err := addModules(a, spec.ModulesDir, spec.ModulePatterns)
		if err != nil {
			return nil, sum, err
		}
		sum.KernelVersion, sum.Modules = ver, names
	}
	dirs := spec.LibraryDirs
	if len(dirs) == 0 {
		dirs = elfdeps.DefaultSearchDirs
	}
	for _, p := range spec.Programs {
		files, err := elfdeps.Resolver{SearchDirs: dirs}.Needs(p)
		if err != nil {
			return nil, sum, fmt.Errorf("program %s: %w", p, err)
		}
		for _, f := range files {
			if a.Has(f.Dst) {
				continue // a library another program already brought
			}
			if err := a.File(f.Dst, f.Src); err != nil {
				return nil, sum, fmt.Errorf("program %s: %w", p, err)
			}
			sum.ProgramFiles = append(sum.ProgramFiles, f.Dst)
		}
	}
	for _, m := range spec.Files {
		if err := a.File(m.Dst, m.Src); err != nil {
			return nil, sum, fmt.Errorf("file %s:%s: %w", m.Src, m.Dst, err)
		}
	}
	for _, m := range spec.Trees {
		if err := a.Tree(m.Src, m.Dst); err != nil {
			return nil, sum, err
		}
	}
	for _, m := range spec.Symlinks {
		if err := a.Symlink(m.Dst, m.Src); err != nil {
			return nil, sum, fmt.Errorf("symlink %s -> %s: %w", m.Dst, m.Src, err)
		}
	}
	sum.ContentBytes = a.Size()
	return a, sum, nil
}

// checkStatic refuses a dynamically linked init: there is no loader for it.
func checkStatic(bin string) error {
	static, err := elfdeps.IsStatic(bin)
	if err != nil {
		return fmt.Errorf("init binary: %w", err)
	}
	if !static {
		return fmt.Errorf("init binary %s is dynamically linked (build it with CGO_ENABLED=0)", bin)
	}
	return nil
}

// addModules copies the selected modules and their closure under
// lib/modules/<version>/ and writes the depmod text files for exactly that set.
func addModules(a *initramfs.Archive, dir string, patterns []string) (string, []string, error) {
	ver := filepath.Base(filepath.Clean(dir))
	tree, err := modules.Load(dir)
	if err != nil {
		return "", nil, err
	}
	sel, err := tree.Select(patterns)
	if err != nil {
		return "", nil, err
	}
	set, err := tree.Closure(sel)
	if err != nil {
		return "", nil, err
	}
	base := path.Join("lib/modules", ver)
	for _, n := range set {
		m := tree.Modules[n]
		if err := a.File(path.Join(base, m.Path), filepath.Join(dir, filepath.FromSlash(m.Path))); err != nil {
			return "", nil, err
		}
	}
	gen := []struct {
		name  string
		write func(*bytes.Buffer) error
	}{
		{"modules.dep", func(b *bytes.Buffer) error { return tree.WriteDep(b, set) }},
		{"modules.alias", func(b *bytes.Buffer) error { return tree.WriteAlias(b, set) }},
		{"modules.softdep", func(b *bytes.Buffer) error { return tree.WriteSoftdep(b, set) }},
	}
	for _, g := range gen {
		var b bytes.Buffer
		if err := g.write(&b); err != nil {
			return "", nil, err
		}
		if err := a.Bytes(path.Join(base, g.name), b.Bytes(), 0o644); err != nil {
			return "", nil, err
		}
	}
	if f, err := os.Open(filepath.Join(dir, "modules.order")); err == nil {
		var b bytes.Buffer
		err := tree.WriteOrder(&b, set, f)
		f.Close()
		if err != nil {
			return "", nil, err
		}
		if err := a.Bytes(path.Join(base, "modules.order"), b.Bytes(), 0o644); err != nil {
			return "", nil, err
		}
	}
	// Built-in modules: modprobe treats them as present instead of failing.
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo"} {
		src := filepath.Join(dir, f)
		if _, err := os.Stat(src); err == nil {
			if err := a.File(path.Join(base, f), src); err != nil {
				return "", nil, err
			}
		}
	}
	return ver, set, nil
}
