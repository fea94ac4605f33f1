package qemu

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestExpectMatchesInOrder(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("boot\r\nstep a\r\nstep b\r\nstep a again\r\n"))
	ctx := context.Background()

	m, err := c.Expect(ctx, `step (\w+)`)
	if err != nil || m[1] != "a" {
		t.Fatalf("first match = %q, %v; want a", m, err)
	}
	m, err = c.Expect(ctx, `step (\w+)`)
	if err != nil || m[1] != "b" {
		t.Fatalf("second match = %q, %v; want b (no re-match of a)", m, err)
	}
	// "boot" came before the cursor: it must not match any more.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.Expect(short, `boot`); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("matched text before the cursor: %v", err)
	}
	if m, err := c.Expect(ctx, `a again`); err != nil || m[0] != "a again" {
		t.Fatalf("third = %q, %v", m, err)
	}
}

func TestExpectWaitsForCompleteLine(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("uptime_ms=12"))
	done := make(chan []string)
	go func() {
		m, err := c.Expect(context.Background(), `uptime_ms=(\d+)`)
		if err != nil {
			t.Error(err)
		}
		done <- m
	}()
	select {
	case m := <-done:
		t.Fatalf("matched a partial line: %q", m)
	case <-time.After(50 * time.Millisecond):
	}
	c.Write([]byte("34\n"))
	select {
	case m := <-done:
		if m[1] != "1234" {
			t.Fatalf("got %q, want the whole number 1234", m[1])
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no match after the line completed")
	}
}

func TestExpectFailsFast(t *testing.T) {
	tests := []struct {
		name  string
		feed  func(c *Console)
		want  error
		inErr string
	}{
		{"kernel panic", func(c *Console) {
			c.Write([]byte("Run /init as init process\nKernel panic - not syncing: Attempted to kill init!\n"))
		}, ErrKernelPanic, "Attempted to kill init"},
		{"panic marker split across writes", func(c *Console) {
			c.Write([]byte("x\nKernel pa"))
			c.Write([]byte("nic - not syncing: VFS\n"))
		}, ErrKernelPanic, "not syncing: VFS"},
		{"qemu exit", func(c *Console) {
			c.Write([]byte("last words\n"))
			c.Close()
		}, ErrConsoleClosed, "last words"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewConsole()
			go func() {
				time.Sleep(20 * time.Millisecond)
				tt.feed(c)
			}()
			start := time.Now()
			_, err := c.Expect(context.Background(), `stack ready`)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.inErr) {
				t.Fatalf("error does not quote the console tail (%q): %v", tt.inErr, err)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %v: not fast", time.Since(start))
			}
		})
	}
}

func TestExpectMatchesFinalPartialLineAfterExit(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("reboot: Power down"))
	c.Close()
	if _, err := c.Expect(context.Background(), `Power down`); err != nil {
		t.Fatalf("text left without newline at exit: %v", err)
	}
}

func TestExpectBadPattern(t *testing.T) {
	c := NewConsole()
	if _, err := c.Expect(context.Background(), `(`); err == nil || !strings.Contains(err.Error(), "bad pattern") {
		t.Fatalf("err = %v", err)
	}
}

func TestExpectNot(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("stack ready\n"))
	if _, err := c.Expect(context.Background(), `stack ready`); err != nil {
		t.Fatal(err)
	}
	// The consumed line does not count.
	if err := c.ExpectNot(30*time.Millisecond, `stack ready`); err != nil {
		t.Fatalf("consumed line counted: %v", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.Write([]byte("magestack: stack ready again\n"))
	}()
	err := c.ExpectNot(2*time.Second, `stack ready`)
	if err == nil || !strings.Contains(err.Error(), "magestack: stack ready again") {
		t.Fatalf("second line not reported: %v", err)
	}
}

func TestTail(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
		{"a\n", 0, ""},
	}
	for _, tt := range tests {
		if got := tailLines(tt.in, tt.n); got != tt.want {
			t.Errorf("tailLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestPumpDrainsAndCloses(t *testing.T) {
	c := NewConsole()
	r, w := io.Pipe()
	var log strings.Builder
	go c.pump(r, &log)
	w.Write([]byte("\x1bc\x1b[?7l\x1b[2Jline 1\r\n"))
	w.Close()
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("console not closed at EOF")
	}
	if c.Text() != "line 1\n" {
		t.Fatalf("text %q: want carriage returns and escapes dropped", c.Text())
	}
	if log.String() != "\x1bc\x1b[?7l\x1b[2Jline 1\r\n" {
		t.Fatalf("log %q: want raw bytes", log.String())
	}
}

func TestExpectPastAnExpectedPanic(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("Kernel panic - not syncing: watchdog test\nSeaBIOS\n"))
	if _, err := c.Expect(context.Background(), `Kernel panic - not syncing: (.*)`); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.Write([]byte("nopinit: pid1 uptime_ms=1800\n"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Expect(ctx, NopInitPattern); err != nil {
		t.Fatalf("a panic already matched must not fail later waits: %v", err)
	}
	c.Write([]byte("Kernel panic - not syncing: again\n"))
	if _, err := c.Expect(ctx, `never`); !errors.Is(err, ErrKernelPanic) {
		t.Fatalf("a new panic after the cursor: %v", err)
	}
}
