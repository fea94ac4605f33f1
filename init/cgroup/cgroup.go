// Package cgroup manages cgroup v2 groups for role environments and their
// services: create a group with CPU, memory and pids limits, hand its
// directory to clone (UseCgroupFD) so a process is placed at birth, read its
// accounting, kill everything in it at once and remove it.
package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where PID 1 mounts the cgroup2 hierarchy.
const DefaultRoot = "/sys/fs/cgroup"

// Limits are the resource limits of a group. Zero values leave the kernel
// default (no limit, weight 100) in place.
type Limits struct {
	CPUWeight int    // cpu.weight, 1..10000
	MemoryMax uint64 // memory.max in bytes
	PidsMax   int    // pids.max
}

// controllers maps each limit to the controller that must be enabled in the
// parent's subtree_control for the limit's file to exist.
func (l Limits) controllers() []string {
	var c []string
	if l.CPUWeight != 0 {
		c = append(c, "cpu")
	}
	if l.MemoryMax != 0 {
		c = append(c, "memory")
	}
	if l.PidsMax != 0 {
		c = append(c, "pids")
	}
	return c
}

// Validate reports limits the kernel would reject, before anything is
// created.
func (l Limits) Validate() error {
	if l.CPUWeight != 0 && (l.CPUWeight < 1 || l.CPUWeight > 10000) {
		return fmt.Errorf("cpu weight %d out of range 1..10000", l.CPUWeight)
	}
	if l.PidsMax < 0 {
		return fmt.Errorf("pids max %d is negative", l.PidsMax)
	}
	return nil
}

// Group is one cgroup v2 directory.
type Group struct {
	root string // mount point of the cgroup2 hierarchy
	rel  string // path below root, e.g. magestack/web1/httpd
}

// IsV2 reports whether root is a cgroup2 mount.
func IsV2(root string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return false
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC
}

// Open returns the group at rel below root without creating it.
func Open(root, rel string) (*Group, error) {
	rel, err := cleanRel(rel)
	if err != nil {
		return nil, err
	}
	return &Group{root: root, rel: rel}, nil
}

func cleanRel(rel string) (string, error) {
	c := filepath.Clean("/" + rel)
	if c == "/" {
		return "", fmt.Errorf("cgroup path %q: the root group cannot be managed", rel)
	}
	for _, part := range strings.Split(c[1:], "/") {
		if part == ".." || strings.HasPrefix(part, "cgroup.") {
			return "", fmt.Errorf("cgroup path %q: invalid component %q", rel, part)
		}
	}
	return c[1:], nil
}

// Create makes the group at rel below root (and its parents), enabling the
// controllers the limits need in every ancestor's subtree_control, then
// writes the limits. It is idempotent: an existing group gets the limits
// rewritten.
func Create(root, rel string, lim Limits) (*Group, error) {
	if err := lim.Validate(); err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", rel, err)
	}
	g, err := Open(root, rel)
	if err != nil {
		return nil, err
	}
	if !IsV2(root) {
		return nil, fmt.Errorf("cgroup %s: %s is not a cgroup2 mount", rel, root)
	}
	want := lim.controllers()
	parts := strings.Split(g.rel, "/")
	dir := root
	for i, part := range parts {
		if len(want) > 0 {
			if err := enableControllers(dir, want); err != nil {
				return nil, fmt.Errorf("cgroup %s: %w", rel, err)
			}
		}
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cgroup %s: create %s: %w", rel, strings.Join(parts[:i+1], "/"), err)
		}
	}
	if err := g.SetLimits(lim); err != nil {
		return nil, err
	}
	return g, nil
}

