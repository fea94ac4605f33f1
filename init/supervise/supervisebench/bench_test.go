package supervisebench

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	if got := percentile(s, 50); got != 50*time.Millisecond {
		t.Errorf("median = %v", got)
	}
	if got := percentile(s, 99); got != 99*time.Millisecond {
		t.Errorf("p99 = %v", got)
	}
	if got := percentile(s[:3], 99); got != 100*time.Millisecond {
		t.Errorf("p99 of 3 = %v, want the largest", got)
	}
}

// TestRunShort runs the real comparison with three kills each: it proves
// each supervisor is driven correctly (restarted program observed), not
// how fast they are.
func TestRunShort(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~15 s")
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := RunN(ctx, &out, 3); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if !regexp.MustCompile(`magestack supervise +median +\d+\.\d\d ms +p99 +\d+\.\d\d ms`).MatchString(out.String()) {
		t.Errorf("no magestack figure:\n%s", out.String())
	}
	for _, name := range []string{"s6-supervise", "runit runsv"} {
		re := regexp.MustCompile(regexp.QuoteMeta(name) + ` +(median +\d+\.\d\d ms|n/a: .*not installed)`)
		if !re.MatchString(out.String()) {
			t.Errorf("%s neither measured nor reported missing:\n%s", name, out.String())
		}
	}
}
