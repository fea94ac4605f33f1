package roleinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"magestack/services"
)

const defaultScratch = 64 << 20

// mnt is one mount below the new root.
type mnt struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode // of the target directory when created
}

// buildRoot assembles the role's root filesystem under a tmpfs at
// s.StateDir in this (private) mount namespace and returns its path.
func buildRoot(s *Spec) (string, error) {
	// Nothing mounted from here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("make / private: %w", err)
	}
	size := s.ScratchSize
	if size == 0 {
		size = defaultScratch
	}
	scratch := s.StateDir
	if err := unix.Mount("scratch", scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("mode=0700,size=%d", size)); err != nil {
		return "", fmt.Errorf("scratch tmpfs on %s: %w", scratch, err)
	}
	upper, work, root := filepath.Join(scratch, "upper"), filepath.Join(scratch, "work"), filepath.Join(scratch, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", fmt.Errorf("scratch: %w", err)
		}
	}
	if s.KeepRoot {
		// The layer lives on the volume, outside /data's own tree (the
		// role sees /data/.root; overlayfs needs upper and work on one
		// filesystem).
		kept := filepath.Join(s.Volume, ".root")
		upper, work = filepath.Join(kept, "upper"), filepath.Join(kept, "work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return "", fmt.Errorf("kept root on the volume: %w", err)
			}
		}
	}
	lower := s.Image
	if isFile(s.Image) {
		lower = filepath.Join(scratch, "image")
		if err := os.Mkdir(lower, 0o755); err != nil {
			return "", fmt.Errorf("scratch: %w", err)
		}
		if err := mountSquashfs(s.Image, lower); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", escapeOverlay(lower), upper, work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		hint := ""
		if errors.Is(err, unix.ENODEV) {
			hint = " (the kernel has no overlay filesystem: load the overlay module)"
		}
		return "", fmt.Errorf("overlay of image %s: %w%s", s.Image, err, hint)
	}
	mounts := []mnt{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"sysfs", "sys", "sysfs", unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"dev", "dev", "tmpfs", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0755,size=1m", 0o755},
		{"devpts", "dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
		{"shm", "dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777,size=16m", 0o1777},
		{"tmp", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777,size=64m", 0o1777},
		{"run", "run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755,size=16m", 0o755},
	}
	for _, m := range mounts {
		if err := mountAt(root, m); err != nil {
			return "", err
		}
		if m.target == "dev" {
			if err := populateDev(filepath.Join(root, "dev")); err != nil {
				return "", err
			}
		}
	}
	if err := maskProc(filepath.Join(root, "proc"), filepath.Join(root, "dev/null"), keepsCap(s.Payload.Caps, "CAP_NET_ADMIN")); err != nil {
		return "", err
	}
	if s.Volume != "" {
		if err := mountAt(root, mnt{s.Volume, "data", "", unix.MS_BIND | unix.MS_REC, "", 0o755}); err != nil {
			return "", err
		}
		// A bind mount takes its flags only on a remount.
		if err := unix.Mount("", filepath.Join(root, "data"), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return "", fmt.Errorf("volume %s: remount nosuid,nodev: %w", s.Volume, err)
		}
		if s.KeepRoot {
			// The kept layer is the overlay's own: changed behind its back
			// (through /data) its behaviour is undefined. Hidden.
			if err := unix.Mount("kept-root", filepath.Join(root, "data", ".root"), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,mode=0500"); err != nil {
				return "", fmt.Errorf("hide the kept root layer: %w", err)
			}
		}
	}
	if err := writeFiles(root, s); err != nil {
		return "", err
	}
	return root, nil
}

// The parts of a role's own /proc that still reach the whole machine:
// procReadOnly stay readable but not writable (sysrq-trigger, written by
// root with no capability check, would reboot the host), procMasked are
// hidden (kernel memory and keys, timing side channels).
var (
	procReadOnly   = []string{"sys", "sysrq-trigger", "irq", "bus", "fs"}
	procMaskedFile = []string{"kcore", "keys", "timer_list", "sched_debug", "latency_stats"}
	procMaskedDir  = []string{"acpi", "scsi", "asound"}
)

// maskProc applies procReadOnly and the masks to the role's /proc. A role
// that keeps CAP_NET_ADMIN (fw) keeps /proc/sys/net writable: those
// sysctls are its own network namespace's.
func maskProc(proc, devNull string, netWritable bool) error {
	if netWritable {
		// A bind keeps its source's read-only flag, so this writable view
		// is made first; the recursive read-only bind of /proc/sys then
		// carries it along as a writable child.
		net := filepath.Join(proc, "sys/net")
		if err := unix.Mount(net, net, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("/proc/sys/net: %w", err)
		}
	}
	for _, p := range procReadOnly {
		if err := bindReadOnly(filepath.Join(proc, p)); err != nil {
			return err
		}
	}
	for _, p := range procMaskedFile {
		t := filepath.Join(proc, p)
		if _, err := os.Stat(t); err != nil {
			continue
		}
		if err := unix.Mount(devNull, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mask /proc/%s: %w", p, err)
		}
	}
	for _, p := range procMaskedDir {
		t := filepath.Join(proc, p)
		if _, err := os.Stat(t); err != nil {
			continue
		}
		if err := unix.Mount("masked", t, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0"); err != nil {
			return fmt.Errorf("mask /proc/%s: %w", p, err)
		}
	}
	return nil
}

// bindReadOnly makes p a read-only view of itself; missing paths are
// skipped (not every kernel has every /proc entry).
func bindReadOnly(p string) error {
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("read-only %s: %w", p, err)
	}
	if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("read-only %s: %w", p, err)
	}
	return nil
}