// enableControllers turns on each controller for dir's children. A group
// with processes of its own cannot delegate (the "no internal processes"
// rule), which the kernel reports as EBUSY; the error names the directory.
func enableControllers(dir string, want []string) error {
	avail, err := readWords(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return err
	}
	enabled, err := readWords(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	var add []string
	for _, c := range want {
		if !contains(avail, c) {
			return fmt.Errorf("controller %q is not available in %s (available: %s)", c, dir, strings.Join(avail, " "))
		}
		if !contains(enabled, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0); err != nil {
		return fmt.Errorf("enable %s in %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func readWords(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// Path is the group's directory.
func (g *Group) Path() string { return filepath.Join(g.root, g.rel) }

// Rel is the group's path below the hierarchy root.
func (g *Group) Rel() string { return g.rel }

// Sub returns the child group name (not created).
func (g *Group) Sub(name string) (*Group, error) { return Open(g.root, g.rel+"/"+name) }

// SetLimits writes the non-zero limits.
func (g *Group) SetLimits(lim Limits) error {
	if err := lim.Validate(); err != nil {
		return fmt.Errorf("cgroup %s: %w", g.rel, err)
	}
	writes := []struct {
		file, val string
		set       bool
	}{
		{"cpu.weight", strconv.Itoa(lim.CPUWeight), lim.CPUWeight != 0},
		{"memory.max", strconv.FormatUint(lim.MemoryMax, 10), lim.MemoryMax != 0},
		// No swap: a role over its memory is OOM-killed rather than paging
		// everyone else out. Absent without swap accounting.
		{"memory.swap.max", "0", lim.MemoryMax != 0},
		{"pids.max", strconv.Itoa(lim.PidsMax), lim.PidsMax != 0},
	}
	for _, w := range writes {
		if !w.set {
			continue
		}
		err := g.write(w.file, w.val)
		if err != nil && w.file == "memory.swap.max" && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (g *Group) write(file, val string) error {
	if err := os.WriteFile(filepath.Join(g.Path(), file), []byte(val), 0); err != nil {
		return fmt.Errorf("cgroup %s: write %s=%s: %w", g.rel, file, val, err)
	}
	return nil
}

func (g *Group) read(file string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(g.Path(), file))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", g.rel, err)
	}
	return b, nil
}

// OpenFD opens the group directory for SysProcAttr.CgroupFD. The caller
// closes it once the process has started.
func (g *Group) OpenFD() (int, error) {
	fd, err := unix.Open(g.Path(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("cgroup %s: open: %w", g.rel, err)
	}
	return fd, nil
}

// Procs lists the pids in the group itself (not its children).
func (g *Group) Procs() ([]int, error) {
	b, err := g.read("cgroup.procs")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: cgroup.procs: %w", g.rel, err)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

// Populated reports whether any process lives in the group or below it.
func (g *Group) Populated() (bool, error) {
	kv, err := g.keyValues("cgroup.events")
	if err != nil {
		return false, err
	}
	return kv["populated"] == 1, nil
}

// Stats is a snapshot of a group's accounting.
type Stats struct {
	CPUUsec       uint64 // cpu.stat usage_usec
	MemoryCurrent uint64 // memory.current
	MemoryMax     uint64 // memory.max; 0 for "max"
	OOMKills      uint64 // memory.events oom_kill
	PidsCurrent   uint64 // pids.current
}

// Stats reads what accounting the enabled controllers provide; files of
// controllers that are not enabled read as zero.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	cpu, err := g.keyValues("cpu.stat")
	if err != nil {
		return s, err // cpu.stat exists in every v2 group
	}
	s.CPUUsec = cpu["usage_usec"]
	s.MemoryCurrent, _ = g.single("memory.current")
	s.MemoryMax, _ = g.single("memory.max")
	s.PidsCurrent, _ = g.single("pids.current")
	if ev, err := g.keyValues("memory.events"); err == nil {
		s.OOMKills = ev["oom_kill"]
	}
	return s, nil
}

// OOMKills returns memory.events oom_kill (0 without the memory controller).
func (g *Group) OOMKills() (uint64, error) {
	ev, err := g.keyValues("memory.events")
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return ev["oom_kill"], nil
}

func (g *Group) single(file string) (uint64, error) {
	b, err := g.read(file)
	if err != nil {
		return 0, err
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: %s: %w", g.rel, file, err)
	}
	return n, nil
}

func (g *Group) keyValues(file string) (map[string]uint64, error) {
	b, err := g.read(file)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[f[0]] = n
		}
	}
	return out, nil
}

// Kill SIGKILLs every process in the group and its descendants at once
// (cgroup.kill), so nothing forked during the kill escapes.
func (g *Group) Kill() error {
	err := g.write("cgroup.kill", "1")
	if errors.Is(err, os.ErrNotExist) {
		return nil // the group is already gone
	}
	return err
}

// Remove kills what is left in the group and its children, waits (bounded
// by ctx) for it to empty and removes the directories, deepest first.
// Removing a group that does not exist is not an error.
func (g *Group) Remove(ctx context.Context) error {
	if _, err := os.Stat(g.Path()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := g.Kill(); err != nil {
		return err
	}
	var dirs []string
	_ = filepath.WalkDir(g.Path(), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := rmdirRetry(ctx, dirs[i]); err != nil {
			return fmt.Errorf("cgroup %s: %w", g.rel, err)
		}
	}
	return nil
}

// rmdirRetry removes a group directory; the kernel refuses (EBUSY) while
// killed processes are still exiting, so it retries until ctx ends.
func rmdirRetry(ctx context.Context, dir string) error {
	delay := time.Millisecond
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove %s: still busy: %w", dir, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}
