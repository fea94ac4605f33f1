// Package mounts sets up PID 1's filesystem tree from a declarative list of
// steps (directories, mounts, symlinks, device nodes, control-file writes)
// and tears mounts down at shutdown. Every step is idempotent: applying the
// list twice, or over a tree the kernel half-prepared, changes nothing and
// reports no error.
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Step is one action on the tree. Paths are absolute; Apply joins them to
// the root it is given so tests can work in a temporary directory.
type Step interface {
	Apply(root string) error
	String() string
}

// Dir makes a directory (and its parents).
type Dir struct {
	Path string
	Mode os.FileMode
}

func (d Dir) String() string { return "dir " + d.Path }

func (d Dir) Apply(root string) error {
	p := filepath.Join(root, d.Path)
	if err := os.MkdirAll(p, d.Mode); err != nil {
		return fmt.Errorf("mkdir %s: %w", p, err)
	}
	return nil
}

// Mount mounts a filesystem, creating the target directory first. An
// already-mounted target of the same type is left alone.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Optional mounts log nothing worse than a warning on failure (a kernel
	// without the filesystem).
	Optional bool
}

func (m Mount) String() string { return fmt.Sprintf("mount %s on %s", m.FSType, m.Target) }

func (m Mount) Apply(root string) error {
	target := filepath.Join(root, m.Target)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	if fstype, ok := MountedAt(target); ok && fstype == m.FSType {
		return nil
	}
	err := unix.Mount(m.Source, target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EBUSY) {
		return nil // mounted already (our own earlier pass, or the kernel's)
	}
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, m.FSType, target, err)
	}
	return nil
}

// Symlink makes Link point to Target; an existing link is replaced only
// when it points elsewhere.
type Symlink struct {
	Target, Link string
}

func (s Symlink) String() string { return "symlink " + s.Link + " -> " + s.Target }

func (s Symlink) Apply(root string) error {
	link := filepath.Join(root, s.Link)
	if cur, err := os.Readlink(link); err == nil {
		if cur == s.Target {
			return nil
		}
		if err := os.Remove(link); err != nil {
			return fmt.Errorf("replace symlink %s: %w", link, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return fmt.Errorf("mkdir for %s: %w", link, err)
	}
	if err := os.Symlink(s.Target, link); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("symlink %s -> %s: %w", link, s.Target, err)
	}
	return nil
}

// Dev makes a device node (for the few a devtmpfs-less tree needs, such as
// /dev/console before devtmpfs is mounted).
type Dev struct {
	Path  string
	Mode  uint32 // including unix.S_IFCHR or S_IFBLK
	Major uint32
	Minor uint32
}

func (d Dev) String() string { return "dev " + d.Path }

func (d Dev) Apply(root string) error {
	p := filepath.Join(root, d.Path)
	err := unix.Mknod(p, d.Mode, int(unix.Mkdev(d.Major, d.Minor)))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mknod %s: %w", p, err)
	}
	return nil
}

// CgroupControllers enables controllers for child groups in a cgroup v2
// hierarchy (cgroup.subtree_control), each one the kernel offers; one the
// kernel lacks is skipped, not an error.
type CgroupControllers struct {
	Path        string // the cgroup2 mount, e.g. /sys/fs/cgroup
	Controllers []string
}

func (c CgroupControllers) String() string {
	return "cgroup controllers " + strings.Join(c.Controllers, " ") + " in " + c.Path
}

func (c CgroupControllers) Apply(root string) error {
	dir := filepath.Join(root, c.Path)
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read available cgroup controllers: %w", err)
	}
	have := map[string]bool{}
	for _, f := range strings.Fields(string(avail)) {
		have[f] = true
	}
	var errs []error
	for _, ctl := range c.Controllers {
		if !have[ctl] {
			continue
		}
		// One write per controller: a refused one must not block the others.
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("enable cgroup controller %s in %s: %w", ctl, dir, err))
		}
	}
	return errors.Join(errs...)
}

