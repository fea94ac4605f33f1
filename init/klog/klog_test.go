package klog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func fixedClock() time.Duration { return 1234567 * time.Microsecond }

func TestHandlerFormat(t *testing.T) {
	tests := []struct {
		name    string
		log     func(*slog.Logger)
		console string
		kmsg    string
	}{
		{"info with attrs", func(l *slog.Logger) { l.Info("module loaded", "name", "virtio_net", "ms", 12) },
			"[   1234 ms] module loaded name=virtio_net ms=12\n",
			"<30>magestack: module loaded name=virtio_net ms=12\n"},
		{"error quotes spaces", func(l *slog.Logger) { l.Error("step failed", "err", errors.New("no such file")) },
			"[   1234 ms] ERROR step failed err=\"no such file\"\n",
			"<27>magestack: ERROR step failed err=\"no such file\"\n"},
		{"warn with group", func(l *slog.Logger) { l.WithGroup("net").Warn("no carrier", "link", "eth0") },
			"[   1234 ms] WARN no carrier net.link=eth0\n",
			"<28>magestack: WARN no carrier net.link=eth0\n"},
		{"with attrs", func(l *slog.Logger) { l.With("step", "mounts").Info("done", "d", time.Second) },
			"[   1234 ms] done step=mounts d=1s\n",
			"<30>magestack: done step=mounts d=1s\n"},
		{"debug filtered", func(l *slog.Logger) { l.Debug("noise") }, "", ""},
		{"empty value", func(l *slog.Logger) { l.Info("x", "v", "") },
			"[   1234 ms] x v=\"\"\n", "<30>magestack: x v=\"\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var con, km bytes.Buffer
			h := New(Options{Console: &con, Kmsg: &km, Clock: fixedClock})
			tt.log(slog.New(h))
			if con.String() != tt.console {
				t.Errorf("console = %q, want %q", con.String(), tt.console)
			}
			if km.String() != tt.kmsg {
				t.Errorf("kmsg = %q, want %q", km.String(), tt.kmsg)
			}
		})
	}
}

type failingWriter struct{ calls int }

func (f *failingWriter) Write(p []byte) (int, error) {
	f.calls++
	return 0, errors.New("EAGAIN: rate limited")
}

func TestWriteErrorsAreCountedNotReturned(t *testing.T) {
	var con bytes.Buffer
	km := &failingWriter{}
	h := New(Options{Console: &con, Kmsg: km, Clock: fixedClock})
	l := slog.New(h)
	l.Info("one")
	l.Info("two")
	if h.Dropped() != 2 || km.calls != 2 {
		t.Fatalf("dropped = %d, kmsg calls = %d; want 2, 2", h.Dropped(), km.calls)
	}
	if !strings.Contains(con.String(), "two") {
		t.Fatalf("console lost lines after kmsg errors: %q", con.String())
	}
}

func TestKmsgRecordIsBounded(t *testing.T) {
	var km bytes.Buffer
	h := New(Options{Kmsg: &km, Clock: fixedClock})
	slog.New(h).Info(strings.Repeat("x", 5000))
	if n := km.Len(); n > maxKmsgRecord+1 {
		t.Fatalf("kmsg record is %d bytes, want at most %d", n, maxKmsgRecord+1)
	}
}

func TestConsoleVerbatim(t *testing.T) {
	var con, km bytes.Buffer
	h := New(Options{Console: &con, Kmsg: &km, Clock: fixedClock})
	h.Console("magestack: stack ready uptime_ms=42")
	if con.String() != "magestack: stack ready uptime_ms=42\n" {
		t.Errorf("console = %q", con.String())
	}
	if km.String() != "<31>magestack: stack ready uptime_ms=42\n" {
		t.Errorf("kmsg = %q", km.String())
	}
}

func TestSinceBootAdvances(t *testing.T) {
	a := SinceBoot()
	time.Sleep(2 * time.Millisecond)
	if b := SinceBoot(); a <= 0 || b <= a {
		t.Fatalf("SinceBoot not advancing: %v then %v", a, b)
	}
}

// TestKernelEchoNotDuplicated: with quiet (console_loglevel 4) the kernel
// prints error records itself, so the handler leaves them off the console;
// info records it does not echo go to the console directly.
func TestKernelEchoNotDuplicated(t *testing.T) {
	var con, km bytes.Buffer
	h := New(Options{Console: &con, Kmsg: &km, Clock: fixedClock, ConsoleLoglevel: 4})
	l := slog.New(h)
	l.Error("bad")
	l.Warn("meh")
	l.Info("fine")
	if want := "[   1234 ms] WARN meh\n[   1234 ms] fine\n"; con.String() != want {
		t.Errorf("console = %q, want %q", con.String(), want)
	}
	if !strings.Contains(km.String(), "<27>magestack: ERROR bad") {
		t.Errorf("kmsg = %q", km.String())
	}
	// If kmsg refuses the record, the console must still get it.
	con.Reset()
	h2 := New(Options{Console: &con, Kmsg: &failingWriter{}, Clock: fixedClock, ConsoleLoglevel: 4})
	slog.New(h2).Error("bad")
	if con.String() != "[   1234 ms] ERROR bad\n" {
		t.Errorf("console after kmsg failure = %q", con.String())
	}
}
