package qemu

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// virtioNetModules load virtio_net from the Debian kernel's modules, in
// dependency order (the kernel package ships no modules.dep).
var virtioNetModules = []string{
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko",
	"drivers/virtio/virtio_pci.ko",
	"net/core/failover.ko",
	"drivers/net/net_failover.ko",
	"drivers/net/virtio_net.ko",
}

// nopInitramfs builds nopinit and packs it, with the given modules, into an
// initramfs in dir.
func nopInitramfs(t *testing.T, dir string, modules []string) string {
	t.Helper()
	bin := filepath.Join(dir, "nopinit")
	if err := BuildStatic(NopInitPackage, bin); err != nil {
		t.Fatal(err)
	}
	files := []File{{Path: "init", Src: bin}}
	if len(modules) > 0 {
		modDir, err := KernelModulesDir()
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range modules {
			files = append(files, File{
				Path: fmt.Sprintf("lib/modules/%02d-%s", i, filepath.Base(m)),
				Src:  filepath.Join(modDir, "kernel", m), Mode: 0o644,
			})
		}
	}
	img := filepath.Join(dir, "initramfs.img")
	if err := WriteInitramfs(img, files); err != nil {
		t.Fatal(err)
	}
	return img
}

func nopKernel(t *testing.T) string {
	t.Helper()
	k, err := KernelPath()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestHarnessBootsNopInit proves the harness on the real kernel without the
// product: console expect, QMP pause/continue, console input, and a clean
// power off with exit code 0.
func TestHarnessBootsNopInit(t *testing.T) {
	Require(t)
	initrd := nopInitramfs(t, t.TempDir(), nil)
	vm := Start(t, Options{Kernel: nopKernel(t), Initrd: initrd, Append: "quiet panic=-1 nopinit.serial=ttyS1", Memory: 256, Serials: 1})

	m, err := vm.Expect(60*time.Second, `nopinit: pid1 uptime_ms=(\d+)`)
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := strconv.Atoi(m[1])
	t.Logf("nopinit reached PID 1 at %d ms guest uptime", ms)
	if ms <= 0 {
		t.Fatalf("uptime_ms=%s: not a positive number", m[1])
	}
	if _, err := vm.Expect(time.Minute, `nopinit: firmware=bios`); err != nil {
		t.Fatal(err)
	}

	// The second serial port is a stream of its own, both ways.
	ctx, cancel := context.WithTimeout(t.Context(), Scale(time.Minute))
	defer cancel()
	if _, err := vm.Serial(1).Expect(ctx, `nopinit: hello on /dev/ttyS1`); err != nil {
		t.Fatal(err)
	}
	if err := vm.SerialWrite(1, "results please\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Serial(1).Expect(ctx, `nopinit: echo results please`); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(time.Minute, `nopinit: serial /dev/ttyS1 got "results please"`); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Console(), "hello on /dev/ttyS1") {
		t.Fatal("ttyS1 output leaked onto the console stream")
	}

	st, err := vm.QueryStatus()
	if err != nil || !st.Running {
		t.Fatalf("status before pause: %+v, %v", st, err)
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	if st, err := vm.QueryStatus(); err != nil || st.Running || st.Status != "paused" {
		t.Fatalf("status after stop: %+v, %v", st, err)
	}
	// A paused guest answers nothing.
	if err := vm.SendConsole("ping\n"); err != nil {
		t.Fatal(err)
	}
	if err := vm.ExpectNot(2*time.Second, `nopinit: pong`); err != nil {
		t.Fatalf("paused guest answered: %v", err)
	}
	if err := vm.Cont(); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(30*time.Second, `nopinit: pong uptime_ms=\d+`); err != nil {
		t.Fatalf("no answer after cont: %v", err)
	}

	if err := vm.SendConsole("poweroff\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(30*time.Second, `nopinit: powering off \(console\)`); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(30*time.Second, `reboot: Power down`); err != nil {
		t.Fatal(err)
	}
	code, err := vm.Wait(60 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("QEMU exit code %d after guest power off, want 0", code)
	}
	if _, err := vm.QMP().WaitEvent(t.Context(), "SHUTDOWN"); err != nil {
		t.Fatalf("no SHUTDOWN event: %v", err)
	}
}

// TestHarnessDetectsKernelPanic: an init that exits panics the kernel; the
// expect must fail at once with the panic, not wait out its timeout.
func TestHarnessDetectsKernelPanic(t *testing.T) {
	Require(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "initramfs.img")
	// A shell-script init cannot run (no interpreter): the kernel panics
	// with "No working init found".
	if err := WriteInitramfs(img, []File{{Path: "init", Data: []byte("#!/bin/nothing\n")}}); err != nil {
		t.Fatal(err)
	}
	vm := Start(t, Options{Kernel: nopKernel(t), Initrd: img, Append: "quiet panic=-1", Memory: 256, NoReboot: true})
	start := time.Now()
	_, err := vm.Expect(5*time.Minute, `this line never comes`)
	if err == nil {
		t.Fatal("expect succeeded on a panicking guest")
	}
	t.Logf("failed after %v: %.200s", time.Since(start), err)
	if time.Since(start) > Scale(2*time.Minute) {
		t.Fatalf("panic not detected early: %v", time.Since(start))
	}
}

// TestHarnessTapOnBridge boots a VM on a tap in a test network: the tap gets
// carrier once QEMU opens it, the guest's virtio_net sees its link, and QMP
// set_link pulls and plugs the cable as the guest sees it.
func TestHarnessTapOnBridge(t *testing.T) {
	Require(t)
	net := NewNet(t, "selftest")
	tap := net.AddTap("tap0")
	if l, err := net.Link(tap); err != nil || l.Carrier || l.Master != BridgeName {
		t.Fatalf("tap before QEMU: %+v, %v; want no carrier, on %s", l, err, BridgeName)
	}
	initrd := nopInitramfs(t, t.TempDir(), virtioNetModules)
	vm := Start(t, Options{
		Kernel: nopKernel(t), Initrd: initrd, Append: "quiet panic=-1 nopinit.modules=1 nopinit.carrier=eth0", Memory: 256,
		NICs: []NIC{{Tap: tap, MAC: "52:54:00:aa:00:01", ROM: "none"}}, NetNS: net.NetNS(),
	})
	if l, err := net.WaitCarrier(tap, true, 30*time.Second); err != nil {
		t.Fatalf("tap has no carrier with QEMU attached: %v", err)
	} else {
		t.Logf("host side: %+v", l)
	}
	if _, err := vm.Expect(90*time.Second, `nopinit: module \d+-virtio_net.ko loaded`); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(60*time.Second, `nopinit: link eth0 carrier=1`); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetLink("net0", false); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(30*time.Second, `nopinit: link eth0 carrier=0`); err != nil {
		t.Fatalf("guest did not see the cable pulled: %v", err)
	}
	if err := vm.SetLink("net0", true); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(30*time.Second, `nopinit: link eth0 carrier=1`); err != nil {
		t.Fatalf("guest did not see the cable plugged back: %v", err)
	}
	if err := vm.Quit(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.WaitCarrier(tap, false, 10*time.Second); err != nil {
		t.Fatalf("tap keeps carrier after QEMU quit: %v", err)
	}
}

// TestHarnessUEFI boots nopinit through OVMF (direct kernel boot under UEFI).
func TestHarnessUEFI(t *testing.T) {
	Require(t)
	initrd := nopInitramfs(t, t.TempDir(), nil)
	vm := Start(t, Options{Firmware: UEFI, Kernel: nopKernel(t), Initrd: initrd, Append: "quiet panic=-1", Memory: 512})
	if _, err := vm.Expect(3*time.Minute, NopInitPattern); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(time.Minute, `nopinit: firmware=uefi`); err != nil {
		t.Fatalf("kernel did not boot through UEFI: %v", err)
	}
	if err := vm.SendConsole("poweroff\n"); err != nil {
		t.Fatal(err)
	}
	if code, err := vm.Wait(time.Minute); err != nil || code != 0 {
		t.Fatalf("power off under UEFI: code %d, %v", code, err)
	}
}

// TestHarnessWatchdog: with Options.Watchdog the guest has an i6300esb; a
// guest that arms it and stops feeding it is reset (QMP WATCHDOG event, and
// the guest boots again).
func TestHarnessWatchdog(t *testing.T) {
	Require(t)
	initrd := nopInitramfs(t, t.TempDir(), []string{"drivers/watchdog/watchdog.ko", "drivers/watchdog/i6300esb.ko"})
	vm := Start(t, Options{Kernel: nopKernel(t), Initrd: initrd, Memory: 256, Watchdog: true,
		Append: "quiet panic=-1 nopinit.modules=1 nopinit.watchdog=2"})
	if _, err := vm.Expect(90*time.Second, `nopinit: watchdog armed timeout=2s`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), Scale(2*time.Minute))
	defer cancel()
	ev, err := vm.QMP().WaitEvent(ctx, "WATCHDOG")
	if err != nil {
		t.Fatalf("no watchdog reset: %v", err)
	}
	t.Logf("QMP event %s %s", ev.Name, ev.Data)
	if _, err := vm.Expect(2*time.Minute, NopInitPattern); err != nil {
		t.Fatalf("guest did not boot again after the watchdog reset: %v", err)
	}
}
