package reconcile

import (
	"context"
	"maps"
	"strings"
	"testing"

	"magestack/init/configsource"
	"magestack/init/stackfile"
)

// withWeb returns s with web's count set to n (what a scale override does).
func withWeb(s *stackfile.Stack, n int) *stackfile.Stack {
	cp := *s
	cp.Roles = maps.Clone(s.Roles)
	r := cp.Roles["web"]
	r.Count = n
	cp.Roles["web"] = r
	return &cp
}

func TestApplyStackScalesAndRollsBack(t *testing.T) {
	r, f, _ := booted(t)
	running, rev := r.Running()
	res, err := r.ApplyStack(context.Background(), fixed(withWeb(running, 3)))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "firewall, start web2, start web3" {
		t.Errorf("scale 1 -> 3 calls: %s", got)
	}
	now, nowRev := r.Running()
	if now.Roles["web"].Count != 3 || nowRev.ID != rev.ID {
		t.Errorf("after scale: running web count %d revision %s; want 3, the same revision %s", now.Roles["web"].Count, nowRev.ID, rev.ID)
	}
	if len(res.Applied) != 3 {
		t.Errorf("applied = %v", res.Applied)
	}

	// A failing start rolls back to three instances.
	f.calls, f.failOn = nil, "stop web3"
	before := f.state()
	if _, err := r.ApplyStack(context.Background(), fixed(withWeb(now, 1))); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("failing scale down: err = %v", err)
	}
	if f.state() != before {
		t.Errorf("after a rolled-back scale: %s, want %s", f.state(), before)
	}
	if cur, _ := r.Running(); cur.Roles["web"].Count != 3 {
		t.Errorf("running web count after a failed scale = %d, want 3", cur.Roles["web"].Count)
	}
}

func fixed(s *stackfile.Stack) func(configsource.Revision) (*stackfile.Stack, error) {
	return func(configsource.Revision) (*stackfile.Stack, error) { return s, nil }
}

// The overlay keeps a local count through a revision that does not touch it.
func TestOverlayKeepsLocalCount(t *testing.T) {
	r, f, _ := booted(t)
	running, _ := r.Running()
	if _, err := r.ApplyStack(context.Background(), fixed(withWeb(running, 2))); err != nil {
		t.Fatal(err)
	}
	r.SetOverlay(func(s *stackfile.Stack) *stackfile.Stack { return withWeb(s, 2) })
	f.calls = nil
	if _, err := r.Apply(context.Background(), revOf(edit("256M", "512M"))); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "update web1, update web2" {
		t.Errorf("a settings revision under a scale overlay: calls %s; want both web instances updated, none stopped", got)
	}
}
