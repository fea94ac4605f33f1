package qemutests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

// guestTests waits for the result line of a guest running a package's
// tests (init/internal/guest: "<name>-guest: tests exit code N"), fails t
// for each of mustPass that did not pass, for every failed test and for a
// failed setup, logs the console lines show picks (nil: none), and
// returns the console.
func guestTests(t *testing.T, vm *qemu.VM, name string, mustPass []string, show func(line string) bool) string {
	t.Helper()
	m, err := vm.Expect(qemu.Scale(10*time.Minute), name+`-guest: tests exit code (\d+)`)
	if err != nil {
		t.Fatal(err)
	}
	console := vm.Console()
	for _, test := range mustPass {
		if !regexp.MustCompile(`--- PASS: ` + regexp.QuoteMeta(test) + ` `).MatchString(console) {
			t.Errorf("%s did not pass in the guest", test)
		}
	}
	var shown []string
	for _, l := range strings.Split(console, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.Contains(l, "--- FAIL") || strings.Contains(l, name+"-guest: setup:"):
			t.Errorf("guest: %s", l)
		case show != nil && show(l):
			shown = append(shown, l)
		}
	}
	if len(shown) > 0 {
		t.Logf("guest:\n%s", strings.Join(shown, "\n"))
	}
	if m[1] != "0" {
		t.Errorf("the %s tests exited %s in the guest", name, m[1])
	}
	return console
}
