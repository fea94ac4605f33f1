package qemutests

import (
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestOperatorConsole boots the default stack with the maintenance shell
// and uses the operator CLI as staff would on the serial console: status
// shows all seven roles ready, the boot timeline, a role's logs, the live
// firewall matching the config.
func TestOperatorConsole(t *testing.T) {
	qemu.Require(t)
	im := qemu.RequireImage(t)
	vm := qemu.Start(t, im.Options("magestack.console=shell"))
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	// Each command ends with a marker line carrying its exit code; the
	// marker's digits appear only in the output, never in the echoed input.
	run := func(cmd string, wantRC string, patterns ...string) {
		t.Helper()
		if err := vm.SendConsole(cmd + "; echo @@rc=$?@@\n"); err != nil {
			t.Fatal(err)
		}
		for _, p := range patterns {
			if _, err := vm.Expect(2*time.Minute, p); err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
		}
		m, err := vm.Expect(2*time.Minute, `@@rc=(\d+)@@`)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if m[1] != wantRC {
			t.Fatalf("%s: exit code %s, want %s", cmd, m[1], wantRC)
		}
	}
	run("magestack status", "0", `UNIT\s+STATE`, `(?m)^fw1\s+ready`, `(?m)^mail1\s+ready`, `(?m)^db1\s+ready`,
		`(?m)^web1\s+ready`, `(?m)^lb1\s+ready`, `(?m)^acc1\s+ready`, `(?m)^monitor1\s+ready`)
	run("magestack boot", "0", `roles`, `reconcile`)
	run("magestack logs web1 -n 3", "0")
	run("magestack firewall check", "0")
	run("magestack restart nosuchrole", "1", `nosuchrole`)
}
