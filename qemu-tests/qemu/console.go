package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"
)

// panicMarker is the kernel's last word; once it appears no expected line
// can follow, so waiting any longer only wastes the timeout.
var panicMarker = []byte("Kernel panic")

// ErrConsoleClosed reports that the console ended (QEMU exited) before a
// pattern matched.
var ErrConsoleClosed = errors.New("console closed (QEMU exited)")

// ErrKernelPanic reports that the guest kernel panicked after the last
// match (to wait past a deliberate panic, Expect "Kernel panic" first).
var ErrKernelPanic = errors.New("kernel panic on the console")

// Console collects a VM's serial output and lets tests wait for lines in
// order. Carriage returns and terminal escape sequences are dropped so
// patterns only deal with text and '\n' (the log file keeps the raw bytes).
// Matching only looks at complete lines: a pattern such as `uptime_ms=(\d+)`
// must never match a number the guest is still printing.
type Console struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	cursor int // Expect scans from here: everything before was consumed
	closed bool
	// lastPanic is the offset of the latest "Kernel panic", -1 for none. A
	// panic before the cursor was expected by the test (a deliberate crash
	// followed by a reboot) and no longer fails waits.
	lastPanic int
	done      chan struct{}
}

// NewConsole returns an empty console; feed it with Write and Close.
func NewConsole() *Console {
	c := &Console{done: make(chan struct{}), lastPanic: -1}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// terminalEscape matches the ANSI sequences firmware prints (SeaBIOS clears
// the screen): noise in patterns and in failure tails.
var terminalEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])`)

// Write appends guest output. It never blocks on readers, so a guest is
// never stalled by a slow test.
func (c *Console) Write(p []byte) (int, error) {
	clean := terminalEscape.ReplaceAll(bytes.ReplaceAll(p, []byte{'\r'}, nil), nil)
	c.mu.Lock()
	start := len(c.buf) - len(panicMarker)
	if start < 0 {
		start = 0
	}
	c.buf = append(c.buf, clean...)
	if i := bytes.LastIndex(c.buf[start:], panicMarker); i >= 0 {
		c.lastPanic = start + i
	}
	c.mu.Unlock()
	c.cond.Broadcast()
	return len(p), nil
}

// Close marks the end of output (the VM exited). Pending and later Expects
// fail once they have scanned what is left.
func (c *Console) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
	c.mu.Unlock()
	c.cond.Broadcast()
}

// Done is closed once the output has ended.
func (c *Console) Done() <-chan struct{} { return c.done }

// Text returns everything the guest printed so far.
func (c *Console) Text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

// Tail returns the last n lines printed so far.
func (c *Console) Tail(n int) string {
	return tailLines(c.Text(), n)
}

func tailLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if n <= 0 {
		return ""
	}
	idx := len(s)
	for i := 0; i < n; i++ {
		j := strings.LastIndexByte(s[:idx], '\n')
		if j < 0 {
			return s
		}
		idx = j
	}
	return s[idx+1:]
}

// Expect waits until pattern matches the output after the previous match
// and returns the match and its submatches; the next Expect starts after
// it, so a sequence of Expects asserts the order of lines. It fails early
// with the console tail on a kernel panic, on the end of output, or when
// ctx ends. The text searched spans many lines: use (?m) for ^ and $ to
// mean line starts and ends (. never matches a newline, so .* stays within
// a line).
func (c *Console) Expect(ctx context.Context, pattern string) ([]string, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("expect: bad pattern %q: %w", pattern, err)
	}
	// A context cannot wake a sync.Cond by itself.
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock() // ensures the waiter is parked or past its check
		c.cond.Broadcast()
	})
	defer stop()

	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		end := len(c.buf)
		if !c.closed {
			// Only complete lines take part.
			end = bytes.LastIndexByte(c.buf, '\n') + 1
		}
		if end > c.cursor {
			if loc := re.FindSubmatchIndex(c.buf[c.cursor:end]); loc != nil {
				m := make([]string, len(loc)/2)
				for i := range m {
					if loc[2*i] >= 0 {
						m[i] = string(c.buf[c.cursor+loc[2*i] : c.cursor+loc[2*i+1]])
					}
				}
				c.cursor += loc[1]
				return m, nil
			}
		}
		switch {
		case c.lastPanic >= c.cursor:
			return nil, c.failure(pattern, ErrKernelPanic)
		case c.closed:
			return nil, c.failure(pattern, ErrConsoleClosed)
		case ctx.Err() != nil:
			return nil, c.failure(pattern, ctx.Err())
		}
		c.cond.Wait()
	}
}

// ExpectNot checks that pattern does not appear in the output after the
// previous match during d (a quiet period, e.g. "no second ready line").
// It returns an error quoting the line when it does; a panic or exit during
// the period is an error too. The cursor does not move.
func (c *Console) ExpectNot(d time.Duration, pattern string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return fmt.Errorf("expect-not: bad pattern %q: %w", pattern, err)
	}
	c.mu.Lock()
	from := c.cursor
	c.mu.Unlock()
	deadline := time.Now().Add(d)
	for {
		c.mu.Lock()
		text, closed, panicked := c.buf[from:], c.closed, c.lastPanic >= from
		if loc := re.FindIndex(text); loc != nil {
			line := lineAround(text, loc[0])
			c.mu.Unlock()
			return fmt.Errorf("console shows %q, which must not appear: %q", pattern, line)
		}
		c.mu.Unlock()
		if panicked {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.failure(pattern, ErrKernelPanic)
		}
		if closed || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lineAround(b []byte, i int) string {
	start := bytes.LastIndexByte(b[:i], '\n') + 1
	end := bytes.IndexByte(b[i:], '\n')
	if end < 0 {
		return string(b[start:])
	}
	return string(b[start : i+end])
}

// consoleTailLines is how much of the console an error quotes.
const consoleTailLines = 60

// failure must be called with c.mu held.
func (c *Console) failure(pattern string, cause error) error {
	return &ExpectError{Pattern: pattern, Err: cause, Tail: tailLines(string(c.buf), consoleTailLines)}
}

// ExpectError is a failed wait, with the console tail for the diagnosis.
type ExpectError struct {
	Pattern string
	Err     error
	Tail    string
}

func (e *ExpectError) Error() string {
	return fmt.Sprintf("waiting for %q: %v; console tail:\n%s", e.Pattern, e.Err, e.Tail)
}

func (e *ExpectError) Unwrap() error { return e.Err }

// pump copies r into the console and an optional log until r ends, then
// closes the console. Reading never stops early: an undrained pipe would
// block the guest's serial port.
func (c *Console) pump(r io.Reader, log io.Writer) {
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if log != nil {
				// A failing log must not stop the drain.
				if _, werr := log.Write(buf[:n]); werr != nil {
					log = nil
				}
			}
			c.Write(buf[:n])
		}
		if err != nil {
			c.Close()
			return
		}
	}
}
