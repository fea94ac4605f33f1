// Package modules indexes a kernel module tree (/lib/modules/<version>) from
// the modules' own .modinfo sections, picks a subset with its dependency
// closure, and writes the depmod-style text files (modules.dep,
// modules.alias, modules.softdep) for that subset.
//
// Debian's kernel package ships no modules.dep (its postinst runs depmod), so
// the index is rebuilt from the .ko files rather than read from depmod output.
package modules

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Module is one loadable module of a tree.
type Module struct {
	Name     string   // canonical name: file name without .ko*, '-' → '_'
	Path     string   // relative to the tree root, e.g. kernel/fs/ext4/ext4.ko
	Depends  []string // names from depends=
	Aliases  []string // patterns from alias=
	SoftPre  []string // softdep pre: names or aliases
	SoftPost []string // softdep post: names or aliases
}

// Alias is one line of modules.alias.
type Alias struct {
	Pattern string
	Module  string
}

// Tree is the index of a module directory.
type Tree struct {
	Root    string
	Modules map[string]*Module // by canonical name
}

// CanonicalName maps a module file or dependency name to the form the
// kernel and depmod use: no directory, no .ko/.ko.xz/.ko.gz/.ko.zst suffix,
// dashes as underscores.
func CanonicalName(p string) string {
	base := path.Base(filepath.ToSlash(p))
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// isModuleFile reports whether name looks like a (possibly compressed) module.
func isModuleFile(name string) bool {
	for _, s := range []string{".ko", ".ko.xz", ".ko.gz", ".ko.zst"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// Load indexes every module under root (the /lib/modules/<version> directory).
// Only uncompressed modules can be inspected; compressed ones are an error
// naming the file, since their dependencies would otherwise be silently lost.
func Load(root string) (*Tree, error) {
	t := &Tree{Root: root, Modules: map[string]*Module{}}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModuleFile(d.Name()) {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if !strings.HasSuffix(p, ".ko") {
			return fmt.Errorf("module %s: compressed modules are not supported by the indexer", p)
		}
		info, err := ReadModinfo(p)
		if err != nil {
			return err
		}
		m := FromModinfo(filepath.ToSlash(rel), info)
		if prev, dup := t.Modules[m.Name]; dup {
			return fmt.Errorf("module name %q twice: %s and %s", m.Name, prev.Path, m.Path)
		}
		t.Modules[m.Name] = m
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules under %s: %w", root, err)
	}
	if len(t.Modules) == 0 {
		return nil, fmt.Errorf("index modules under %s: no .ko files found", root)
	}
	return t, nil
}

// ReadModinfo returns the key=value strings of a module's .modinfo section.
func ReadModinfo(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read modinfo of %s: %w", file, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read modinfo of %s: no .modinfo section", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read modinfo of %s: %w", file, err)
	}
	var out []string
	for _, s := range bytes.Split(data, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out, nil
}

// FromModinfo builds a Module from its tree-relative path and modinfo strings.
func FromModinfo(rel string, info []string) *Module {
	m := &Module{Name: CanonicalName(rel), Path: rel}
	for _, kv := range info {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, CanonicalName(d))
				}
			}
		case "alias":
			m.Aliases = append(m.Aliases, v)
		case "softdep":
			pre, post := parseSoftdep(v)
			m.SoftPre = append(m.SoftPre, pre...)
			m.SoftPost = append(m.SoftPost, post...)
		}
	}
	return m
}

// parseSoftdep splits "pre: a b post: c" into its two lists.
func parseSoftdep(v string) (pre, post []string) {
	var cur *[]string
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			cur = &pre
		case "post:":
			cur = &post
		default:
			if cur != nil {
				*cur = append(*cur, f)
			}
		}
	}
	return pre, post
}

