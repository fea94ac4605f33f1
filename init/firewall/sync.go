package firewall

import (
	"context"
	"errors"
	"net/netip"
	"slices"
)

// SyncResult says what Sync did.
type SyncResult string

const (
	SyncNone     SyncResult = "unchanged"       // live table already as wanted
	SyncAllow    SyncResult = "allow-list only" // public_allow edited in place
	SyncReplaced SyncResult = "replaced"        // whole table applied as one batch
)

// Sync brings the live table to want with the smallest change: nothing when
// it already matches, an in-place edit of public_allow when that set is the
// only difference (counters and rate-limit state survive), else a full
// Apply. This is what a config reconcile calls on every new revision.
func (f *Firewall) Sync(ctx context.Context, want *Ruleset) (SyncResult, error) {
	live, err := f.Read(ctx)
	if errors.Is(err, errNoTable) {
		return SyncReplaced, f.Apply(ctx, want)
	}
	if err != nil {
		// An undecodable table (someone else's edit) is replaced.
		return SyncReplaced, f.Apply(ctx, want)
	}
	if len(Diff(want, live)) == 0 {
		return SyncNone, nil
	}
	wantAllow, liveAllow := allowOf(want), allowOf(live)
	sameRest := len(Diff(withoutAllow(want), withoutAllow(live))) == 0
	if sameRest && wantAllow != nil && liveAllow != nil {
		add, remove := prefixDiff(wantAllow, liveAllow)
		if err := f.UpdateAllow(ctx, add, remove); err == nil {
			return SyncAllow, nil
		}
		// e.g. overlapping edits the kernel refuses: fall back to a replace.
	}
	return SyncReplaced, f.Apply(ctx, want)
}

func allowOf(rs *Ruleset) []netip.Prefix {
	for _, s := range rs.Sets {
		if s.Name == AllowSet {
			if s.Elements == nil {
				return []netip.Prefix{}
			}
			return s.Elements
		}
	}
	return nil
}

func withoutAllow(rs *Ruleset) *Ruleset {
	out := *rs
	out.Sets = nil
	for _, s := range rs.Sets {
		if s.Name == AllowSet {
			s.Elements = nil
		}
		out.Sets = append(out.Sets, s)
	}
	return &out
}

// prefixDiff returns what to add to live and remove from it to get want.
func prefixDiff(want, live []netip.Prefix) (add, remove []netip.Prefix) {
	norm := func(ps []netip.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, len(ps))
		for i, p := range ps {
			out[i] = p.Masked()
		}
		return out
	}
	w, l := norm(want), norm(live)
	for _, p := range w {
		if !slices.Contains(l, p) {
			add = append(add, p)
		}
	}
	for _, p := range l {
		if !slices.Contains(w, p) {
			remove = append(remove, p)
		}
	}
	return add, remove
}
