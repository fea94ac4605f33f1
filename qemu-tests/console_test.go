package qemutests

import (
	"fmt"
	"regexp"
	"strings"
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
	// Each command's output (and a last line with its exit code) comes
	// back with every line prefixed by a tag the shell computes, @<n>@:
	// the terminal echoes the typed command with "$((n-1+1))" in it, never
	// the digits, so a pattern matched against tagged lines can only match
	// what the command printed, not its echo.
	tag := 100
	run := func(cmd string, wantRC string, patterns ...string) {
		t.Helper()
		tag++
		prefix := fmt.Sprintf("@%d@ ", tag)
		line := fmt.Sprintf(`{ %s; echo "@@rc=$?@@"; } 2>&1 | sed "s/^/@$((%d+1))@ /"`, cmd, tag-1)
		if err := vm.SendConsole(line + "\n"); err != nil {
			t.Fatal(err)
		}
		m, err := vm.Expect(2*time.Minute, `(?m)^`+regexp.QuoteMeta(prefix)+`@@rc=(\d+)@@`)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		out := taggedOutput(vm.Console(), prefix)
		t.Logf("%s (exit %s):\n%s", cmd, m[1], out)
		if m[1] != wantRC {
			t.Fatalf("%s: exit code %s, want %s; output:\n%s", cmd, m[1], wantRC, out)
		}
		for _, p := range patterns {
			if !regexp.MustCompile(`(?m)` + p).MatchString(out) {
				t.Errorf("%s: output does not match %q:\n%s", cmd, p, out)
			}
		}
	}
	run("magestack status", "0", `^UNIT\s+STATE`, `^fw1\s+ready`, `^mail1\s+ready`, `^db1\s+ready`,
		`^web1\s+ready`, `^lb1\s+ready`, `^acc1\s+ready`, `^monitor1\s+ready`)
	run("magestack boot", "0", `\broles\b`, `\breconcile\b`)
	run("magestack logs web1 -n 3", "0")
	run("magestack firewall check", "0")
	run("magestack restart nosuchrole", "1", `nosuchrole`)
}

// taggedOutput returns the console lines that start with prefix, without
// it (and without the terminal's carriage returns).
func taggedOutput(console, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(console, "\n") {
		l = strings.TrimRight(l, "\r")
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			b.WriteString(rest)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// The tagged lines are the command's output only: the terminal's echo of
// the typed line carries the tag's arithmetic, not its digits.
func TestTaggedOutputIgnoresTheEcho(t *testing.T) {
	console := "magestack# { magestack restart nosuchrole; echo \"@@rc=$?@@\"; } 2>&1 | sed \"s/^/@$((100+1))@ /\"\r\n" +
		"[  9001 ms] unit started unit=web1\r\n" +
		"@101@ magestack: no role or service nosuchrole\r\n" +
		"@101@ @@rc=1@@\r\n" +
		"@1010@ not this command\r\n"
	got := taggedOutput(console, "@101@ ")
	want := "magestack: no role or service nosuchrole\n@@rc=1@@\n"
	if got != want {
		t.Errorf("taggedOutput = %q, want %q", got, want)
	}
	if echoOnly := taggedOutput(strings.SplitN(console, "\n", 2)[0], "@101@ "); echoOnly != "" {
		t.Errorf("the echo alone gave %q", echoOnly)
	}
}
