package netboot

import (
	"fmt"
	"testing"
	"time"
)

// A flood of made-up MACs cannot grow the live view past its bound, and
// the known hosts booting meanwhile stay in it.
func TestProgressIsBounded(t *testing.T) {
	p := NewProgress(nil)
	clock := time.Unix(0, 0)
	p.now = func() time.Time { clock = clock.Add(time.Millisecond); return clock }
	p.Step("52:54:00:aa:00:01", "dh1", "offer", "")
	p.Step("52:54:00:aa:00:02", "dh2", "offer", "")
	for i := range 3 * maxTracked {
		p.Step(fmt.Sprintf("02:00:%02x:%02x:%02x:00", i>>16&0xff, i>>8&0xff, i&0xff), "", "offer", "")
	}
	p.Update("52:54:00:aa:00:03", func(h *HostProgress) { h.Error = "late" })
	snap := p.Snapshot()
	if len(snap) != maxTracked {
		t.Fatalf("%d entries tracked, want the bound %d", len(snap), maxTracked)
	}
	hosts := map[string]bool{}
	for _, h := range snap {
		hosts[h.MAC] = true
	}
	for _, mac := range []string{"52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"} {
		if !hosts[mac] {
			t.Errorf("%s was evicted", mac)
		}
	}
	// The newest unknown MAC is kept, the oldest went first.
	if !hosts[fmt.Sprintf("02:00:%02x:%02x:%02x:00", (3*maxTracked-1)>>16&0xff, (3*maxTracked-1)>>8&0xff, (3*maxTracked-1)&0xff)] || hosts["02:00:00:00:00:00"] {
		t.Error("eviction did not take the stalest unknown MAC first")
	}
}
