package qemutests

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"magestack/init/stackfile"
	"magestack/qemu-tests/qemu"
)

// Console wording this scenario relies on. The ready line is a contract
// (CONTRACTS.md); the others are init/pid1's and init/supervise's log lines
// through klog, e.g. `[ 23750 ms] unit stopped unit=monitor1 msg="..."`:
// ADJUST HERE if that wording changes.
const (
	shutdownPattern = `magestack: shutdown poweroff \(power button\)`
	stopLinePattern = `unit stopped unit=%s\d*\b`
	powerOffPattern = `reboot: Power down`
)

// TestBootToStackReadyAndPowerOff boots the image from `make image` with
// the default stack, waits for the ready line, prints the boot timeline,
// presses the ACPI power button and checks the clean power off.
func TestBootToStackReadyAndPowerOff(t *testing.T) {
	qemu.Require(t)
	im := qemu.RequireImage(t)
	vm := qemu.Start(t, im.Options(""))

	// ASSERTION 1: the contract's ready line, with a plausible uptime.
	m, err := vm.Expect(6*time.Minute, qemu.ReadyPattern)
	if err != nil {
		t.Fatal(err)
	}
	readyMS, _ := strconv.Atoi(m[1])
	if readyMS <= 0 {
		t.Fatalf("stack ready uptime_ms=%s: not a positive number", m[1])
	}
	steps := qemu.ParseTimeline(vm.Console())
	t.Logf("stack ready at %d ms guest uptime; boot timeline:\n%s", readyMS, qemu.FormatTimeline(steps))

	// ASSERTION 2: every timeline step before ready succeeded (a failed step
	// is retried and logs again, so only the last entry of each counts).
	seen := map[string]bool{}
	for i := len(steps) - 1; i >= 0; i-- {
		if s := steps[i]; !seen[s.Step] {
			seen[s.Step] = true
			if !s.OK {
				t.Errorf("timeline step %s ended in error", s.Step)
			}
		}
	}

	// ASSERTION 3: the ready line is printed exactly once.
	if err := vm.ExpectNot(3*time.Second, `magestack: stack ready`); err != nil {
		t.Error(err)
	}

	// ASSERTION 4: the power button stops the roles in reverse start order,
	// then the kernel powers off and QEMU exits 0.
	if err := vm.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(time.Minute, shutdownPattern); err != nil {
		t.Fatalf("the power button did not start a power off: %v", err)
	}
	order := stackfile.RoleNames()
	slices.Reverse(order)
	ctx, cancel := context.WithTimeout(t.Context(), qemu.Scale(3*time.Minute))
	defer cancel()
	for _, role := range order {
		pat := fmt.Sprintf(stopLinePattern, regexp.QuoteMeta(role))
		if _, err := vm.ExpectContext(ctx, pat); err != nil {
			t.Fatalf("after the power button, roles must stop in the order %v: %v", order, err)
		}
	}
	if _, err := vm.Expect(2*time.Minute, powerOffPattern); err != nil {
		t.Fatal(err)
	}
	code, err := vm.Wait(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("QEMU exit code %d after power off, want 0", code)
	}
}
