// Package kmod loads Linux kernel modules: by name or alias with their
// dependencies from modules.dep (in load order), and by modalias coldplug of
// every device in sysfs. Loading uses finit_module on the file; compressed
// modules go through the kernel's own decompressor
// (MODULE_INIT_COMPRESSED_FILE) and, for .ko.gz when the kernel lacks it,
// through Go's gzip and init_module. .ko.xz and .ko.zst therefore need a
// kernel with CONFIG_MODULE_DECOMPRESS; Debian's 6.1 ships plain .ko.
package kmod

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Index is a module directory's modules.dep, modules.alias, modules.softdep
// and modules.builtin.
type Index struct {
	Dir string
	// path (relative to Dir) and dependency paths by module name.
	paths map[string]string
	deps  map[string][]string
	// aliases in file order (modprobe tries them in that order).
	aliases []alias
	builtin map[string]bool
	pre     map[string][]string
	post    map[string][]string
}

type alias struct {
	pattern string
	// literal is the pattern's text before its first wildcard: a cheap
	// prefix test that skips most of the ~30k patterns for each device.
	literal string
	module  string
}

// DefaultDir is /lib/modules/<running kernel release>. It asks uname(2),
// not /proc, so it also works in a kernel-started modprobe helper before
// anything is mounted.
func DefaultDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// Open reads the index files in dir. modules.dep is required; the others
// are optional (no alias file: name lookups only).
func Open(dir string) (*Index, error) {
	ix := &Index{
		Dir: dir, paths: map[string]string{}, deps: map[string][]string{},
		builtin: map[string]bool{}, pre: map[string][]string{}, post: map[string][]string{},
	}
	if err := ix.readFile("modules.dep", true, ix.parseDep); err != nil {
		return nil, err
	}
	if err := ix.readFile("modules.alias", false, ix.parseAlias); err != nil {
		return nil, err
	}
	if err := ix.readFile("modules.softdep", false, ix.parseSoftdep); err != nil {
		return nil, err
	}
	if err := ix.readFile("modules.builtin", false, ix.parseBuiltin); err != nil {
		return nil, err
	}
	return ix, nil
}

func (ix *Index) readFile(name string, required bool, parse func(line string) error) error {
	path := filepath.Join(ix.Dir, name)
	f, err := os.Open(path)
	if err != nil {
		if !required && os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("open module index: %w", err)
	}
	defer f.Close()
	return parseLines(path, f, parse)
}

func parseLines(path string, r io.Reader, parse func(string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := parse(line); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

func (ix *Index) parseDep(line string) error {
	path, rest, ok := strings.Cut(line, ":")
	if !ok || path == "" {
		return fmt.Errorf("want \"path: deps...\", got %q", line)
	}
	name := NameOf(path)
	ix.paths[name] = path
	var deps []string
	for _, d := range strings.Fields(rest) {
		deps = append(deps, NameOf(d))
	}
	ix.deps[name] = deps
	return nil
}

func (ix *Index) parseAlias(line string) error {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "alias" {
		return fmt.Errorf("want \"alias <pattern> <module>\", got %q", line)
	}
	lit := f[1]
	if i := strings.IndexAny(lit, `*?[\`); i >= 0 {
		lit = lit[:i]
	}
	ix.aliases = append(ix.aliases, alias{pattern: f[1], literal: lit, module: Normalize(f[2])})
	return nil
}

func (ix *Index) parseSoftdep(line string) error {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "softdep" {
		return fmt.Errorf("want \"softdep <module> pre: ... post: ...\", got %q", line)
	}
	mod := Normalize(f[1])
	var pre, post []string
	var into *[]string
	for _, w := range f[2:] {
		switch w {
		case "pre:":
			into = &pre
		case "post:":
			into = &post
		default:
			if into == nil {
				return fmt.Errorf("softdep module %q before pre:/post:", w)
			}
			*into = append(*into, w)
		}
	}
	ix.pre[mod] = append(ix.pre[mod], pre...)
	ix.post[mod] = append(ix.post[mod], post...)
	return nil
}

func (ix *Index) parseBuiltin(line string) error {
	ix.builtin[NameOf(line)] = true
	return nil
}

// NameOf is a module's name from its path: base name without .ko and
// compression suffix, dashes as underscores (the kernel's spelling).
func NameOf(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if s, ok := strings.CutSuffix(base, ext); ok {
			base = s
			break
		}
	}
	return Normalize(base)
}

// Normalize spells a module name the kernel's way: '-' and '_' are the same.
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// Builtin reports whether name is compiled into the kernel.
func (ix *Index) Builtin(name string) bool { return ix.builtin[Normalize(name)] }

// Path is the module's file, absolute.
func (ix *Index) Path(name string) (string, bool) {
	p, ok := ix.paths[Normalize(name)]
	if !ok {
		return "", false
	}
	if filepath.IsAbs(p) {
		return p, true
	}
	return filepath.Join(ix.Dir, p), true
}

// Resolve turns a module name or an alias (a device modalias such as
// "pci:v00001AF4d00001000...", or a request like "fs-overlay") into module
// names. A known module name or builtin wins; otherwise every module whose
// alias pattern matches, in modules.alias order, without duplicates.
func (ix *Index) Resolve(nameOrAlias string) []string {
	if n := Normalize(nameOrAlias); ix.paths[n] != "" || ix.builtin[n] {
		return []string{n}
	}
	var out []string
	seen := map[string]bool{}
	for _, a := range ix.aliases {
		if !strings.HasPrefix(nameOrAlias, a.literal) || seen[a.module] {
			continue
		}
		if Match(a.pattern, nameOrAlias) {
			seen[a.module] = true
			out = append(out, a.module)
		}
	}
	return out
}

// LoadOrder is the list of modules to load for name, dependencies first and
// name last: softdep "pre" modules, then the modules.dep closure in
// topological order, then name, then softdep "post" modules. Builtin
// modules are left out. A cycle or an unknown module is an error.
func (ix *Index) LoadOrder(name string) ([]string, error) {
	name = Normalize(name)
	if ix.builtin[name] {
		return nil, nil
	}
	if _, ok := ix.paths[name]; !ok {
		return nil, fmt.Errorf("module %s not found in %s/modules.dep", name, ix.Dir)
	}
	var (
		order []string
		state = map[string]int{} // 1 visiting, 2 done
		visit func(n string, chain []string) error
	)
	visit = func(n string, chain []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, n), " -> "))
		case 2:
			return nil
		}
		if ix.builtin[n] {
			state[n] = 2
			return nil
		}
		if _, ok := ix.paths[n]; !ok {
			return fmt.Errorf("module %s (needed by %s) not found in modules.dep", n, strings.Join(chain, " -> "))
		}
		state[n] = 1
		deps := ix.deps[n]
		// depmod lists a module's dependencies so that loading them from
		// last to first works; visiting each one's own deps first makes the
		// order right even for hand-written files.
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, n)
		return nil
	}
	// Soft dependencies are wishes, not requirements: missing ones are skipped.
	for _, p := range ix.softResolve(ix.pre[name]) {
		if err := visit(p, []string{name + " (softdep pre)"}); err != nil {
			continue
		}
	}
	if err := visit(name, nil); err != nil {
		return nil, err
	}
	for _, p := range ix.softResolve(ix.post[name]) {
		if err := visit(p, []string{name + " (softdep post)"}); err != nil {
			continue
		}
	}
	return order, nil
}

func (ix *Index) softResolve(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, ix.Resolve(n)...)
	}
	return out
}
