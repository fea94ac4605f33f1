package qemutests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/firewall"
	"magestack/qemu-tests/qemu"
)

// imageCheckScript runs as PID 1 (busybox sh) on top of the real
// build/initramfs.img and prints one "CHECK <what> ok|failed" line per check.
// It proves the image's module tree (modules.dep/alias written by
// mkinitramfs) loads with a depmod-format consumer, and that the userland
// programs copied with their libraries run.
const imageCheckScript = `
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb mkdir -p /tmp /mnt
$bb mount -t tmpfs tmp /tmp
check() { name=$1; shift; if out=$("$@" 2>&1); then echo "CHECK $name ok"; else echo "CHECK $name failed: $out" | $bb tr '\n' ' '; echo; fi; }
echo "CHECK kernel $($bb uname -r) ok"
check modules.dep-present $bb test -s /lib/modules/$($bb uname -r)/modules.dep
# Coldplug through modules.alias, as PID 1 does: PCI devices first (that
# brings virtio_pci), then the virtio devices it finds (virtio_net, virtio_rng).
for bus in pci virtio; do
	for a in /sys/bus/$bus/devices/*/modalias; do $bb modprobe -q "$($bb cat $a)"; done
done
# busybox modprobe ignores softdeps: libcrc32c's "pre: crc32c" is loaded first by hand.
check modprobe-crc32c $bb modprobe crc32c_generic
for m in nft-chain-2-nat nft-expr-masq bridge veth vxlan 8021q tun wireguard drbd i6300esb \
         ext4 fs-overlay fs-squashfs loop vfat button evdev @FIREWALL_MODULES@; do
	check modprobe-$m $bb modprobe $m
done
check watchdog-device $bb test -c /dev/watchdog
check rng-virtio $bb grep virtio /sys/class/misc/hw_random/rng_current
check eth0-virtio_net $bb sh -c "$bb readlink /sys/class/net/eth0/device/driver | $bb grep virtio_net"
# drbd-utils 9 dispatches to drbdsetup-84 for the in-kernel DRBD 8.4.
check drbdsetup-new-resource /usr/sbin/drbdsetup new-resource ms0
check drbdsetup-del-resource /usr/sbin/drbdsetup del-resource ms0
check drbdadm-version $bb sh -c "v=\$(/usr/sbin/drbdadm --version 2>&1); echo \$v; echo \$v | $bb grep -q DRBD_KERNEL_VERSION_CODE=0x0804"
check mke2fs /usr/sbin/mke2fs -q -F -t ext4 /tmp/vol.img 16M
check e2fsck /usr/sbin/e2fsck -n -f /tmp/vol.img
check mount-ext4-loop $bb mount -t ext4 -o loop /tmp/vol.img /mnt
echo "CHECK loaded $($bb cut -d' ' -f1 /proc/modules | $bb sort | $bb tr '\n' ' ') ok"
echo "CHECK done"
$bb poweroff -f
`

// TestImageModulesAndTools boots build/initramfs.img with a small archive
// in front of it (the kernel unpacks concatenated archives in order; an LZ4
// legacy stream has no end marker, so the image must come last): busybox and
// the check script, started with rdinit=/bin/busybox instead of /init.
func TestImageModulesAndTools(t *testing.T) {
	qemu.Require(t)
	im := qemu.RequireImage(t)
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("needs busybox-static at %s: %v", busybox, err)
	}
	initrd := filepath.Join(t.TempDir(), "initramfs-check.img")
	// The modules init/firewall loads by name must all be in the image.
	script := strings.ReplaceAll(imageCheckScript, "@FIREWALL_MODULES@", strings.Join(firewall.Modules, " "))
	err := qemu.PrependInitramfs(initrd, im.Initramfs, []qemu.File{
		{Path: "bin/busybox", Src: busybox}, {Path: "etc/buildroot-check.sh", Data: []byte(script)}})
	if err != nil {
		t.Fatal(err)
	}
	vm := qemu.Start(t, qemu.Options{
		Name:     "imagecheck",
		Kernel:   im.Kernel,
		Initrd:   initrd,
		Append:   "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- sh /etc/buildroot-check.sh",
		Memory:   1024,
		RNG:      true,
		Watchdog: true,
		NoReboot: true,
		NICs:     []qemu.NIC{{User: true, ROM: "none"}},
	})
	if _, err := vm.Expect(3*time.Minute, `CHECK done`); err != nil {
		t.Fatal(err)
	}
	lines := regexp.MustCompile(`(?m)^CHECK .*$`).FindAllString(vm.Console(), -1)
	var failed []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		t.Log(l)
		if strings.Contains(l, " failed") {
			failed = append(failed, l)
		}
	}
	if len(lines) < 20 {
		t.Errorf("only %d CHECK lines: the script did not run to the end", len(lines))
	}
	if len(failed) > 0 {
		t.Errorf("%d image checks failed:\n%s", len(failed), strings.Join(failed, "\n"))
	}
	if code, err := vm.Wait(time.Minute); err != nil || code != 0 {
		t.Errorf("power off: qemu exit %d, %v", code, err)
	}
}