func keepsCap(caps []string, c string) bool {
	for _, x := range caps {
		if x == c {
			return true
		}
	}
	return false
}

// escapeOverlay escapes the characters overlayfs treats as separators in
// a lowerdir path.
func escapeOverlay(p string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`).Replace(p)
}

func mountAt(root string, m mnt) error {
	target := filepath.Join(root, m.target)
	if err := os.MkdirAll(target, m.mode|0o700); err != nil {
		return fmt.Errorf("mount point /%s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on /%s: %w", m.source, m.target, err)
	}
	return nil
}

// populateDev creates the few device nodes a service may use; nothing that
// reaches hardware or the host's consoles.
func populateDev(dev string) error {
	nodes := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}
	for _, n := range nodes {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("/dev/%s: %w", n.name, err)
		}
		if err := os.Chmod(p, 0o666); err != nil { // undo the umask
			return fmt.Errorf("/dev/%s: %w", n.name, err)
		}
	}
	links := map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("/dev/%s: %w", name, err)
		}
	}
	return nil
}

// writeFiles puts the instance's identity and the payload's rendered files
// into the writable layer.
func writeFiles(root string, s *Spec) error {
	inst := services.Instance{Name: s.Name, Role: s.Role, FQDN: s.Name + ".i", Stack: s.Stack}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"/etc/hostname", []byte(s.Name + "\n"), 0o644},
		{"/etc/hosts", []byte(s.Hosts), 0o644},
	}
	if s.ResolvConf != "" {
		files = append(files, struct {
			path string
			data []byte
			mode os.FileMode
		}{"/etc/resolv.conf", []byte(s.ResolvConf), 0o644})
	}
	for _, f := range s.Payload.Files {
		b, err := f.Render(inst)
		if err != nil {
			return err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		files = append(files, struct {
			path string
			data []byte
			mode os.FileMode
		}{f.Path, b, mode})
	}
	for _, f := range files {
		if err := writeInRoot(root, f.path, f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return nil
}

// pivotInto makes root the process's / and detaches the old root, so
// nothing of the host's filesystem stays reachable. It returns which way
// it went: "pivot_root", or "move" where the host runs from the initramfs.
func pivotInto(root string) (string, error) {
	if err := unix.Chdir(root); err != nil {
		return "", fmt.Errorf("pivot: chdir %s: %w", root, err)
	}
	// pivot_root(".", ".") stacks the old root under the new one at "/",
	// where it is unmounted without needing a directory for it.
	err := unix.PivotRoot(".", ".")
	if errors.Is(err, unix.EINVAL) {
		// The namespace's root is the initramfs (rootfs), which has no
		// parent mount and can never be pivoted away from.
		return "move", moveRoot(root)
	}
	if err != nil {
		return "", fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return "", fmt.Errorf("pivot: detach old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return "", fmt.Errorf("pivot: chdir /: %w", err)
	}
	return "pivot_root", nil
}

// moveRoot is switch_root for a role on an initramfs host: every host
// mount is detached from this namespace, the role's root is moved over "/"
// and chrooted into. What stays underneath is the initramfs content itself
// (no /run, /proc, /sys, volumes, sockets or other roles' mounts); reaching
// it takes a chroot escape, i.e. CAP_SYS_CHROOT. A host PID 1 that moves
// itself to a tmpfs (switch_root) lets roles use pivot_root instead.
func moveRoot(root string) error {
	mounts, err := mountPoints()
	if err != nil {
		return err
	}
	// Mounts that contain the new root (its ancestors) can only go once it
	// has moved out from under them; hold them by descriptor.
	var ancestors []int
	defer func() {
		for _, fd := range ancestors {
			unix.Close(fd)
		}
	}()
	for i := len(mounts) - 1; i >= 0; i-- { // deepest first
		mp := mounts[i]
		switch {
		case mp == "/" || mp == root || strings.HasPrefix(mp, root+"/"):
			continue
		case strings.HasPrefix(root, mp+"/"):
			fd, err := unix.Open(mp, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("move root: hold %s: %w", mp, err)
			}
			ancestors = append(ancestors, fd)
		default:
			// Stacked mounts share a path: detach until none is left.
			for n := 0; n < 16; n++ {
				if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
					break
				}
			}
		}
	}
	if err := unix.Mount(root, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root %s over /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("move root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("move root: chdir /: %w", err)
	}
	// The role's own /proc is in place now, so the held ancestors can be
	// named through /proc/self/fd and detached.
	for _, fd := range ancestors {
		p := "/proc/self/fd/" + strconv.Itoa(fd)
		for n := 0; n < 16; n++ {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
				break
			}
		}
	}
	left, err := mountPoints()
	if err != nil {
		return err
	}
	for _, mp := range left {
		if mp != "/" && !isRoleMount(mp) {
			return fmt.Errorf("move root: host mount %s still visible", mp)
		}
	}
	return nil
}

// roleMounts are the mount points a role's tree has, seen from inside.
// /data/.root: the mask over a kept root layer (Spec.KeepRoot).
var roleMounts = []string{"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/run", "/data", "/data/.root"}

func isRoleMount(mp string) bool {
	for _, m := range roleMounts {
		if mp == m {
			return true
		}
	}
	return strings.HasPrefix(mp, "/proc/") // the masks
}

// mountPoints lists this namespace's mount points in mount order.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeMountinfo(f[4]))
	}
	return out, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for space...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var errNotPID1 = errors.New("role-init must run as PID 1 of a new PID namespace")
