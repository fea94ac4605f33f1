package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

// state is an FSM's table and settings in a comparable form (JSON: times
// restored from JSON carry their own *Location, so == would differ).
func state(t *testing.T, f *FSM) string {
	t.Helper()
	b, err := json.Marshal(struct {
		Owned    []Ownership
		Settings []Setting
	}{f.All(), f.Settings()})
	if err != nil {
		t.Fatalf("state does not encode: %v", err)
	}
	return string(b)
}

// checkInvariants holds whatever the log or a snapshot said: what the FSM
// keeps is always something a command could have produced.
func checkInvariants(t *testing.T, f *FSM) {
	t.Helper()
	for _, o := range f.All() {
		if o.Instance == "" || o.Epoch == 0 {
			t.Fatalf("table holds %+v: no instance or epoch 0", o)
		}
	}
	for _, s := range f.Settings() {
		if s.Key == "" || s.Value == "" {
			t.Fatalf("settings hold %+v: an empty key or value is no setting", s)
		}
	}
}

// roundTrip snapshots f and restores the snapshot into a fresh FSM: the
// copy must hold exactly what f holds, or a member that restores from a
// snapshot would disagree with the ones that applied the log.
func roundTrip(t *testing.T, f *FSM) {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatalf("persist: %v (state %s)", err, state(t, f))
	}
	g := NewFSM(Hooks{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatalf("restore of its own snapshot: %v\n%s", err, s.Bytes())
	}
	if a, b := state(t, f), state(t, g); a != b {
		t.Fatalf("restored\n%s\nwant\n%s", b, a)
	}
}

// FuzzFSMApply applies arbitrary committed log entries, one per line of
// the input, as raft would after a leader wrote them. No entry panics the
// FSM; an assign raises the instance's epoch by exactly one or is refused
// as stale without a change; a refused entry changes nothing; and the
// state always survives a snapshot and restore.
func FuzzFSMApply(f *testing.F) {
	for _, seed := range []string{
		`{"op":"assign","instance":"db1","owner":"dh1","time":"2026-01-01T00:00:00Z"}` + "\n" +
			`{"op":"assign","instance":"db1","owner":"dh2","expect":1,"time":"2026-01-01T00:00:01+02:00","reason":"failover"}`,
		`{"op":"assign","instance":"web1","owner":"dh1","expect":7,"time":"2026-01-01T00:00:00Z"}`,
		`{"op":"set","key":"maintenance/shop/www","value":"on","time":"2026-01-01T00:00:00Z"}` + "\n" +
			`{"op":"set","key":"maintenance/shop/www","time":"2026-01-01T00:00:00Z"}`,
		`{"op":"set","value":"on"}`,
		`{"op":"assign","owner":"dh1"}`,
		`{"op":"release","instance":"db1"}`,
		`{"op":"assign","instance":"db1","time":"0000-01-01T00:00:00+01:00"}`,
		`not json`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fsm := NewFSM(Hooks{})
		for i, data := range bytes.Split(in, []byte("\n")) {
			before := state(t, fsm)
			var c Command
			json.Unmarshal(data, &c)
			prev, _ := fsm.Get(c.Instance)

			res := fsm.Apply(&raft.Log{Index: uint64(i + 1), Data: data})
			switch r := res.(type) {
			case Ownership:
				if r.Instance != c.Instance || r.Epoch != prev.Epoch+1 {
					t.Fatalf("entry %q: applied %+v over epoch %d", data, r, prev.Epoch)
				}
				if got, ok := fsm.Get(c.Instance); !ok || got.Epoch != r.Epoch || got.Owner != c.Owner {
					t.Fatalf("entry %q: applied %+v, table holds %+v", data, r, got)
				}
			case Setting:
				got, ok := fsm.Setting(c.Key)
				if c.Value == "" && ok || c.Value != "" && (!ok || got.Value != c.Value) {
					t.Fatalf("entry %q: setting %+v %v after applying %+v", data, got, ok, r)
				}
			case error:
				var stale *ErrStale
				if errors.As(r, &stale) && stale.Current != prev.Epoch {
					t.Fatalf("entry %q: stale %+v, current epoch %d", data, stale, prev.Epoch)
				}
				if after := state(t, fsm); after != before {
					t.Fatalf("entry %q refused (%v) yet changed the state:\n%s\nto\n%s", data, r, before, after)
				}
			default:
				t.Fatalf("entry %q: Apply returned %T %v", data, res, res)
			}
			checkInvariants(t, fsm)
		}
		roundTrip(t, fsm)
	})
}

// FuzzFSMRestore restores arbitrary snapshots (a member's disk, or one
// sent by the leader). A snapshot that does not decode leaves the FSM as
// it was; one that does yields a state that holds the invariants and
// survives its own snapshot and restore.
func FuzzFSMRestore(f *testing.F) {
	for _, seed := range []string{
		`{"owned":[{"instance":"db1","owner":"dh1","epoch":3,"since":"2026-01-01T00:00:00Z"}],"settings":[{"key":"maintenance/shop/www","value":"on","since":"2026-01-01T00:00:00Z"}]}`,
		`[{"instance":"web1","owner":"dh1","epoch":3,"since":"2026-01-01T00:00:00Z"}]`,
		`{"owned":[{"instance":"db1","epoch":1},{"instance":"db1","epoch":2}]}`,
		`{"owned":[{"instance":"","epoch":1}],"settings":[{"key":"k","value":""}]}`,
		`{"owned":null}`, `[]`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, snap []byte) {
		fsm := NewFSM(Hooks{})
		fsm.Apply(&raft.Log{Index: 1, Data: []byte(`{"op":"assign","instance":"web1","owner":"dh1","time":"2026-01-01T00:00:00Z"}`)})
		fsm.Apply(&raft.Log{Index: 2, Data: []byte(`{"op":"set","key":"stale","value":"x","time":"2026-01-01T00:00:00Z"}`)})
		before := state(t, fsm)
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			if after := state(t, fsm); after != before {
				t.Fatalf("refused snapshot %q (%v) changed the state to %s", snap, err, after)
			}
			return
		}
		checkInvariants(t, fsm)
		roundTrip(t, fsm)
	})
}
