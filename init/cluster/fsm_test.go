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
	f := NewFSM(func(o Ownership) { changes = append(changes, o) })
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
	f := NewFSM(nil)
	f.Apply(logOf(t, Command{Op: "assign", Instance: "db1", Owner: "dh1"}))
	f.Apply(logOf(t, Command{Op: "assign", Instance: "web1", Owner: "dh2"}))
	snap, _ := f.Snapshot()
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(nil)
	if err := g.Restore(io.NopCloser(&s)); err != nil {
		t.Fatal(err)
	}
	if a, b := f.All(), g.All(); len(a) != 2 || a[0] != b[0] || a[1] != b[1] {
		t.Fatalf("restored %+v, want %+v", b, a)
	}
}
