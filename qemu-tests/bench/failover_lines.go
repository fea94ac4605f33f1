package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// stampedLine is one output line and when the host read it.
type stampedLine struct {
	At   time.Time
	Text string
}

// lineLog is an io.Writer that stamps each complete line with its arrival
// time: a daemon's log (keepalived, the witness) or a VM console read as it
// grows.
type lineLog struct {
	mu      sync.Mutex
	now     func() time.Time
	partial []byte
	lines   []stampedLine
}

func newLineLog() *lineLog { return &lineLog{now: time.Now} }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at := l.now()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		text := strings.TrimRight(string(l.partial[:i]), "\r")
		l.lines = append(l.lines, stampedLine{At: at, Text: text})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// Lines returns the complete lines so far.
func (l *lineLog) Lines() []stampedLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]stampedLine(nil), l.lines...)
}

// String is the text so far, for error reports.
func (l *lineLog) String() string {
	var b strings.Builder
	for _, s := range l.Lines() {
		b.WriteString(s.Text)
		b.WriteByte('\n')
	}
	return b.String()
}

// follow feeds text() into l as it grows, every poll, until ctx ends: a VM
// console, stamped by when the host saw each line.
func (l *lineLog) follow(ctx context.Context, text func() string, poll time.Duration) {
	seen := 0
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		s := text()
		if len(s) < seen { // never expected: the console only grows
			seen = 0
		}
		if len(s) > seen {
			l.Write([]byte(s[seen:]))
			seen = len(s)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// guestStampRE is magestack's console prefix: guest uptime in ms.
var guestStampRE = regexp.MustCompile(`^\[\s*(\d+) ms\] `)

// guestMS is a console line's guest uptime, if it has one.
func guestMS(line string) (int64, bool) {
	m := guestStampRE.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	return v, err == nil
}

// guestClock maps a guest's uptime to host time. Every line reaches the
// host some time after the guest stamped it, so the smallest difference
// (arrival − uptime) over all lines is the best estimate of boot time; the
// error is that line's delay (the console poll and serial output).
type guestClock struct {
	boot time.Time
	ok   bool
}

func newGuestClock(lines []stampedLine) guestClock {
	var c guestClock
	for _, l := range lines {
		ms, ok := guestMS(l.Text)
		if !ok {
			continue
		}
		b := l.At.Add(-time.Duration(ms) * time.Millisecond)
		if !c.ok || b.Before(c.boot) {
			c.boot, c.ok = b, true
		}
	}
	return c
}

// at is when a line happened on the host clock: its guest stamp when it
// has one, else its arrival.
func (c guestClock) at(l stampedLine) time.Time {
	if ms, ok := guestMS(l.Text); ok && c.ok {
		return c.boot.Add(time.Duration(ms) * time.Millisecond)
	}
	return l.At
}

// event is a line found in a log, on the host clock.
type event struct {
	At   time.Time
	Line string
}

// firstAfter is the first line matching re that happened after since.
func firstAfter(lines []stampedLine, since time.Time, re *regexp.Regexp) (event, bool) {
	c := newGuestClock(lines)
	for _, l := range lines {
		if at := c.at(l); at.After(since) && re.MatchString(l.Text) {
			return event{At: at, Line: l.Text}, true
		}
	}
	return event{}, false
}

// countBetween counts lines matching re that happened within (from, to].
func countBetween(lines []stampedLine, from, to time.Time, re *regexp.Regexp) int {
	c := newGuestClock(lines)
	n := 0
	for _, l := range lines {
		if at := c.at(l); at.After(from) && !at.After(to) && re.MatchString(l.Text) {
			n++
		}
	}
	return n
}

// earliest is the earlier of two found events.
func earliest(a event, aok bool, b event, bok bool) (event, bool) {
	switch {
	case aok && bok:
		if b.At.Before(a.At) {
			return b, true
		}
		return a, true
	case aok:
		return a, true
	default:
		return b, bok
	}
}
