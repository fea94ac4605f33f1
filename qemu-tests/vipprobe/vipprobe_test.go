package vipprobe

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestFirstAnswer(t *testing.T) {
	probes := []Probe{
		{Start: at(0), End: at(5), OK: true, Body: "h1", MAC: "a"},
		{Start: at(100), End: at(1100), OK: false, Err: "timeout"},
		// Started earlier but answered later than the next one (its SYN
		// was retransmitted): the first answer is the one that ended first.
		{Start: at(200), End: at(1400), OK: true, Body: "h2", MAC: "b"},
		{Start: at(300), End: at(310), OK: true, Body: "h2", MAC: "b"},
		{Start: at(400), End: at(405), OK: true, Body: "h1", MAC: "a"},
	}
	tests := []struct {
		name    string
		since   time.Time
		match   func(Probe) bool
		wantEnd time.Time
		wantOK  bool
	}{
		{"any after loss", at(50), nil, at(310), true},
		{"from h1 only", at(50), func(p Probe) bool { return p.Body == "h1" }, at(405), true},
		{"before the first", at(-1), nil, at(5), true},
		{"none after", at(400), nil, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := FirstAnswer(probes, tt.since, tt.match)
			if ok != tt.wantOK || (ok && !got.End.Equal(tt.wantEnd)) {
				t.Fatalf("FirstAnswer = %v %v, want end %v %v", got.End.Sub(t0), ok, tt.wantEnd.Sub(t0), tt.wantOK)
			}
		})
	}
	if last, ok := LastAnswer(probes, at(300)); !ok || !last.End.Equal(at(5)) {
		t.Fatalf("LastAnswer before 300ms = %v %v, want the one ending at 5ms", last.End.Sub(t0), ok)
	}
	if f, n := Failed(probes, at(50), at(350)); f != 1 || n != 3 {
		t.Fatalf("Failed = %d/%d, want 1/3", f, n)
	}
}

func TestMACHistory(t *testing.T) {
	ch := []MACChange{{at(10), "a"}, {at(2000), "b"}, {at(5000), "a"}}
	if got, ok := FirstMAC(ch, at(100), "b"); !ok || !got.Equal(at(2000)) {
		t.Fatalf("FirstMAC b = %v %v", got.Sub(t0), ok)
	}
	if _, ok := FirstMAC(ch, at(100), "c"); ok {
		t.Fatal("FirstMAC found a MAC never seen")
	}
	tests := []struct {
		from, to time.Time
		want     int
	}{
		{at(0), at(10000), 2}, // the first learned entry is not a move
		{at(100), at(10000), 2},
		{at(100), at(3000), 1},
		{at(2000), at(4000), 0}, // (from, to]: the change at 2000 is before
		{at(6000), at(9000), 0},
	}
	for _, tt := range tests {
		if got := Moves(ch, tt.from, tt.to); got != tt.want {
			t.Errorf("Moves(%v, %v) = %d, want %d", tt.from.Sub(t0), tt.to.Sub(t0), got, tt.want)
		}
	}
}
