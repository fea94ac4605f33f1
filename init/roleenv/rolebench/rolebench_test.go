package rolebench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The bench runs against a freshly built magestack binary (the role-init
// face lives there).
func TestMeasure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	exe := filepath.Join(t.TempDir(), "magestack")
	cmd := exec.Command("go", "build", "-o", exe, "magestack/init/cmd/magestack")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build magestack: %v\n%s", err, out)
	}
	var b bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := Run(ctx, &b, exe, 5); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "median") {
		t.Fatalf("output: %q", b.String())
	}
	t.Log(strings.TrimSpace(b.String()))
}