// Default is the tree PID 1 of a host needs.
func Default() []Step {
	const nodev, nosuid, noexec = unix.MS_NODEV, unix.MS_NOSUID, unix.MS_NOEXEC
	return []Step{
		Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: nodev | nosuid | noexec},
		Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nodev | nosuid | noexec},
		Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: nosuid, Data: "mode=0755"},
		// devtmpfs's /dev/ptmx finds this instance through its "pts" sibling.
		Mount{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: nosuid | noexec, Data: "ptmxmode=0666,mode=620,gid=5"},
		Mount{Source: "tmpfs", Target: "/dev/shm", FSType: "tmpfs", Flags: nodev | nosuid, Data: "mode=1777"},
		Mount{Source: "mqueue", Target: "/dev/mqueue", FSType: "mqueue", Flags: nodev | nosuid | noexec, Optional: true},
		Symlink{Target: "/proc/self/fd", Link: "/dev/fd"},
		Symlink{Target: "/proc/self/fd/0", Link: "/dev/stdin"},
		Symlink{Target: "/proc/self/fd/1", Link: "/dev/stdout"},
		Symlink{Target: "/proc/self/fd/2", Link: "/dev/stderr"},
		Symlink{Target: "/proc/kcore", Link: "/dev/core"},
		Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: nodev | nosuid, Data: "mode=0755"},
		Dir{Path: "/run/magestack", Mode: 0o755},
		Mount{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: nodev | nosuid, Data: "mode=1777"},
		Mount{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2", Flags: nodev | nosuid | noexec, Data: "nsdelegate"},
		CgroupControllers{Path: "/sys/fs/cgroup", Controllers: []string{"cpu", "memory", "pids", "io"}},
		Mount{Source: "bpf", Target: "/sys/fs/bpf", FSType: "bpf", Flags: nodev | nosuid | noexec, Optional: true},
		Mount{Source: "securityfs", Target: "/sys/kernel/security", FSType: "securityfs", Flags: nodev | nosuid | noexec, Optional: true},
		Dir{Path: "/etc", Mode: 0o755},
		Symlink{Target: "/proc/self/mounts", Link: "/etc/mtab"},
		Dir{Path: "/var/lib/magestack", Mode: 0o755},
		Dir{Path: "/var/log", Mode: 0o755},
	}
}

// Apply applies every step in order under root ("/" on a host). A failing
// step does not stop the others; the joined error names each failure.
func Apply(log *slog.Logger, root string, steps []Step) error {
	var errs []error
	for _, s := range steps {
		err := s.Apply(root)
		if err == nil {
			continue
		}
		if m, ok := s.(Mount); ok && m.Optional {
			log.Warn("optional mount failed", "step", s.String(), "err", err)
			continue
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// MountPoint is one line of /proc/self/mountinfo.
type MountPoint struct {
	ID, Parent int
	Target     string
	FSType     string
}

// Mounted lists the current mounts in mount order.
func Mounted() ([]MountPoint, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) ([]MountPoint, error) {
	var out []MountPoint
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent major:minor root target options... - fstype source super
		f := strings.Fields(sc.Text())
		sep := -1
		for i, w := range f {
			if w == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			return nil, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		var mp MountPoint
		if _, err := fmt.Sscanf(f[0]+" "+f[1], "%d %d", &mp.ID, &mp.Parent); err != nil {
			return nil, fmt.Errorf("malformed mountinfo line %q: %w", sc.Text(), err)
		}
		mp.Target = unescapeOctal(f[4])
		mp.FSType = f[sep+1]
		out = append(out, mp)
	}
	return out, sc.Err()
}

// unescapeOctal undoes mountinfo's \040-style escapes of spaces and the like.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountedAt reports the filesystem type mounted at path, if any (the last,
// visible, mount there).
func MountedAt(path string) (string, bool) {
	mps, err := Mounted()
	if err != nil {
		return "", false
	}
	clean := filepath.Clean(path)
	fstype, ok := "", false
	for _, mp := range mps {
		if mp.Target == clean {
			fstype, ok = mp.FSType, true
		}
	}
	return fstype, ok
}

// UnmountAll unmounts everything below root (deepest first), root itself
// excluded, at shutdown. Busy mounts are detached lazily and, failing that,
// remounted read-only so the data on them is safe.
func UnmountAll(log *slog.Logger, root string) error {
	mps, err := Mounted()
	if err != nil {
		return err
	}
	return unmountBelow(log, root, mps)
}

func unmountBelow(log *slog.Logger, root string, mps []MountPoint) error {
	root = filepath.Clean(root)
	var targets []string
	for _, mp := range mps {
		if mp.Target == root || !within(mp.Target, root) {
			continue
		}
		targets = append(targets, mp.Target)
	}
	// Reverse mount order unmounts children before parents; a stable sort by
	// depth covers mounts made out of order.
	for i, j := 0, len(targets)-1; i < j; i, j = i+1, j-1 {
		targets[i], targets[j] = targets[j], targets[i]
	}
	sort.SliceStable(targets, func(i, j int) bool {
		return strings.Count(targets[i], "/") > strings.Count(targets[j], "/")
	})
	var errs []error
	for _, t := range targets {
		err := unix.Unmount(t, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			continue // done, or already gone with its parent
		}
		if errors.Is(err, unix.EBUSY) {
			if rerr := unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); rerr != nil {
				log.Debug("remount read-only failed", "target", t, "err", rerr)
			}
			if derr := unix.Unmount(t, unix.MNT_DETACH); derr == nil {
				continue
			}
		}
		errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
	}
	return errors.Join(errs...)
}

func within(p, root string) bool {
	if root == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == root || strings.HasPrefix(p, root+"/")
}
