package imagestore

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"magestack/images/debimage"
	"magestack/images/manifest"
)

func needLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mount)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no /dev/loop-control on this host")
	}
	for _, tool := range []string{"mksquashfs", "mke2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (squashfs-tools, e2fsprogs)", tool)
		}
	}
}

func unmount(t *testing.T, dir string) {
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestDiskEndToEnd builds a real images disk (squashfs inside ext4
// labelled MAGESTACK-IMAGES), attaches it to a loop device, finds it by
// label, mounts it read-only, verifies the image and mounts the squashfs.
func TestDiskEndToEnd(t *testing.T) {
	needLoop(t)
	ctx := context.Background()
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc/role"), []byte("tiny role\n"), 0o644)
	out := filepath.Join(work, "out")
	os.MkdirAll(out, 0o755)
	if err := debimage.Squash(ctx, debimage.Options{}, tree, filepath.Join(out, "tiny.squashfs"), 1735689600); err != nil {
		t.Fatal(err)
	}
	sum, size, err := debimage.FileDigest(filepath.Join(out, "tiny.squashfs"))
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Version: manifest.Version, Images: []manifest.Image{{Name: "tiny", File: "tiny.squashfs", Size: size, SHA256: sum}}}
	if err := m.Write(out); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(work, "images.img")
	if err := debimage.MakeDisk(ctx, out, disk, 1735689600, debimage.Options{}); err != nil {
		t.Fatal(err)
	}

	dev, f, err := AttachLoop(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found, err := FindDisks("/", "/dev", Label)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(found, dev) {
		t.Fatalf("FindDisks = %v, want it to contain %s", found, dev)
	}

	mnt := filepath.Join(work, "disk")
	unmount(t, mnt)
	s, err := Open(ctx, nil, Options{Device: dev, MountDir: mnt})
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // the mount holds the device now
	if got := s.Path("tiny"); got != filepath.Join(mnt, "tiny.squashfs") {
		t.Fatalf("Path(tiny) = %q", got)
	}
	// Read-only: the verified image cannot be replaced under the role.
	if err := os.WriteFile(filepath.Join(mnt, "tiny.squashfs"), []byte("x"), 0o644); err == nil {
		t.Fatal("the images disk is writable")
	}

	root := filepath.Join(work, "root")
	unmount(t, root)
	if err := MountSquashfs(s.Path("tiny"), root); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "etc/role"))
	if err != nil || string(b) != "tiny role\n" {
		t.Fatalf("file in the mounted image: %q, %v", b, err)
	}
}

// TestOpenNoDisk: a host without the disk gets an error saying so.
func TestOpenNoDisk(t *testing.T) {
	sys := t.TempDir()
	os.MkdirAll(filepath.Join(sys, "sys/class/block/vda"), 0o755)
	os.WriteFile(filepath.Join(sys, "sys/class/block/vda/size"), []byte("100\n"), 0o644)
	dev := t.TempDir()
	os.WriteFile(filepath.Join(dev, "vda"), make([]byte, 4096), 0o644)
	_, err := Open(context.Background(), nil, Options{SysRoot: sys, DevRoot: dev, MountDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no block device has a filesystem labelled MAGESTACK-IMAGES") {
		t.Fatalf("err %v", err)
	}
}

// TestFindDisksByLabel reads the label from the superblock of files
// standing in for devices: only the right label matches.
func TestFindDisksByLabel(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	sys, dev := t.TempDir(), t.TempDir()
	for name, label := range map[string]string{"vda": "MAGESTACK-DATA", "vdb": Label, "vdc": ""} {
		os.MkdirAll(filepath.Join(sys, "sys/class/block", name), 0o755)
		os.WriteFile(filepath.Join(sys, "sys/class/block", name, "size"), []byte("8192\n"), 0o644)
		p := filepath.Join(dev, name)
		os.WriteFile(p, nil, 0o644)
		os.Truncate(p, 4<<20)
		if label != "" {
			if b, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-L", label, p).CombinedOutput(); err != nil {
				t.Fatalf("mke2fs: %v %s", err, b)
			}
		}
	}
	got, err := FindDisks(sys, dev, Label)
	if err != nil || len(got) != 1 || got[0] != filepath.Join(dev, "vdb") {
		t.Fatalf("FindDisks = %v, %v; want only vdb", got, err)
	}
}

// TestBuiltImagesDisk opens the images disk `make images` wrote
// (build/images.img) the way a host does and verifies every image on it.
func TestBuiltImagesDisk(t *testing.T) {
	needLoop(t)
	disk := "../../build/images.img"
	if _, err := os.Stat(disk); err != nil {
		t.Skipf("no %s (make images): %v", disk, err)
	}
	dev, f, err := AttachLoop(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mnt := filepath.Join(t.TempDir(), "disk")
	unmount(t, mnt)
	s, err := Open(context.Background(), nil, Options{Device: dev, MountDir: mnt})
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Read(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Images) == 0 || len(s.Names()) != len(m.Images) {
		t.Fatalf("verified %v of %d images", s.Names(), len(m.Images))
	}
	for _, im := range m.Images {
		if s.Path(im.Name) == "" {
			t.Errorf("image %s not verified", im.Name)
		}
	}
	t.Logf("verified %v", s.Names())
}
