package pid1

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSignalAction(t *testing.T) {
	tests := []struct {
		sig  os.Signal
		want Action
		ok   bool
	}{
		{unix.SIGTERM, Reboot, true},
		{unix.SIGINT, Reboot, true},
		{unix.SIGUSR1, Halt, true},
		{unix.SIGUSR2, Poweroff, true},
		{unix.SIGPWR, Poweroff, true},
		{unix.SIGHUP, 0, false},
	}
	for _, tt := range tests {
		got, ok := SignalAction(tt.sig)
		if got != tt.want || ok != tt.ok {
			t.Errorf("SignalAction(%v) = %v, %v; want %v, %v", tt.sig, got, ok, tt.want, tt.ok)
		}
	}
}

func TestShutdownOrderAndBounds(t *testing.T) {
	var (
		mu    sync.Mutex
		order []string
		sigs  []syscall.Signal
		cmd   int
	)
	record := func(name string, err error) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return err
		}
	}
	s := &Shutdown{Log: quietLog(), KillGrace: 100 * time.Millisecond}
	alive := 3 // processes linger for a couple of polls after SIGTERM
	s.killAll = func(sig syscall.Signal) error {
		mu.Lock()
		defer mu.Unlock()
		sigs = append(sigs, sig)
		return nil
	}
	s.others = func() []int {
		mu.Lock()
		defer mu.Unlock()
		alive--
		if alive <= 0 {
			return nil
		}
		return []int{42}
	}
	s.final = func(c int) error { cmd = c; return nil }
	unmounted := false
	s.Unmount = func() error { unmounted = true; return nil }

	s.OnShutdown("fw", time.Second, record("fw", nil))
	s.OnShutdown("db", time.Second, record("db", errors.New("db refused")))
	s.OnShutdown("hang", 50*time.Millisecond, func(ctx context.Context) error {
		select {} // ignores its context: bounded by the grace
	})
	s.OnShutdown("panics", time.Second, func(context.Context) error { panic("stopper bug") })
	s.OnShutdown("web", time.Second, record("web", nil))

	start := time.Now()
	if err := s.Do(Poweroff, "test"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	if want := []string{"web", "db", "fw"}; !reflect.DeepEqual(order, want) {
		t.Errorf("stop order = %v, want %v", order, want)
	}
	if want := []syscall.Signal{unix.SIGTERM}; !reflect.DeepEqual(sigs, want) {
		t.Errorf("signals = %v, want %v (processes were gone before SIGKILL)", sigs, want)
	}
	if !unmounted || cmd != unix.LINUX_REBOOT_CMD_POWER_OFF {
		t.Errorf("unmounted=%v reboot cmd=%#x", unmounted, cmd)
	}
	if !s.Started() {
		t.Error("Started() false after a shutdown")
	}
	if err := s.Do(Reboot, "again"); err == nil {
		t.Error("second shutdown should be refused")
	}
}

func TestShutdownKillsStragglers(t *testing.T) {
	var sigs []syscall.Signal
	s := &Shutdown{Log: quietLog(), KillGrace: 60 * time.Millisecond}
	s.killAll = func(sig syscall.Signal) error {
		sigs = append(sigs, sig)
		return nil
	}
	s.others = func() []int {
		if len(sigs) == 2 {
			return nil // SIGKILL worked
		}
		return []int{42} // ignores SIGTERM
	}
	s.final = func(int) error { return errors.New("not pid 1") }
	if err := s.Do(Halt, "test"); err == nil {
		t.Error("a failing reboot syscall must be reported")
	}
	if want := []syscall.Signal{unix.SIGTERM, unix.SIGKILL}; !reflect.DeepEqual(sigs, want) {
		t.Errorf("signals = %v, want %v", sigs, want)
	}
}

func inputEvent(typ, code uint16, value int32) []byte {
	b := make([]byte, inputEventSize)
	binary.NativeEndian.PutUint16(b[16:], typ)
	binary.NativeEndian.PutUint16(b[18:], code)
	binary.NativeEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestReadPowerKey(t *testing.T) {
	tests := []struct {
		name   string
		events [][]byte
		want   bool
	}{
		{"power press", [][]byte{inputEvent(evKey, 30, 1), inputEvent(0, 0, 0), inputEvent(evKey, keyPower, 1)}, true},
		{"power release only", [][]byte{inputEvent(evKey, keyPower, 0)}, false},
		{"other keys", [][]byte{inputEvent(evKey, 30, 1), inputEvent(evKey, 30, 0)}, false},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		for _, e := range tt.events {
			buf.Write(e)
		}
		if got := readPowerKey(&buf); got != tt.want {
			t.Errorf("%s: readPowerKey = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestWatchPowerButton(t *testing.T) {
	dir := t.TempDir()
	pressed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := os.WriteFile(dir+"/event0", append(inputEvent(evKey, 30, 1), inputEvent(evKey, keyPower, 1)...), 0o644); err != nil {
		t.Fatal(err)
	}
	WatchPowerButton(ctx, quietLog(), dir, func() { pressed <- struct{}{} })
	select {
	case <-pressed:
	case <-time.After(5 * time.Second):
		t.Fatal("power key not seen")
	}
}

func TestUserProcessesSkipsKernelThreads(t *testing.T) {
	pids := userProcesses()
	self := os.Getpid()
	found := false
	for _, p := range pids {
		if p == 2 {
			t.Error("kthreadd listed")
		}
		if p == self {
			found = true
		}
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat"); err == nil && strings.Contains(string(b), "(kworker/") {
			t.Errorf("kernel thread %d listed: %s", p, b)
		}
	}
	if !found && self > 2 {
		t.Errorf("own process %d not listed among %d", self, len(pids))
	}
}

// TestHandleSignals sends real signals to this process and checks each
// reaches the callback with busybox init's action.
func TestHandleSignals(t *testing.T) {
	got := make(chan string, 4)
	HandleSignals(quietLog(), func(a Action, reason string) { got <- a.String() + " " + reason })
	defer signal.Reset(HandledSignals...)
	for _, tt := range []struct {
		sig  unix.Signal
		want string
	}{
		{unix.SIGUSR2, "poweroff signal SIGUSR2"},
		{unix.SIGUSR1, "halt signal SIGUSR1"},
		{unix.SIGPWR, "poweroff signal SIGPWR"},
	} {
		if err := unix.Kill(os.Getpid(), tt.sig); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if g != tt.want {
				t.Errorf("%v: got %q, want %q", tt.sig, g, tt.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%v never reached the handler", tt.sig)
		}
	}
}
