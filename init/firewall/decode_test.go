package firewall

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
)

// prefixes parses CIDR literals.
func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// TestDecodeAdjacentIntervals: adjacent prefixes share a key (one's end,
// the next's start); decoding must not pair a start with its own key's
// end whatever order the kernel dumps them in.
func TestDecodeAdjacentIntervals(t *testing.T) {
	want := prefixes("192.0.2.11/32", "192.0.2.12/32", "192.0.2.13/32", "10.0.0.0/25", "10.0.0.128/25")
	elems, err := setElements(true, want)
	if err != nil {
		t.Fatal(err)
	}
	// Starts before ends at equal keys: the order that broke decoding.
	slices.SortStableFunc(elems, func(a, b nftables.SetElement) int {
		if a.IntervalEnd == b.IntervalEnd {
			return 0
		}
		if a.IntervalEnd {
			return 1
		}
		return -1
	})
	got, err := decodeElements(true, elems)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(want, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(got, want) {
		t.Fatalf("decoded %v, want %v", got, want)
	}
}
