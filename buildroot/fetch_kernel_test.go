// Package buildroot holds the build scripts' tests; the Go code lives in
// its subpackages.
package buildroot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTools puts apt-cache, apt-get and dpkg-deb stand-ins first in PATH.
// Each appends its command line to calls.log; apt-cache answers with
// resolvesTo (or fails when it is empty); dpkg-deb -x lays out a kernel tree.
func fakeTools(t *testing.T, resolvesTo string) (pathEnv, callLog string) {
	t.Helper()
	bin := t.TempDir()
	callLog = filepath.Join(bin, "calls.log")
	scripts := map[string]string{
		"apt-cache": `echo "apt-cache $*" >>` + callLog + `
[ -n "` + resolvesTo + `" ] || exit 100
printf 'linux-image-amd64\n  Depends: ` + resolvesTo + `\n'`,
		"apt-get": `echo "apt-get $*" >>` + callLog + `
[ "$1" = download ] && : >"$2_1.0_amd64.deb"
exit 0`,
		"dpkg-deb": `echo "dpkg-deb $*" >>` + callLog + `
ver=$(basename "$2" | sed 's/^linux-image-//; s/_.*//')
mkdir -p "$3/boot" "$3/lib/modules/$ver/kernel"
: >"$3/boot/vmlinuz-$ver"; : >"$3/boot/config-$ver"`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin + ":" + os.Getenv("PATH"), callLog
}

func fetch(t *testing.T, path, dir string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", "fetch-kernel.sh", dir)
	cmd.Env = append(os.Environ(), "PATH="+path)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func calls(t *testing.T, log string) string {
	b, _ := os.ReadFile(log)
	return string(b)
}

func TestFetchKernelDownloadsOnceThenReuses(t *testing.T) {
	path, log := fakeTools(t, "linux-image-9.9.9-1-amd64")
	dir := filepath.Join(t.TempDir(), "kernel")
	if out, err := fetch(t, path, dir); err != nil {
		t.Fatalf("first fetch: %v\n%s", err, out)
	}
	if c := calls(t, log); !strings.Contains(c, "apt-get download linux-image-9.9.9-1-amd64") || !strings.Contains(c, "dpkg-deb -x") {
		t.Fatalf("first fetch should download and extract; calls:\n%s", c)
	}
	if v, _ := os.ReadFile(filepath.Join(dir, "version")); string(v) != "9.9.9-1-amd64\n" {
		t.Fatalf("version file: %q", v)
	}
	if _, err := os.Stat(filepath.Join(dir, "root/boot/vmlinuz-9.9.9-1-amd64")); err != nil {
		t.Fatal(err)
	}
	os.Remove(log)
	out, err := fetch(t, path, dir)
	if err != nil {
		t.Fatalf("second fetch: %v\n%s", err, out)
	}
	if c := calls(t, log); strings.Contains(c, "download") || strings.Contains(c, "dpkg-deb") {
		t.Fatalf("second fetch must reuse the extracted kernel; calls:\n%s", c)
	}
	if !strings.Contains(out, "already extracted") {
		t.Errorf("second fetch should say it reused the kernel: %s", out)
	}
}

func TestFetchKernelReusesWhenAptCannotResolve(t *testing.T) {
	path, _ := fakeTools(t, "linux-image-9.9.9-1-amd64")
	dir := filepath.Join(t.TempDir(), "kernel")
	if out, err := fetch(t, path, dir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	offline, log := fakeTools(t, "")
	out, err := fetch(t, offline, dir)
	if err != nil {
		t.Fatalf("apt unavailable with a kernel extracted: %v\n%s", err, out)
	}
	if c := calls(t, log); strings.Contains(c, "apt-get") {
		t.Errorf("should not touch apt-get when a kernel is already there; calls:\n%s", c)
	}
}

func TestFetchKernelFailsClearly(t *testing.T) {
	offline, _ := fakeTools(t, "")
	out, err := fetch(t, offline, filepath.Join(t.TempDir(), "kernel"))
	if err == nil || !strings.Contains(out, "cannot resolve the kernel package linux-image-amd64") {
		t.Fatalf("want a clear failure, got %v:\n%s", err, out)
	}
}
