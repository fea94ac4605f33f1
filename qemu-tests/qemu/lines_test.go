package qemu

import (
	"strings"
	"testing"
)

func TestParseTimeline(t *testing.T) {
	console := `[  1790 ms] magestack starting
magestack: timeline mounts start_ms=1790 end_ms=1801 ok
noise magestack: timeline bogus start_ms=x end_ms=1 ok
magestack: timeline network start_ms=1900 end_ms=2950 error
magestack: timeline network start_ms=3000 end_ms=3100 ok
magestack: stack ready uptime_ms=4000
`
	steps := ParseTimeline(console)
	if len(steps) != 3 {
		t.Fatalf("steps %+v, want 3 (the malformed line skipped)", steps)
	}
	if steps[0] != (TimelineStep{"mounts", 1790, 1801, true}) || steps[1].OK {
		t.Fatalf("steps %+v", steps)
	}
	n, ok := FindStep(steps, "network")
	if !ok || n.EndMS != 3100 || !n.OK {
		t.Fatalf("FindStep picks the last try: %+v %v", n, ok)
	}
	if _, ok := FindStep(steps, "firewall"); ok {
		t.Fatal("found an absent step")
	}
	table := FormatTimeline(steps)
	if !strings.Contains(table, "network") || !strings.Contains(table, "1050") {
		t.Fatalf("table lacks the step or its duration:\n%s", table)
	}
	if FormatTimeline(nil) == "" {
		t.Fatal("empty timeline renders nothing")
	}
}
