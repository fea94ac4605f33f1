package busybox

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildTree(t *testing.T) {
	if _, err := os.Stat(DefaultBinary); err != nil {
		t.Skipf("%s missing (Debian package busybox-static): %v", DefaultBinary, err)
	}
	dst := filepath.Join(t.TempDir(), "img")
	if err := Build(dst, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range append([]string{"bin/busybox", "etc/passwd", "etc/group", "www/web/index.html", "www/monitor/cgi-bin/status", "usr/libexec/magestack/banner"}, MountPoints...) {
		if _, err := os.Stat(filepath.Join(dst, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
	// Every applet link must resolve to busybox and run inside the tree.
	out, err := exec.Command(filepath.Join(dst, "bin/sh"), "-c", "echo hello from $0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from") {
		t.Fatalf("bin/sh: %v %s", err, out)
	}
	for _, a := range Applets {
		if target, err := os.Readlink(filepath.Join(dst, "bin", a)); err != nil || target != "busybox" {
			t.Errorf("bin/%s -> %q, %v", a, target, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dst, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp must be sticky: %v %v", fi.Mode(), err)
	}
}

func TestBuildRefusesNonEmptyAndMissingBinary(t *testing.T) {
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "junk"), nil, 0o644)
	if err := Build(dst, Options{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("want not-empty error, got %v", err)
	}
	err := Build(filepath.Join(t.TempDir(), "x"), Options{Binary: "/nonexistent/busybox"})
	if err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Fatalf("want missing-binary error naming the package, got %v", err)
	}
}
