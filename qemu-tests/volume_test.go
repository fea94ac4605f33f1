package qemutests

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestVolumesOnDRBD runs init/volume's own tests inside a guest booted on
// build/initramfs.img, the test binary as its init: Debian's drbd 8.4
// module, drbd-utils and e2fsprogs as PID 1 uses them. A volume is
// created, formatted once, kept across demote and promote, grown online and
// its shrink refused; two volumes connected over loopback replicate with
// protocol C and survive planned moves both ways.
func TestVolumesOnDRBD(t *testing.T) {
	qemu.Require(t)
	im := qemu.RequireImage(t)
	dir := t.TempDir()
	bin := guestTestBinary(t, dir, "./init/volume")
	initrd := filepath.Join(dir, "initramfs-volume.img")
	if err := qemu.PrependInitramfs(initrd, im.Initramfs, []qemu.File{{Path: "volume.test", Src: bin}}); err != nil {
		t.Fatal(err)
	}
	vm := qemu.Start(t, qemu.Options{Name: "volume", Kernel: im.Kernel, Initrd: initrd, Memory: 1024, SMP: 2, NoReboot: true,
		Append: "console=ttyS0 quiet panic=-1 rdinit=/volume.test MAGESTACK_VOLUME_GUEST=1"})
	guestTests(t, vm, "volume", []string{"TestGuestVolumeLifecycle", "TestGuestVolumePairReplicates"}, func(l string) bool {
		return strings.Contains(l, "--- ") || strings.Contains(l, "grown online:") || strings.Contains(l, "synced:") || strings.Contains(l, "refused")
	})
	if _, err := vm.Wait(qemu.Scale(time.Minute)); err != nil {
		t.Errorf("guest did not power off: %v", err)
	}
}
