package qemutests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestSuperviseOnCgroup2 runs init/supervise's own tests inside a guest on
// Debian's kernel, where a real cgroup v2 hierarchy exists: the test binary
// is the guest's init (see init/supervise/guest_test.go). The cgroup tests,
// which skip on the cgroup-v1-hybrid development host, must run and pass
// there: clone-time placement (UseCgroupFD), cgroup.kill of a process that
// left the process group, CPU and memory from cpu.stat / memory.current, and
// an OOM kill read from memory.events reported as the exit reason.
func TestSuperviseOnCgroup2(t *testing.T) {
	qemu.Require(t)
	dir := t.TempDir()
	bin := guestTestBinary(t, dir, "./init/supervise")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("the guest needs a static busybox (Debian busybox-static): %v", err)
	}
	img := filepath.Join(dir, "initramfs.img")
	err := qemu.WriteInitramfs(img, []qemu.File{
		{Path: "init", Src: bin},
		{Path: "bin/busybox", Src: "/bin/busybox"},
		{Path: "bin/sh", Symlink: "busybox"},
	})
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := qemu.KernelPath()
	if err != nil {
		t.Fatal(err)
	}
	vm := qemu.Start(t, qemu.Options{Name: "supervise", Kernel: kernel, Initrd: img, Memory: 512, SMP: 2, NoReboot: true,
		Append: "quiet panic=-1 MAGESTACK_SUPERVISE_GUEST=1"})

	console := guestTests(t, vm, "supervise",
		[]string{"TestCgroupPlacementAndKill", "TestCgroupOOMReported", "TestCgroupOOMOfChildReported", "TestKillRestartsWithBackoff", "TestStopGraceThenKill"},
		func(l string) bool {
			return strings.Contains(l, "--- ") || strings.Contains(l, "cgroup usage:") || strings.Contains(l, "oom-killed")
		})
	// The cgroup tests skip on a host without cgroup2: here they must run.
	if m := regexp.MustCompile(`--- SKIP: TestCgroup\S*`).FindString(console); m != "" {
		t.Errorf("guest: %s", m)
	}
	if _, err := vm.Wait(qemu.Scale(time.Minute)); err != nil {
		t.Errorf("guest did not power off: %v", err)
	}
}
