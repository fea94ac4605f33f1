package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// failedTB is a test that has failed, capturing what the harness logs.
type failedTB struct {
	testing.TB
	name string
	logs []string
}

func (f *failedTB) Failed() bool { return true }
func (f *failedTB) Name() string { return f.name }
func (f *failedTB) Helper()      {}
func (f *failedTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

// exitedVM is a VM whose "QEMU" already ran and printed lines.
func exitedVM(t *testing.T, name string, lines int) *VM {
	dir := t.TempDir()
	vm := &VM{Name: name, dir: dir, console: NewConsole(), done: make(chan struct{}),
		sockDir: t.TempDir(), cmd: exec.Command("true")}
	var raw strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&raw, "line %d\r\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, ConsoleFile), []byte(raw.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	vm.console.Write([]byte(raw.String()))
	vm.console.Close()
	if err := vm.cmd.Run(); err != nil {
		t.Fatal(err)
	}
	vm.exitCode = vm.cmd.ProcessState.ExitCode()
	close(vm.done)
	return vm
}

func TestFailedTestKeepsConsoleLog(t *testing.T) {
	arts := t.TempDir()
	t.Setenv(EnvArtifacts, arts)
	for _, tt := range []struct{ vmName, file string }{
		{"vm", ConsoleFile},
		{"dh1", "dh1-" + ConsoleFile},
	} {
		vm := exitedVM(t, tt.vmName, 100)
		tb := &failedTB{TB: t, name: "TestBoot/dhcp"}
		vm.finish(tb)

		want := filepath.Join(arts, "TestBoot_dhcp", tt.file)
		b, err := os.ReadFile(want)
		if err != nil {
			t.Fatalf("console log not kept at %s: %v", want, err)
		}
		if !strings.Contains(string(b), "line 100\r\n") {
			t.Fatalf("kept log incomplete")
		}
		log := strings.Join(tb.logs, "\n")
		if !strings.Contains(log, want) {
			t.Fatalf("log does not name the artefact %s:\n%s", want, log)
		}
		if !strings.Contains(log, "line 41\nline 42") || strings.Contains(log, "line 40\n") || !strings.Contains(log, "line 100") {
			t.Fatalf("log must show exactly the last 60 lines:\n%s", log)
		}
	}
}

func TestPassedTestKeepsNothing(t *testing.T) {
	arts := t.TempDir()
	t.Setenv(EnvArtifacts, arts)
	vm := exitedVM(t, "vm", 3)
	vm.finish(t) // t has not failed
	if entries, _ := os.ReadDir(arts); len(entries) != 0 {
		t.Fatalf("artefacts written for a passing test: %v", entries)
	}
}
