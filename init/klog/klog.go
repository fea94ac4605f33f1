// Package klog is PID 1's slog handler: concise text lines on the console and
// the same records in the kernel log (/dev/kmsg), stamped with milliseconds
// since the kernel started so they line up with the kernel's own messages.
package klog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"golang.org/x/sys/unix"
)

// SinceBoot returns the time since the kernel started (CLOCK_BOOTTIME, which
// keeps counting across suspend like the kernel's log timestamps).
func SinceBoot() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// UptimeMS is SinceBoot in whole milliseconds.
func UptimeMS() int64 { return SinceBoot().Milliseconds() }

// maxKmsgRecord stays under the kernel's per-record limit (LOG_LINE_MAX,
// 1024 minus the prefix); longer records are cut rather than rejected.
const maxKmsgRecord = 976

// Options configures a Handler.
type Options struct {
	// Console receives human-oriented lines; nil for none.
	Console io.Writer
	// Kmsg receives one write per record with a syslog priority prefix;
	// nil for none.
	Kmsg io.Writer
	// Level is the minimum level written; default Info.
	Level slog.Leveler
	// Tag names the writer in the kernel log (default "magestack").
	Tag string
	// Clock returns the timestamp; default SinceBoot.
	Clock func() time.Duration
	// ConsoleLoglevel is the kernel's console_loglevel (first field of
	// /proc/sys/kernel/printk; 0 unknown). The kernel itself prints kmsg
	// records more severe than it on the console, so those are not written
	// to Console a second time.
	ConsoleLoglevel int
}

// KernelConsoleLoglevel reads the kernel's console_loglevel (0 if unknown).
func KernelConsoleLoglevel() int {
	b, err := os.ReadFile("/proc/sys/kernel/printk")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// Handler is a slog.Handler. Write errors never reach the caller: a console
// that went away or a rate-limited kmsg must not stop PID 1; they are counted.
type Handler struct {
	shared *shared
	attrs  string // pre-rendered " k=v" pairs from WithAttrs
	group  string // dotted prefix from WithGroup
}

type shared struct {
	mu      sync.Mutex
	opts    Options
	dropped atomic.Int64
}

// New returns a handler writing to the given outputs.
func New(opts Options) *Handler {
	if opts.Level == nil {
		opts.Level = slog.LevelInfo
	}
	if opts.Tag == "" {
		opts.Tag = "magestack"
	}
	if opts.Clock == nil {
		opts.Clock = SinceBoot
	}
	return &Handler{shared: &shared{opts: opts}}
}

// Open returns a handler writing to /dev/console and /dev/kmsg, whichever
// of them can be opened, and a close function. It also turns off the
// kernel's rate limit on /dev/kmsg writes (printk_devkmsg=on) so a busy boot
// keeps its log; failing that, dropped records are only counted.
func Open(level slog.Leveler, tag string) (*Handler, func()) {
	opts := Options{Level: level, Tag: tag, ConsoleLoglevel: KernelConsoleLoglevel()}
	var closers []io.Closer
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		opts.Console = f
		closers = append(closers, f)
	} else {
		opts.Console = os.Stderr
	}
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0o644)
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		opts.Kmsg = f
		closers = append(closers, f)
	}
	return New(opts), func() {
		for _, c := range closers {
			c.Close()
		}
	}
}

// SetOutputs switches where every logger sharing this handler writes (PID 1
// logs to stderr until /dev is mounted, then to /dev/console and /dev/kmsg);
// consoleLoglevel is as in Options.
func (h *Handler) SetOutputs(console, kmsg io.Writer, consoleLoglevel int) {
	h.shared.mu.Lock()
	defer h.shared.mu.Unlock()
	h.shared.opts.Console, h.shared.opts.Kmsg = console, kmsg
	h.shared.opts.ConsoleLoglevel = consoleLoglevel
}

// Dropped counts records that an output refused.
func (h *Handler) Dropped() int64 { return h.shared.dropped.Load() }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.shared.opts.Level.Level()
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		appendAttr(&b, h.group, a)
	}
	return &Handler{shared: h.shared, attrs: b.String(), group: h.group}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &Handler{shared: h.shared, attrs: h.attrs, group: h.group + name + "."}
}

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	var body strings.Builder
	body.WriteString(r.Message)
	body.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&body, h.group, a)
		return true
	})
	text := body.String()
	o := &h.shared.opts

	h.shared.mu.Lock()
	defer h.shared.mu.Unlock()
	echoed := false
	if o.Kmsg != nil {
		pri := priority(r.Level)
		rec := fmt.Sprintf("<%d>%s: %s%s", pri, o.Tag, levelWord(r.Level), text)
		if len(rec) > maxKmsgRecord {
			rec = rec[:maxKmsgRecord]
		}
		if _, err := io.WriteString(o.Kmsg, rec+"\n"); err != nil {
			h.shared.dropped.Add(1)
		} else {
			echoed = o.ConsoleLoglevel > 0 && pri&7 < o.ConsoleLoglevel
		}
	}
	if o.Console != nil && !echoed {
		line := fmt.Sprintf("[%7d ms] %s%s\n", o.Clock().Milliseconds(), levelWord(r.Level), text)
		if _, err := io.WriteString(o.Console, line); err != nil {
			h.shared.dropped.Add(1)
		}
	}
	return nil
}

// Console writes a line verbatim to the console (and kmsg), for the lines
// other tools match exactly at the start of a line (timeline, stack ready).
func (h *Handler) Console(line string) {
	o := &h.shared.opts
	h.shared.mu.Lock()
	defer h.shared.mu.Unlock()
	if o.Console != nil {
		if _, err := io.WriteString(o.Console, line+"\n"); err != nil {
			h.shared.dropped.Add(1)
		}
	}
	if o.Kmsg != nil {
		// Debug severity: the kernel does not echo it, the console got it.
		if _, err := fmt.Fprintf(o.Kmsg, "<%d>%s\n", priority(slog.LevelDebug), line); err != nil {
			h.shared.dropped.Add(1)
		}
	}
}

// levelWord marks only what needs attention; info lines stay short.
func levelWord(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR "
	case l >= slog.LevelWarn:
		return "WARN "
	case l < slog.LevelInfo:
		return "DEBUG "
	}
	return ""
}

// priority is the syslog priority for kmsg: facility daemon (3) with the
// level's severity, so the kernel does not file it as a kernel message.
func priority(l slog.Level) int {
	const facility = 3 << 3
	switch {
	case l >= slog.LevelError:
		return facility | 3
	case l >= slog.LevelWarn:
		return facility | 4
	case l >= slog.LevelInfo:
		return facility | 6
	}
	return facility | 7
}

func appendAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		g := group
		if a.Key != "" {
			g += a.Key + "."
		}
		for _, ga := range a.Value.Group() {
			appendAttr(b, g, ga)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(group)
	b.WriteString(a.Key)
	b.WriteByte('=')
	var v string
	switch a.Value.Kind() {
	case slog.KindDuration:
		v = a.Value.Duration().String()
	case slog.KindTime:
		v = a.Value.Time().Format(time.RFC3339)
	default:
		v = a.Value.String()
	}
	b.WriteString(quote(v))
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if unicode.IsSpace(r) || r == '"' || r == '=' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
