package imagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/datadisk"
)

// FindDisks returns the block devices (whole disks, partitions and loop
// devices, sorted) whose ext4 filesystem carries label. Devices that cannot
// be read (empty loop devices, ejected media) are skipped.
func FindDisks(sysRoot, devRoot, label string) ([]string, error) {
	dir := filepath.Join(sysRoot, "sys/class/block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("images disk: list block devices: %w", err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
			continue
		}
		if sz, err := os.ReadFile(filepath.Join(dir, n, "size")); err == nil && strings.TrimSpace(string(sz)) == "0" {
			continue
		}
		dev := filepath.Join(devRoot, n)
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		l, ok := datadisk.Ext4Label(f)
		f.Close()
		if ok && l == label {
			out = append(out, dev)
		}
	}
	slices.Sort(out)
	return out, nil
}

// MountReadOnly mounts the filesystem on dev at dir read-only, without
// devices, setuid or exec (images are loop-mounted from it, not run).
func MountReadOnly(dev, dir, fstype string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	err := unix.Mount(dev, dir, fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "")
	if errors.Is(err, unix.EBUSY) && mountedAt(dev, dir) {
		return nil // already there (a retry after a partial failure)
	}
	if err != nil {
		hint := ""
		if errors.Is(err, unix.ENODEV) {
			hint = " (the kernel lacks " + fstype + ": load its module)"
		}
		return fmt.Errorf("mount %s (%s) read-only at %s: %w%s", dev, fstype, dir, err, hint)
	}
	return nil
}

func mountedAt(dev, dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == dev && f[1] == dir {
			return true
		}
	}
	return false
}

// AttachLoop puts file behind a free loop device, read-only, and returns
// the device path. The device clears itself once nothing holds it: when the
// returned descriptor is closed with no mount left on it. Close it after
// mounting (the mount keeps the device) or to release the device.
func AttachLoop(file string) (dev string, fd *os.File, err error) {
	img, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("loop %s: %w", file, err)
	}
	defer unix.Close(img)
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("loop %s: /dev/loop-control: %w (load the loop module)", file, err)
	}
	defer unix.Close(ctl)
	var lastErr error
	// Someone else may take the free device between the query and the
	// configure (EBUSY): ask for another one.
	for range 20 {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("loop %s: no free loop device: %w", file, err)
		}
		dev = "/dev/loop" + strconv.Itoa(n)
		lfd, err := openWait(dev)
		if err != nil {
			return "", nil, fmt.Errorf("loop %s: %w", file, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}}
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(lfd, &cfg)
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			// Kernels before 5.8 have no LOOP_CONFIGURE.
			if err = unix.IoctlSetInt(lfd, unix.LOOP_SET_FD, img); err == nil {
				err = unix.IoctlLoopSetStatus64(lfd, &cfg.Info)
			}
		}
		if errors.Is(err, unix.EBUSY) {
			unix.Close(lfd)
			lastErr = err
			continue
		}
		if err != nil {
			unix.Close(lfd)
			return "", nil, fmt.Errorf("loop %s: configure %s: %w", file, dev, err)
		}
		return dev, os.NewFile(uintptr(lfd), dev), nil
	}
	return "", nil, fmt.Errorf("loop %s: loop devices kept being taken: %w", file, lastErr)
}

func openWait(dev string) (int, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
			return -1, fmt.Errorf("open %s: %w", dev, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// MountSquashfs mounts a (verified) squashfs image file read-only at dir
// through a self-clearing loop device.
func MountSquashfs(image, dir string) error {
	dev, f, err := AttachLoop(image)
	if err != nil {
		return err
	}
	defer f.Close()
	return MountReadOnly(dev, dir, "squashfs")
}
