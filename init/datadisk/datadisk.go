// Package datadisk finds, or on first boot prepares, the host's persistent
// disk: an ext4 filesystem labelled MAGESTACK-DATA holding the raft state,
// the last good stack file and role data. A disk that is not blank and not
// ours is never touched.
package datadisk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Label is the filesystem label of the data disk.
const Label = "MAGESTACK-DATA"

// Ext4Label reads the label of an ext4 filesystem (superblock at byte 1024:
// magic at +56, volume name at +120); false when r holds no ext4.
func Ext4Label(r io.ReaderAt) (string, bool) {
	sb := make([]byte, 136)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return "", false
	}
	if binary.LittleEndian.Uint16(sb[56:]) != 0xef53 {
		return "", false
	}
	return string(bytes.TrimRight(sb[120:136], "\x00")), true
}

// blank reports whether the first and last MiB of a device are all zero: no
// partition table (primary or backup GPT), no filesystem signature.
func blank(r io.ReaderAt, size int64) (bool, error) {
	buf := make([]byte, 1<<20)
	for _, off := range []int64{0, size - int64(len(buf))} {
		if off < 0 {
			off = 0
		}
		n, err := r.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

// Disk is a candidate block device.
type Disk struct {
	Name string // vda, vda1
	Dev  string // /dev/vda
	Size int64
	// Whole is true for a disk, false for a partition.
	Whole bool
}

// List reads /sys/class/block under sysRoot ("/" normally).
func List(sysRoot string) ([]Disk, error) {
	dir := filepath.Join(sysRoot, "sys/class/block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Disk
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") || strings.HasPrefix(n, "sr") {
			continue
		}
		var sectors int64
		b, _ := os.ReadFile(filepath.Join(dir, n, "size"))
		fmt.Sscan(strings.TrimSpace(string(b)), &sectors)
		if ro, _ := os.ReadFile(filepath.Join(dir, n, "ro")); strings.TrimSpace(string(ro)) == "1" {
			continue // read-only (e.g. the images disk)
		}
		_, perr := os.Stat(filepath.Join(dir, n, "partition"))
		out = append(out, Disk{Name: n, Dev: "/dev/" + n, Size: sectors * 512, Whole: perr != nil})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Find returns the device labelled MAGESTACK-DATA, or, when none is, the
// first blank whole disk to prepare (prepare=true). Neither: an error.
func Find(disks []Disk) (dev string, prepare bool, err error) {
	var blankDisk string
	for _, d := range disks {
		f, err := os.Open(d.Dev)
		if err != nil {
			continue
		}
		label, isExt := Ext4Label(f)
		if isExt && label == Label {
			f.Close()
			return d.Dev, false, nil
		}
		if d.Whole && blankDisk == "" && d.Size > 0 {
			if ok, _ := blank(f, d.Size); ok {
				blankDisk = d.Dev
			}
		}
		f.Close()
	}
	if blankDisk != "" {
		return blankDisk, true, nil
	}
	return "", false, errors.New("no disk labelled " + Label + " and no blank disk: nothing to keep state on (disks holding other data are never touched)")
}

// Prepare partitions a blank disk, formats its partition as ext4 labelled
// MAGESTACK-DATA with mke2fs, and returns the partition's device.
func Prepare(disk string, size int64, log *slog.Logger) (string, error) {
	f, err := os.OpenFile(disk, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", disk, err)
	}
	if ok, err := blank(f, size); err != nil || !ok {
		f.Close()
		return "", fmt.Errorf("%s is no longer blank; not touching it", disk)
	}
	if err := writeGPT(f, size, "magestack-data"); err != nil {
		f.Close()
		return "", fmt.Errorf("%s: %w", disk, err)
	}
	f.Sync()
	// Ask the kernel to re-read the partition table.
	unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
	f.Close()
	part := partitionDev(disk)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(part); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("partition %s did not appear after writing the table", part)
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Info("datadisk: formatting", "device", part, "label", Label)
	out, err := exec.Command(mke2fs(), "-q", "-F", "-t", "ext4", "-L", Label, part).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mke2fs %s: %v: %s", part, err, out)
	}
	return part, nil
}

// mke2fs finds the formatter: PID 1 runs without PATH, and the initramfs
// carries it at its Debian path.
func mke2fs() string {
	if p, err := exec.LookPath("mke2fs"); err == nil {
		return p
	}
	return "/usr/sbin/mke2fs"
}

// partitionDev names the first partition of a disk (vda → vda1,
// nvme0n1 → nvme0n1p1).
func partitionDev(disk string) string {
	if last := disk[len(disk)-1]; last >= '0' && last <= '9' {
		return disk + "p1"
	}
	return disk + "1"
}

// Mount mounts dev (ext4) at dir.
func Mount(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, "ext4", unix.MS_NOATIME, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	return nil
}
