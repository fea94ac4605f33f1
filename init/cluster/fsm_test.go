package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

func logOf(t *testing.T, c Command) *raft.Log {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Data: b}
}

func TestFSMAssignIsCompareAndSwapOnEpoch(t *testing.T) {
	var changes []Ownership
	f := NewFSM(Hooks{OnChange: func(o Ownership) { changes = append(changes, o) }})
	steps := []struct {
		cmd       Command
		wantOwner string
		wantEpoch uint64
		stale     bool
	}{
		{Command{Op: "assign", Instance: "web1", Owner: "dh1", Expect: 0}, "dh1", 1, false},
		{Command{Op: "assign", Instance: "web1", Owner: "dh2", Expect: 1}, "dh2", 2, false},
		// A second decision made on the old view loses.
		{Command{Op: "assign", Instance: "web1", Owner: "dh1", Expect: 1}, "dh2", 2, true},
		{Command{Op: "assign", Instance: "web1", Owner: "", Expect: 2}, "", 3, false},
	}
	for i, s := range steps {
		res := f.Apply(logOf(t, s.cmd))
		var stale *ErrStale
		if gotStale := errors.As(asErr(res), &stale); gotStale != s.stale {
			t.Fatalf("step %d: result %v, stale=%v want %v", i, res, gotStale, s.stale)
		}
		o, _ := f.Get("web1")
		if o.Owner != s.wantOwner || o.Epoch != s.wantEpoch {
			t.Fatalf("step %d: web1 = %+v, want owner %q epoch %d", i, o, s.wantOwner, s.wantEpoch)
		}
	}
	if len(changes) != 3 {
		t.Errorf("onChange called %d times, want 3", len(changes))
	}
	if res := f.Apply(&raft.Log{Data: []byte("{")}); asErr(res) == nil {
		t.Error("garbage command applied")
	}
}

func asErr(v any) error {
	err, _ := v.(error)
	return err
}

type sink struct {
	bytes.Buffer
}

func (s *sink) ID() string    { return "x" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

func TestFSMSnapshotRoundTrip(t *testing.T) {
	f := NewFSM(Hooks{})
	f.Apply(logOf(t, Command{Op: "assign", Instance: "db1", Owner: "dh1"}))
	f.Apply(logOf(t, Command{Op: "assign", Instance: "web1", Owner: "dh2"}))
	snap, _ := f.Snapshot()
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(Hooks{})
	if err := g.Restore(io.NopCloser(&s)); err != nil {
		t.Fatal(err)
	}
	if a, b := f.All(), g.All(); len(a) != 2 || a[0] != b[0] || a[1] != b[1] {
		t.Fatalf("restored %+v, want %+v", b, a)
	}
}

func TestFSMSettings(t *testing.T) {
	var told []Setting
	f := NewFSM(Hooks{OnSetting: func(s Setting) { told = append(told, s) }})
	for _, c := range []Command{
		{Op: "set", Key: "maintenance/shop/www", Value: "on"},
		{Op: "set", Key: "maintenance/blog/www", Value: "on"},
		{Op: "set", Key: "maintenance/shop/www"}, // cleared
	} {
		if res := f.Apply(logOf(t, c)); asErr(res) != nil {
			t.Fatalf("%+v: %v", c, res)
		}
	}
	if got := f.Settings(); len(got) != 1 || got[0].Key != "maintenance/blog/www" || got[0].Value != "on" {
		t.Errorf("settings %+v, want only blog on", got)
	}
	if len(told) != 3 || told[2].Key != "maintenance/shop/www" || told[2].Value != "" {
		t.Errorf("hook told %+v, want three changes ending with shop cleared", told)
	}
	if res := f.Apply(logOf(t, Command{Op: "set", Value: "on"})); asErr(res) == nil {
		t.Error("a setting without a key was applied")
	}
	// A snapshot keeps the settings; restoring one over a table with other
	// settings tells the hook of those that went away.
	snap, _ := f.Snapshot()
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	told = nil
	g := NewFSM(Hooks{OnSetting: func(s Setting) { told = append(told, s) }})
	g.Apply(logOf(t, Command{Op: "set", Key: "stale", Value: "x"}))
	told = nil
	if err := g.Restore(io.NopCloser(&s)); err != nil {
		t.Fatal(err)
	}
	if got, ok := g.Setting("maintenance/blog/www"); !ok || got.Value != "on" {
		t.Errorf("restored setting %+v %v", got, ok)
	}
	if _, ok := g.Setting("stale"); ok || len(told) != 2 || told[0] != (Setting{Key: "stale"}) {
		t.Errorf("restore: stale kept %v, hook told %+v", ok, told)
	}
}

// Snapshots written before settings existed are a bare ownership list.
func TestFSMRestoresOldSnapshot(t *testing.T) {
	f := NewFSM(Hooks{})
	old := `[{"instance":"web1","owner":"dh1","epoch":3,"since":"2026-01-01T00:00:00Z"}]`
	if err := f.Restore(io.NopCloser(bytes.NewBufferString(old))); err != nil {
		t.Fatal(err)
	}
	if o, ok := f.Get("web1"); !ok || o.Owner != "dh1" || o.Epoch != 3 || len(f.Settings()) != 0 {
		t.Errorf("restored %+v %v, settings %v", o, ok, f.Settings())
	}
	if err := f.Restore(io.NopCloser(bytes.NewBufferString("{"))); err == nil {
		t.Error("a broken snapshot was restored")
	}
}
