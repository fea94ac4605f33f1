package qemutests

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestConfigLastGoodSurvivesRebootWithoutRepository: the first boot
// prepares a blank disk as the host's state disk and keeps the stack file
// it fetched there; with the repository gone, the next boot brings the same
// stack up from that last good revision instead of the built-in default.
func TestConfigLastGoodSurvivesRebootWithoutRepository(t *testing.T) {
	qemu.Require(t)
	repo := newCfgGitRepo(t)
	commit := repo.commit(cfgStack("diskshop"))
	n := qemu.NewNet(t, "cfgdisk")
	tap := n.AddTap("tap-disk")
	srv := n.AddClient("gitsrv", cfgServer+"/24")
	stop := repo.serveStoppable(srv)

	disk := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	// Blank and sparse: magestack partitions and formats it; the default
	// volumes (db1, acc1: 1 GiB each) are preallocated on it.
	f.Truncate(4 << 30)
	f.Close()

	boot := func(name string) *qemu.VM {
		vm := cfgBoot(t, n, tap, name, qemu.Drive{File: disk, Format: "raw"})
		return vm
	}
	first := boot("disk1")
	if _, err := first.Expect(3*time.Minute, `disk: state on the data disk`); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Expect(6*time.Minute, fmt.Sprintf(cfgLoadedPattern, "diskshop", "source", commit[:12])); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Expect(8*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	if err := first.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	if code, err := first.Wait(3 * time.Minute); err != nil || code != 0 {
		t.Fatalf("power off: exit %d, %v", code, err)
	}

	stop() // the repository is unreachable from now on
	second := boot("disk2")
	if _, err := second.Expect(3*time.Minute, `disk: state on the data disk`); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Expect(6*time.Minute, fmt.Sprintf(cfgLoadedPattern, "diskshop", "last-good", commit[:12])); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Expect(8*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
}
