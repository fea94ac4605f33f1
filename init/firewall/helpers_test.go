package firewall

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// netns creates a fresh named network namespace for the test and returns
// its name and an open fd; both go away at cleanup.
func netns(t *testing.T) (string, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is missing")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "msfw-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return name, fd
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nftList is the kernel's view through the nft CLI (tests only).
func nftList(t *testing.T, ns string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft CLI is missing (package nftables)")
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", TableName).CombinedOutput()
	if err != nil {
		return "ERROR: " + string(out)
	}
	return string(out)
}
