package squash

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMakeAndReadBack(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs not installed (Debian package squashfs-tools)")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("x\n"), 0o644)
	out := filepath.Join(dir, "img.squashfs")
	if err := Make(tree, out); err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command("unsquashfs", "-l", out).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "squashfs-root/etc/hostname") {
		t.Fatalf("unsquashfs -l: %v\n%s", err, b)
	}
	if err := Make(filepath.Join(dir, "missing"), out); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("missing tree: %v", err)
	}
}
