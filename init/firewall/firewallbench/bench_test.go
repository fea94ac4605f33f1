package firewallbench

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRun runs the benchmark once: it must complete and print every figure
// (the figures themselves are reported, not judged).
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft binary missing (package nftables): needed for the comparison")
	}
	var b strings.Builder
	if err := Run(&b); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
	for _, want := range []string{"netlink", "nft -f", "allow-list edit"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
