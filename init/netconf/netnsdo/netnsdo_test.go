package netnsdo

import (
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netns"
)

func TestRunSwitchesAndRestores(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	name := "msnsdo-test"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	before, _ := netns.Get()
	defer before.Close()

	var inside []net.Interface
	if err := Run("/run/netns/"+name, func() (err error) { inside, err = net.Interfaces(); return }); err != nil {
		t.Fatal(err)
	}
	if len(inside) != 1 || inside[0].Name != "lo" {
		t.Fatalf("inside the new namespace: %v, want only lo", inside)
	}
	after, _ := netns.Get()
	defer after.Close()
	if !after.Equal(before) {
		t.Fatal("Run did not restore the namespace")
	}
	if err := Run("/run/netns/does-not-exist", func() error { return nil }); err == nil {
		t.Fatal("a missing namespace was not reported")
	}
}
