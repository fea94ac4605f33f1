package qemutests

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// Console wording of init/cmd/magestack's init face and init/pid1 these
// scenarios rely on. The console reader discards what a match consumed, so
// each test expects lines in the order PID 1 prints them.
const (
	coldplugPattern    = `coldplug done loaded="([^"]*)"`
	cgroupPattern      = `cgroup2 controllers for children enabled="([^"]*)"`
	modprobeFacePat    = `kernel module request served by the modprobe face fstype=squashfs`
	powerButtonPattern = `power button pressed`
	kernelPowerDown    = `reboot: Power down`
	kernelRestart      = `reboot: Restarting system`
)

// initBootSteps are PID 1's own boot steps, in order.
var initBootSteps = []string{"mounts", "klog", "kmod", "hostname", "network", "config"}

// initStart boots the image with PID 1's own steps only
// (magestack.test.core_only: up to the stack config load), so these
// scenarios test PID 1's machinery whatever state the roles are in; the
// whole product's boot is boot_test.go's.
func initStart(t *testing.T, appendArgs string) *qemu.VM {
	t.Helper()
	qemu.Require(t)
	im := qemu.RequireImage(t)
	opts := im.Options("magestack.test.core_only " + appendArgs)
	opts.NoReboot = true // a guest reboot ends QEMU, so reboot paths are observable
	return qemu.Start(t, opts)
}

