package datadisk

import (
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func image(t *testing.T, size int64) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

func TestGPTIsReadBySfdisk(t *testing.T) {
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("sfdisk not installed")
	}
	p := image(t, 64<<20)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	if err := writeGPT(f, 64<<20, "magestack-data"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("sfdisk", "--json", p).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	var pt struct {
		PartitionTable struct {
			Label      string `json:"label"`
			Partitions []struct {
				Start int64  `json:"start"`
				Type  string `json:"type"`
				Name  string `json:"name"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	json.Unmarshal(out, &pt)
	parts := pt.PartitionTable.Partitions
	if pt.PartitionTable.Label != "gpt" || len(parts) != 1 || parts[0].Start != 2048 ||
		parts[0].Type != "0FC63DAF-8483-4772-8E79-3D69D8477DE4" || parts[0].Name != "magestack-data" {
		t.Fatalf("sfdisk read %s", out)
	}
	if v, err := exec.Command("sfdisk", "--verify", p).CombinedOutput(); err != nil || !strings.Contains(string(v), "No errors detected") {
		t.Fatalf("sfdisk --verify: %v %s", err, v)
	}
}

func TestFindPrefersOursAndNeverTakesForeignData(t *testing.T) {
	ours := image(t, 32<<20)
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-L", Label, ours).CombinedOutput(); err != nil {
		t.Skipf("mke2fs: %v %s", err, out)
	}
	foreign := image(t, 32<<20)
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-L", "customer", foreign).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	empty := image(t, 32<<20)
	junk := image(t, 32<<20)
	os.WriteFile(junk, []byte("something precious"), 0o644)
	os.Truncate(junk, 32<<20)

	for _, tc := range []struct {
		name    string
		disks   []Disk
		want    string
		prepare bool
		err     bool
	}{
		{"ours wins over blank", []Disk{{Dev: empty, Size: 32 << 20, Whole: true}, {Dev: ours, Size: 32 << 20, Whole: true}}, ours, false, false},
		{"blank disk is prepared", []Disk{{Dev: foreign, Size: 32 << 20, Whole: true}, {Dev: empty, Size: 32 << 20, Whole: true}}, empty, true, false},
		{"foreign data is never used", []Disk{{Dev: foreign, Size: 32 << 20, Whole: true}, {Dev: junk, Size: 32 << 20, Whole: true}}, "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, prep, err := Find(tc.disks)
			if (err != nil) != tc.err || dev != tc.want || prep != tc.prepare {
				t.Fatalf("Find = %q, %v, %v; want %q, %v, err=%v", dev, prep, err, tc.want, tc.prepare, tc.err)
			}
		})
	}
}

// TestPrepareAndMountOnALoopDevice runs the first-boot path for real.
func TestPrepareAndMountOnALoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	p := image(t, 64<<20)
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", p).Output()
	if err != nil {
		t.Skipf("no loop devices here: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	part, err := Prepare(loop, 64<<20, slog.New(slog.DiscardHandler))
	if err != nil && strings.Contains(err.Error(), "did not appear") {
		t.Skipf("this kernel does not scan GPT partition tables (CONFIG_EFI_PARTITION off): the first-boot path runs in QEMU instead: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if part != loop+"p1" {
		t.Errorf("partition %s, want %sp1", part, loop)
	}
	dev, prep, err := Find([]Disk{{Dev: loop, Size: 64 << 20, Whole: true}, {Dev: part, Size: 63 << 20}})
	if err != nil || dev != part || prep {
		t.Fatalf("after prepare, Find = %q %v %v", dev, prep, err)
	}
	dir := t.TempDir()
	if err := Mount(part, dir); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(dir, 0)
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A second Prepare refuses: the disk is no longer blank.
	if _, err := Prepare(loop, 64<<20, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Prepare overwrote a prepared disk")
	}
}
