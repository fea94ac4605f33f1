package qemutests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"magestack/qemu-tests/qemu"
)

// guestTestBinary compiles package pkg's tests (e.g. "./init/vpn") into a
// static binary under dir, to run as a guest's init: the package's own
// tests then run on Debian's kernel.
func guestTestBinary(t *testing.T, dir, pkg string) string {
	t.Helper()
	root, err := qemu.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg)+".test")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(gobin, "test", "-c", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", pkg, err, out)
	}
	return bin
}