func initExpect(t *testing.T, vm *qemu.VM, d time.Duration, pattern string) []string {
	t.Helper()
	m, err := vm.Expect(d, pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func initWantExit0(t *testing.T, vm *qemu.VM) {
	t.Helper()
	code, err := vm.Wait(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("QEMU exit code %d, want 0", code)
	}
}

// TestInitColdplugModprobeAndPowerButton: the NIC and RNG drivers load by
// modalias coldplug, cgroup2 controllers are delegated, a module the kernel
// asks for later (fs-squashfs) loads through the modprobe face, every boot
// step ends ok in the timeline, the ready line appears once, and the ACPI
// power button (QMP system_powerdown) powers the machine off cleanly.
func TestInitColdplugModprobeAndPowerButton(t *testing.T) {
	vm := initStart(t, "magestack.test.fs_request=squashfs")

	m := initExpect(t, vm, 4*time.Minute, cgroupPattern)
	for _, want := range []string{"cpu", "memory", "pids", "io"} {
		if !initHas(strings.Fields(m[1]), want) {
			t.Errorf("cgroup2 subtree_control = %q, want %s enabled", m[1], want)
		}
	}
	m = initExpect(t, vm, time.Minute, coldplugPattern)
	loaded := strings.Fields(m[1])
	// virtio_net and virtio_rng sit behind virtio_pci, evdev behind the
	// input device button creates: all found by later coldplug rounds.
	for _, want := range []string{"virtio_pci", "virtio_net", "virtio_rng", "button", "evdev"} {
		if !initHas(loaded, want) {
			t.Errorf("coldplug loaded %v, want %s among them", loaded, want)
		}
	}
	initExpect(t, vm, 2*time.Minute, modprobeFacePat)
	initExpect(t, vm, 4*time.Minute, qemu.ReadyPattern)

	steps := qemu.ParseTimeline(vm.Console())
	t.Logf("boot timeline:\n%s", qemu.FormatTimeline(steps))
	last := -1
	for _, name := range initBootSteps {
		s, ok := qemu.FindStep(steps, name)
		if !ok {
			t.Errorf("no timeline line for step %s", name)
			continue
		}
		if !initLastOK(steps, name) {
			t.Errorf("step %s did not end ok", name)
		}
		if s.StartMS < int64(last) || s.EndMS < s.StartMS {
			t.Errorf("step %s times out of order: start %d end %d after %d", name, s.StartMS, s.EndMS, last)
		}
		last = int(s.StartMS)
	}
	if err := vm.ExpectNot(2*time.Second, `magestack: stack ready`); err != nil {
		t.Error(err)
	}

	if err := vm.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	initExpect(t, vm, time.Minute, powerButtonPattern)
	initExpect(t, vm, time.Minute, `magestack: shutdown poweroff \(power button\)`)
	initExpect(t, vm, time.Minute, `magestack: poweroff now`)
	initExpect(t, vm, time.Minute, kernelPowerDown)
	initWantExit0(t, vm)
}

// TestInitFailingStepDoesNotKillPID1: a step that fails twice is retried in
// the background while later steps run, a step that panics is recovered and
// retried, the boot still reaches ready, and PID 1 is alive to power off.
func TestInitFailingStepDoesNotKillPID1(t *testing.T) {
	vm := initStart(t, "magestack.test.failstep=hostname:2 magestack.test.panicstep=config")

	initExpect(t, vm, 4*time.Minute, `magestack: timeline hostname start_ms=\d+ end_ms=\d+ error`)
	// Later steps go on while hostname is retried.
	initExpect(t, vm, 2*time.Minute, `magestack: timeline network start_ms=\d+ end_ms=\d+ (ok|error)`)
	initExpect(t, vm, 2*time.Minute, qemu.ReadyPattern)
	// Error records reach the console through the kernel's echo of
	// /dev/kmsg, which may lag the direct lines: look for them in the whole
	// console text rather than in order.
	console := vm.Console()
	for _, want := range []string{"attempt 1 of hostname fails on purpose", "recovered panic in=config"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}

	steps := qemu.ParseTimeline(vm.Console())
	t.Logf("boot timeline:\n%s", qemu.FormatTimeline(steps))
	if n := initAttempts(steps, "hostname"); n != 3 {
		t.Errorf("hostname ran %d times, want 3 (two forced failures, then ok)", n)
	}
	if !initLastOK(steps, "hostname") || !initLastOK(steps, "config") {
		t.Error("retried steps did not end ok")
	}
	if strings.Contains(vm.Console(), "Attempted to kill init") {
		t.Fatal("PID 1 died")
	}
	if err := vm.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	initExpect(t, vm, time.Minute, kernelPowerDown)
	initWantExit0(t, vm)
}

// TestInitSignals: busybox init conventions, through PID 1's real signal
// handler (it signals itself on a test hook): SIGTERM reboots, SIGUSR2
// powers off. With -no-reboot QEMU exits 0 either way.
func TestInitSignals(t *testing.T) {
	tests := []struct {
		signal, action, kernelLine string
	}{
		{"TERM", "reboot", kernelRestart},
		{"USR2", "poweroff", kernelPowerDown},
	}
	for _, tt := range tests {
		t.Run(tt.signal, func(t *testing.T) {
			vm := initStart(t, "magestack.test.signal="+tt.signal+"@1s")
			initExpect(t, vm, 4*time.Minute, `magestack: shutdown `+tt.action+` \(signal `)
			initExpect(t, vm, time.Minute, `magestack: `+tt.action+` now`)
			initExpect(t, vm, time.Minute, regexp.QuoteMeta(tt.kernelLine))
			initWantExit0(t, vm)
		})
	}
}

// TestInitCtrlAltDel: PID 1 turns Ctrl-Alt-Del into SIGINT (CAD_OFF) and
// reboots cleanly on it, instead of the kernel's immediate hard reboot.
func TestInitCtrlAltDel(t *testing.T) {
	vm := initStart(t, "")
	initExpect(t, vm, 4*time.Minute, qemu.ReadyPattern)
	ctx, cancel := context.WithTimeout(context.Background(), qemu.Scale(30*time.Second))
	defer cancel()
	keys := map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
	}}
	if _, err := vm.QMP().Execute(ctx, "send-key", keys); err != nil {
		t.Fatal(err)
	}
	initExpect(t, vm, time.Minute, `magestack: shutdown reboot \(signal SIGINT\)`)
	initExpect(t, vm, time.Minute, `magestack: reboot now`)
	initExpect(t, vm, time.Minute, regexp.QuoteMeta(kernelRestart))
	initWantExit0(t, vm)
}

// TestInitHostnameAndMissingConfig: magestack.host= names the host; a
// config source that cannot be read does not stop the boot: the host comes
// up on the built-in default stack and says why.
func TestInitHostnameAndMissingConfig(t *testing.T) {
	vm := initStart(t, "magestack.host=qa1 magestack.config=/nonexistent/stack.yaml magestack.test.poweroff_after=2s")
	initExpect(t, vm, 4*time.Minute, `hostname set name=qa1 from="magestack.host="`)
	initExpect(t, vm, 2*time.Minute, `stack config loaded stack=\S+ origin=builtin`)
	initExpect(t, vm, time.Minute, qemu.ReadyPattern)
	if !strings.Contains(vm.Console(), "/nonexistent/stack.yaml") {
		t.Error("the console does not say why the configured source was passed over")
	}
	initExpect(t, vm, time.Minute, regexp.QuoteMeta(kernelPowerDown))
	initWantExit0(t, vm)
}

func initLastOK(steps []qemu.TimelineStep, name string) bool {
	ok := false
	for _, s := range steps {
		if s.Step == name {
			ok = s.OK
		}
	}
	return ok
}

func initAttempts(steps []qemu.TimelineStep, name string) int {
	n := 0
	for _, s := range steps {
		if s.Step == name {
			n++
		}
	}
	return n
}

func initHas(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
