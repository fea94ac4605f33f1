package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A volume's backing store is a preallocated file on the data disk seen
// through a loop device (as LINSTOR's file storage pools do): the data
// disk keeps one filesystem for the host's own state and the volumes, the
// file's size is the volume's hard limit, and growing is a fallocate.

// loopFor returns the loop device already backed by file, "" for none: a
// restarted PID 1 finds the devices its predecessor attached.
func loopFor(sysBlock, file string) (string, error) {
	want, err := filepath.EvalSymlinks(file)
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("list block devices: %w", err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "loop", "backing_file"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == want {
			return "/dev/" + e.Name(), nil
		}
	}
	return "", nil
}

// attachLoop attaches file to a free loop device with direct I/O (the
// host's page cache would otherwise hold a second copy of every block) and
// returns the device.
func attachLoop(file string) (string, error) {
	f, err := os.OpenFile(file, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open backing file: %w", err)
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("loop control: %w", err)
	}
	defer ctl.Close()
	// Another attach may take the free device between the two calls.
	for attempt := 0; attempt < 8; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("find a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) {
			// A backing filesystem without direct I/O (tmpfs).
			cfg.Info.Flags = 0
			err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		}
		lf.Close()
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("configure %s: %w", dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("no free loop device after 8 attempts")
}

// detachLoop releases a loop device.
func detachLoop(dev string) error {
	lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// refreshLoopSize makes the loop device see its grown backing file.
func refreshLoopSize(dev string) error {
	lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("grow %s: %w", dev, err)
	}
	return nil
}

// blockDevSize is the size of a block device in bytes.
func blockDevSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Seek(0, 2)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return n, nil
}
