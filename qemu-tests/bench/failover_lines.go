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

// hostTimes maps each line to when it happened on the host clock: a line
// with a guest uptime stamp by the guest's boot time, others by arrival.
// Every line reaches the host some time after the guest stamped it, so the
// smallest difference (arrival − uptime) over a boot's lines is the best
// estimate of that boot's start; the error is that line's delay (the
// console poll and serial output). A guest that resets (the watchdog)
// starts a new boot: its uptime goes back, or the firmware banner shows.
func hostTimes(lines []stampedLine) []time.Time {
	out := make([]time.Time, len(lines))
	bootOf := make([]int, len(lines))
	var boots []time.Time
	have := []bool{false}
	boots = append(boots, time.Time{})
	last := int64(-1)
	for i, l := range lines {
		ms, ok := guestMS(l.Text)
		if firmwareBannerRE.MatchString(l.Text) || (ok && ms < last) {
			boots, have = append(boots, time.Time{}), append(have, false)
			last = -1
		}
		b := len(boots) - 1
		bootOf[i] = b
		if !ok {
			continue
		}
		last = ms
		if s := l.At.Add(-time.Duration(ms) * time.Millisecond); !have[b] || s.Before(boots[b]) {
			boots[b], have[b] = s, true
		}
	}
	for i, l := range lines {
		out[i] = l.At
		if ms, ok := guestMS(l.Text); ok && have[bootOf[i]] {
			out[i] = boots[bootOf[i]].Add(time.Duration(ms) * time.Millisecond)
		}
	}
	return out
}

// firmwareBannerRE is the first line of a (re)booting VM's console.
var firmwareBannerRE = regexp.MustCompile(`SeaBIOS \(version`)

// resets counts the boots after the first that began within (from, to]:
// a guest reset (the watchdog) shows the firmware banner again.
func resets(lines []stampedLine, from, to time.Time) int {
	n := 0
	first := true
	for _, l := range lines {
		if !firmwareBannerRE.MatchString(l.Text) {
			continue
		}
		if !first && l.At.After(from) && !l.At.After(to) {
			n++
		}
		first = false
	}
	return n
}

// event is a line found in a log, on the host clock.
type event struct {
	At   time.Time
	Line string
}

// firstAfter is the first line matching re that happened after since.
func firstAfter(lines []stampedLine, since time.Time, re *regexp.Regexp) (event, bool) {
	ts := hostTimes(lines)
	for i, l := range lines {
		if at := ts[i]; at.After(since) && re.MatchString(l.Text) {
			return event{At: at, Line: l.Text}, true
		}
	}
	return event{}, false
}

// countBetween counts lines matching re that happened within (from, to].
func countBetween(lines []stampedLine, from, to time.Time, re *regexp.Regexp) int {
	ts := hostTimes(lines)
	n := 0
	for i, l := range lines {
		if at := ts[i]; at.After(from) && !at.After(to) && re.MatchString(l.Text) {
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
