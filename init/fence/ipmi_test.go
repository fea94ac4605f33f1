package fence

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bmcSim is OpenIPMI's BMC simulator (ipmi_sim, Debian package openipmi)
// serving IPMI over LAN on loopback. Its chassis power is a real process
// (startcmd): on means it runs, power down kills it.
type bmcSim struct {
	addr       string
	machinePID string // file the machine writes its pid to
}

func startBMCSim(t *testing.T) *bmcSim {
	t.Helper()
	bin, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Skip("ipmi_sim missing (Debian package openipmi): IPMI fencing is not tested against a BMC")
	}
	dir := t.TempDir()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr)
	pc.Close()
	// The system interface channel (15) is what powers the startcmd
	// machine on and off; nothing connects to it here.
	vm := freeLoopbackPort(t)
	s := &bmcSim{addr: addr.String(), machinePID: filepath.Join(dir, "machine.pid")}
	machine := filepath.Join(dir, "machine.sh")
	os.WriteFile(machine, []byte("#!/bin/sh\necho $$ > "+s.machinePID+"\nexec sleep 100000\n"), 0o755)
	conf := fmt.Sprintf(`name "fence-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 %s codec VM
  user 2 true "fence" "secret" operator 10 md5
  startcmd "%s"
  startnow true
  poweroff_wait 0
  kill_wait 5
`, addr.Port, strings.Replace(vm, ":", " ", 1), machine)
	os.WriteFile(filepath.Join(dir, "lan.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(dir, "bmc.emu"), []byte("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "state"), 0o755)
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "bmc.emu"), "-s", filepath.Join(dir, "state"), "-n")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The machine inherits ipmi_sim's output: bound the wait for it.
	cmd.WaitDelay = 2 * time.Second
	t.Cleanup(func() {
		if pid, ok := s.machine(); ok {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; i < 100; i++ {
		if _, ok := s.machine(); ok {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("ipmi_sim did not power its machine on: %s", out.String())
	return nil
}

// machine returns the machine's pid while it runs.
func (s *bmcSim) machine() (int, bool) {
	b, err := os.ReadFile(s.machinePID)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return pid, syscall.Kill(pid, 0) == nil
}

// TestIPMIFencesThroughABMC: power down over RMCP+, then the read-back
// chassis status says off, and the machine behind the BMC is gone.
func TestIPMIFencesThroughABMC(t *testing.T) {
	s := startBMCSim(t)
	d, err := New("ipmi", s.addr, "fence", "secret")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if off, err := d.PoweredOff(ctx); err != nil || off {
		t.Fatalf("powered machine: off=%v err=%v", off, err)
	}
	if err := Fence(ctx, d, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, running := s.machine(); running {
		t.Fatal("the BMC confirmed power off but the machine runs on")
	}
	if off, err := d.PoweredOff(ctx); err != nil || !off {
		t.Errorf("after the fence: off=%v err=%v", off, err)
	}
	// Fencing an already-off machine succeeds without a second power down.
	if err := Fence(ctx, d, 10*time.Second); err != nil {
		t.Errorf("fencing an off machine: %v", err)
	}
}

// TestIPMIWrongPasswordIsNotAFence: a BMC that refuses the session is an
// error, and the machine keeps running.
func TestIPMIWrongPasswordIsNotAFence(t *testing.T) {
	s := startBMCSim(t)
	d, err := New("ipmi", s.addr, "fence", "wrong")
	if err != nil {
		t.Fatal(err)
	}
	err = Fence(context.Background(), d, 5*time.Second)
	if err == nil {
		t.Fatal("a fence with a wrong password succeeded")
	}
	t.Logf("refused: %v", err)
	if _, running := s.machine(); !running {
		t.Fatal("a refused session powered the machine off")
	}
}

// TestIPMISilentBMCIsNotOff: no BMC answers (it lost power with its host):
// never a confirmed power off.
func TestIPMISilentBMCIsNotOff(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // it reads nothing: a BMC that says nothing
	d, err := New("ipmi", pc.LocalAddr().String(), "fence", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := Fence(context.Background(), d, 5*time.Second); err == nil {
		t.Fatal("a silent BMC counted as a confirmed fence")
	}
}

func TestNewIPMIAddresses(t *testing.T) {
	for _, tc := range []struct {
		in, host string
		port     int
	}{
		{"192.0.2.7", "192.0.2.7", 623},
		{"192.0.2.7:6230", "192.0.2.7", 6230},
		{"bmc1.example", "bmc1.example", 623},
		{"[2001:db8::7]:623", "2001:db8::7", 623},
	} {
		d, err := NewIPMI(tc.in, "admin", "x")
		if err != nil {
			t.Errorf("NewIPMI(%q): %v", tc.in, err)
			continue
		}
		if d.host != tc.host || d.port != tc.port {
			t.Errorf("NewIPMI(%q) = %s:%d, want %s:%d", tc.in, d.host, d.port, tc.host, tc.port)
		}
	}
	for _, bad := range []string{"", "192.0.2.7:x", "192.0.2.7:0", ":623"} {
		if _, err := NewIPMI(bad, "admin", "x"); err == nil {
			t.Errorf("NewIPMI(%q) accepted", bad)
		}
	}
	if _, err := NewIPMI("192.0.2.7", "", "x"); err == nil {
		t.Error("NewIPMI without a user accepted")
	}
}
