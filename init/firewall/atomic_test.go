package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/stackfile"
)

func defaultRuleset(t *testing.T) *Ruleset {
	t.Helper()
	rs, err := Build(stackfile.Default(), HostView{PublicIfaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestFailedApplyKeepsPreviousRuleset injects rulesets the kernel rejects
// and checks the previous table is untouched, byte for byte.
func TestFailedApplyKeepsPreviousRuleset(t *testing.T) {
	broken := map[string]func(rs *Ruleset){
		"jump to a missing chain": func(rs *Ruleset) {
			c := &rs.Chains[1]
			c.Rules = append(c.Rules, Rule{Stmts: []Stmt{Counter{}, Jump{"does_not_exist"}}})
		},
		"set over its size limit": func(rs *Ruleset) {
			rs.Sets = append(rs.Sets, Set{Name: "tiny", Size: 2, Elements: []netip.Prefix{
				netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32"), netip.MustParsePrefix("192.0.2.3/32")}})
		},
		"lookup in a missing set": func(rs *Ruleset) {
			c := &rs.Chains[0]
			c.Rules = append(c.Rules, Rule{Stmts: []Stmt{IPAddrSet{Set: "nope"}, Counter{}, Verdict{"accept"}}})
		},
	}
	for name, breakIt := range broken {
		t.Run(name, func(t *testing.T) {
			ns, fd := netns(t)
			fw := NewInNetNS(fd)
			ctx := context.Background()

			// With no table yet, a failed apply must not leave a partial one.
			bad := defaultRuleset(t)
			breakIt(bad)
			if err := fw.Apply(ctx, bad); err == nil {
				t.Fatal("broken ruleset applied without error")
			}
			if got := nftList(t, ns); !strings.HasPrefix(got, "ERROR") {
				t.Fatalf("failed first apply left a table:\n%s", got)
			}

			good, err := Build(loadStack(t, "three-hosts.yaml"), goldenCases[1].host)
			if err != nil {
				t.Fatal(err)
			}
			if err := fw.Apply(ctx, good); err != nil {
				t.Fatal(err)
			}
			before := nftList(t, ns)
			err = fw.Apply(ctx, bad)
			if err == nil {
				t.Fatal("broken ruleset applied without error")
			}
			t.Logf("apply error (expected): %v", err)
			if after := nftList(t, ns); after != before {
				t.Fatalf("failed apply changed the live table:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestConcurrentAppliesSerialise runs ten applies at once; the final table
// must be exactly one of them, never a mix.
func TestConcurrentAppliesSerialise(t *testing.T) {
	ns, fd := netns(t)
	fw := NewInNetNS(fd)
	var texts []string
	var rulesets []*Ruleset
	for i := range 10 {
		s := stackfile.Default()
		s.Public.Allow = []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/32", i+1))}
		s.Roles["web"] = stackfile.Role{Count: i + 1}
		rs, err := Build(s, HostView{PublicIfaces: []string{"eth0"}})
		if err != nil {
			t.Fatal(err)
		}
		rulesets = append(rulesets, rs)
		texts = append(texts, Render(rs))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(rulesets))
	for _, rs := range rulesets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- fw.Apply(context.Background(), rs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := nftList(t, ns)
	for i, want := range texts {
		if got == want {
			t.Logf("final table is apply %d", i)
			return
		}
	}
	t.Fatalf("final table is none of the applied rulesets:\n%s", got)
}

// TestUpdateAllow edits the allow-list in place: the set changes, nothing
// else does (rules, counters), and a bad edit changes nothing.
func TestUpdateAllow(t *testing.T) {
	ns, fd := netns(t)
	fw := NewInNetNS(fd)
	ctx := context.Background()
	rs := defaultRuleset(t)
	if err := fw.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	before := nftList(t, ns)
	add := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("198.51.100.0/24")}
	start := time.Now()
	if err := fw.UpdateAllow(ctx, add, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("add 2 prefixes: %v", time.Since(start))
	withAllow := *rs
	withAllow.Sets = append([]Set(nil), rs.Sets...)
	withAllow.Sets[0].Elements = add
	if got := nftList(t, ns); got != Render(&withAllow) {
		t.Fatalf("after add:\n%s\nwant:\n%s", got, Render(&withAllow))
	}
	// Removing something absent fails and leaves the set as it was.
	if err := fw.UpdateAllow(ctx, nil, []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}); err == nil {
		t.Fatal("removing an absent prefix succeeded")
	}
	if got := nftList(t, ns); got != Render(&withAllow) {
		t.Fatalf("failed remove changed the table:\n%s", got)
	}
	start = time.Now()
	if err := fw.UpdateAllow(ctx, nil, add[:1]); err != nil {
		t.Fatal(err)
	}
	if err := fw.UpdateAllow(ctx, nil, add[1:]); err != nil {
		t.Fatal(err)
	}
	t.Logf("remove 2 prefixes (2 batches): %v", time.Since(start))
	if got := nftList(t, ns); got != before {
		t.Fatalf("after removing everything added:\n%s\nwant:\n%s", got, before)
	}
	diffs, err := fw.Check(ctx, rs)
	if err != nil || len(diffs) != 0 {
		t.Fatalf("check: %v %v", diffs, err)
	}
	// Drift is reported: an allow-list entry the config does not have.
	if err := fw.UpdateAllow(ctx, add[:1], nil); err != nil {
		t.Fatal(err)
	}
	diffs, err = fw.Check(ctx, rs)
	if err != nil || len(diffs) == 0 || !strings.Contains(strings.Join(diffs, "\n"), "192.0.2.7") {
		t.Fatalf("check did not report the extra allow-list entry: %v %v", diffs, err)
	}
}