// Resolve finds the modules a softdep entry or request means: a module name,
// or else every module with an alias pattern matching it.
func (t *Tree) Resolve(nameOrAlias string) []string {
	if m, ok := t.Modules[CanonicalName(nameOrAlias)]; ok {
		return []string{m.Name}
	}
	var out []string
	for _, m := range t.Modules {
		for _, a := range m.Aliases {
			if ok, _ := path.Match(a, nameOrAlias); ok {
				out = append(out, m.Name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Select returns the names of the modules matched by the patterns. A pattern
// containing '/' is a glob on the tree-relative path ("kernel/drivers/virtio/*",
// "kernel/net/netfilter/nft_*"); a "**" element in it matches any number of
// directories. Any other pattern is a glob on the canonical module name
// ("virtio_*", "e1000e"). Optional patterns start with '?': they may match
// nothing (a driver absent from this kernel); others must match something.
func (t *Tree) Select(patterns []string) ([]string, error) {
	chosen := map[string]bool{}
	var missing []string
	for _, raw := range patterns {
		p := strings.TrimSpace(raw)
		optional := strings.HasPrefix(p, "?")
		p = strings.TrimPrefix(p, "?")
		if p == "" {
			continue
		}
		n := 0
		for _, m := range t.Modules {
			ok, err := matchPattern(p, m)
			if err != nil {
				return nil, fmt.Errorf("module pattern %q: %w", raw, err)
			}
			if ok {
				chosen[m.Name] = true
				n++
			}
		}
		if n == 0 && !optional {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("module patterns matched nothing in %s: %s", t.Root, strings.Join(missing, ", "))
	}
	return sortedKeys(chosen), nil
}

func matchPattern(p string, m *Module) (bool, error) {
	if !strings.Contains(p, "/") {
		return path.Match(strings.ReplaceAll(p, "-", "_"), m.Name)
	}
	return globPath(strings.Split(p, "/"), strings.Split(m.Path, "/"))
}

// globPath matches path elements against pattern elements with "**" spanning
// zero or more elements.
func globPath(pat, elems []string) (bool, error) {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(elems); i++ {
				if ok, err := globPath(pat[1:], elems[i:]); ok || err != nil {
					return ok, err
				}
			}
			return false, nil
		}
		if len(elems) == 0 {
			return false, nil
		}
		ok, err := path.Match(pat[0], elems[0])
		if !ok || err != nil {
			return false, err
		}
		pat, elems = pat[1:], elems[1:]
	}
	return len(elems) == 0, nil
}

// Closure adds to names every module they need: hard dependencies
// (depends=) and soft pre/post dependencies that exist in the tree. Unknown
// hard dependencies are an error; unknown soft ones are skipped, as modprobe
// does.
func (t *Tree) Closure(names []string) ([]string, error) {
	seen := map[string]bool{}
	var visit func(name, from string) error
	visit = func(name, from string) error {
		if seen[name] {
			return nil
		}
		m, ok := t.Modules[name]
		if !ok {
			if from == "" {
				return fmt.Errorf("module %q is not in %s", name, t.Root)
			}
			return fmt.Errorf("module %q (needed by %s) is not in %s", name, from, t.Root)
		}
		seen[name] = true
		for _, d := range m.Depends {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		for _, s := range append(append([]string{}, m.SoftPre...), m.SoftPost...) {
			for _, r := range t.Resolve(s) {
				if err := visit(r, name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, n := range names {
		if err := visit(CanonicalName(n), ""); err != nil {
			return nil, err
		}
	}
	return sortedKeys(seen), nil
}

// deps returns every hard dependency of name, transitively, ordered as
// depmod does: each module before the ones it depends on, so loading the list
// from its end satisfies every dependency first.
func (t *Tree) deps(name string) []string {
	var post []string
	seen := map[string]bool{name: true}
	var visit func(string)
	visit = func(n string) {
		m := t.Modules[n]
		ds := append([]string{}, m.Depends...)
		sort.Strings(ds)
		for _, d := range ds {
			if !seen[d] {
				seen[d] = true
				visit(d)
				post = append(post, d)
			}
		}
	}
	visit(name)
	// post is in load order (dependencies first); depmod lists the reverse.
	for i, j := 0, len(post)-1; i < j; i, j = i+1, j-1 {
		post[i], post[j] = post[j], post[i]
	}
	return post
}

// WriteDep writes modules.dep for the named modules (which must be closed
// under dependencies), in depmod's format: "path: dep-path dep-path".
func (t *Tree) WriteDep(w io.Writer, names []string) error {
	in := set(names)
	for _, n := range sortedByPath(t, names) {
		m := t.Modules[n]
		var paths []string
		for _, d := range t.deps(n) {
			if !in[d] {
				return fmt.Errorf("modules.dep: %s needs %s, which is not in the set", n, d)
			}
			paths = append(paths, t.Modules[d].Path)
		}
		line := m.Path + ":"
		if len(paths) > 0 {
			line += " " + strings.Join(paths, " ")
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// Aliases lists the alias lines of the named modules, sorted by module then
// pattern order as found in the module.
func (t *Tree) Aliases(names []string) []Alias {
	var out []Alias
	for _, n := range sortedByPath(t, names) {
		for _, a := range t.Modules[n].Aliases {
			out = append(out, Alias{Pattern: a, Module: n})
		}
	}
	return out
}

// WriteAlias writes modules.alias for the named modules in depmod's format.
func (t *Tree) WriteAlias(w io.Writer, names []string) error {
	if _, err := fmt.Fprintln(w, "# Aliases extracted from modules themselves."); err != nil {
		return err
	}
	for _, a := range t.Aliases(names) {
		if _, err := fmt.Fprintf(w, "alias %s %s\n", a.Pattern, a.Module); err != nil {
			return err
		}
	}
	return nil
}

// WriteSoftdep writes modules.softdep for the named modules in depmod's format.
func (t *Tree) WriteSoftdep(w io.Writer, names []string) error {
	if _, err := fmt.Fprintln(w, "# Soft dependencies extracted from modules themselves."); err != nil {
		return err
	}
	sorted := append([]string{}, names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		m := t.Modules[n]
		if len(m.SoftPre) == 0 && len(m.SoftPost) == 0 {
			continue
		}
		line := "softdep " + n
		if len(m.SoftPre) > 0 {
			line += " pre: " + strings.Join(m.SoftPre, " ")
		}
		if len(m.SoftPost) > 0 {
			line += " post: " + strings.Join(m.SoftPost, " ")
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// WriteOrder writes modules.order for the named modules: the lines of the
// kernel's own modules.order (from order) that name one of them, in that
// order. kmod uses it to order modules.dep and to rank alias candidates.
func (t *Tree) WriteOrder(w io.Writer, names []string, order io.Reader) error {
	in := set(names)
	data, err := io.ReadAll(order)
	if err != nil {
		return fmt.Errorf("read modules.order: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || !in[CanonicalName(line)] {
			continue
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// ReadPatternFile reads a pattern list: one pattern per line, '#' comments.
func ReadPatternFile(file string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read module list: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		out = append(out, strings.Fields(line)...)
	}
	return out, nil
}

func set(names []string) map[string]bool {
	s := make(map[string]bool, len(names))
	for _, n := range names {
		s[n] = true
	}
	return s
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedByPath(t *Tree, names []string) []string {
	out := append([]string{}, names...)
	sort.Slice(out, func(i, j int) bool { return t.Modules[out[i]].Path < t.Modules[out[j]].Path })
	return out
}
