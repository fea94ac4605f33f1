package firewall

import (
	"context"
	"net/netip"
	"testing"

	"magestack/init/stackfile"
)

// TestSync: a new config revision that only changes public.allow edits the
// set in place (rules and counters untouched); anything else replaces the table; an
// identical one does nothing.
func TestSync(t *testing.T) {
	ns, fd := netns(t)
	fw := NewInNetNS(fd)
	defer fw.Close()
	ctx := context.Background()
	build := func(mut func(s *stackfile.Stack)) *Ruleset {
		s := stackfile.Default()
		mut(s)
		rs, err := Build(s, HostView{PublicIfaces: []string{"eth0"}})
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	v1 := build(func(s *stackfile.Stack) { s.Public.Allow = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")} })
	v2 := build(func(s *stackfile.Stack) {
		s.Public.Allow = []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("192.0.2.128/25")}
	})
	v3 := build(func(s *stackfile.Stack) { s.Public.Allow = v2Allow(); s.Roles["web"] = stackfile.Role{Count: 2} })

	steps := []struct {
		rs   *Ruleset
		want SyncResult
	}{{v1, SyncReplaced}, {v1, SyncNone}, {v2, SyncAllow}, {v3, SyncReplaced}, {v3, SyncNone}}
	for i, st := range steps {
		got, err := fw.Sync(ctx, st.rs)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got != st.want {
			t.Errorf("step %d: %s, want %s", i, got, st.want)
		}
		if live := nftList(t, ns); live != Render(st.rs) {
			t.Fatalf("step %d: live table:\n%s\nwant:\n%s", i, live, Render(st.rs))
		}
	}
}

func v2Allow() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("192.0.2.128/25")}
}
