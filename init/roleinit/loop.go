package roleinit

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// mountSquashfs mounts the squashfs image file read-only at target through
// a fresh loop device. The device is set to clear itself: it is released
// when the mount goes away with the role's mount namespace, so a stopped
// (or crashed) role leaves no loop device behind.
func mountSquashfs(image, target string) error {
	img, err := unix.Open(image, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("image %s: %w", image, err)
	}
	defer unix.Close(img)
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("image %s: /dev/loop-control: %w (load the loop module)", image, err)
	}
	defer unix.Close(ctl)
	// Another role may grab the same free device between the query and the
	// configure (EBUSY): ask again.
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return fmt.Errorf("image %s: no free loop device: %w", image, err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lfd, err := openLoop(dev)
		if err != nil {
			return fmt.Errorf("image %s: %w", image, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}}
		err = unix.IoctlLoopConfigure(lfd, &cfg)
		if errors.Is(err, unix.EBUSY) {
			unix.Close(lfd)
			lastErr = err
			continue
		}
		if err != nil {
			unix.Close(lfd)
			return fmt.Errorf("image %s: configure %s: %w", image, dev, err)
		}
		err = unix.Mount(dev, target, "squashfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, "")
		unix.Close(lfd) // the mount holds the device now; autoclear frees it after
		if err != nil {
			hint := ""
			if errors.Is(err, unix.ENODEV) {
				hint = " (load the squashfs module)"
			}
			return fmt.Errorf("image %s: mount %s: %w%s", image, dev, err, hint)
		}
		return nil
	}
	return fmt.Errorf("image %s: loop devices kept being taken: %w", image, lastErr)
}

// openLoop opens a loop device node, waiting briefly for devtmpfs to create
// it after LOOP_CTL_GET_FREE added the device.
func openLoop(dev string) (int, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
			return -1, fmt.Errorf("open %s: %w", dev, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// isFile reports whether p is a regular file (a squashfs image) rather
// than a directory tree.
func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
