// Package cluster keeps the stack's cluster state — which host owns each
// role instance, under which ownership epoch — in hashicorp/raft across the
// hosts of a pair and a witness, so a pair keeps a majority (2 of 3) when
// one machine is lost. A host runs an instance only while the committed log
// says it owns it and it still hears from a majority.
package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Ownership is who runs one role instance.
type Ownership struct {
	Instance string    `json:"instance"`
	Owner    string    `json:"owner"` // host name; "" while released
	Epoch    uint64    `json:"epoch"` // raised by every change
	Since    time.Time `json:"since"`
	Reason   string    `json:"reason,omitempty"`
}

// Command is one change to the ownership table. A command carries the epoch
// it expects, so two decisions made on the same view cannot both apply.
type Command struct {
	Op       string    `json:"op"` // "assign"
	Instance string    `json:"instance"`
	Owner    string    `json:"owner"`
	Expect   uint64    `json:"expect"` // the instance's current epoch; 0 for a new instance
	Time     time.Time `json:"time"`   // proposer's clock, for status only
	Reason   string    `json:"reason,omitempty"`
}

// ErrStale is returned (as the apply response) when a command's expected
// epoch is not the current one.
type ErrStale struct {
	Instance        string
	Expect, Current uint64
}

func (e *ErrStale) Error() string {
	return fmt.Sprintf("%s: ownership changed meanwhile (expected epoch %d, now %d)", e.Instance, e.Expect, e.Current)
}

// FSM is the replicated ownership table.
type FSM struct {
	mu    sync.RWMutex
	owned map[string]Ownership
	// onChange is told of every applied change, outside the lock.
	onChange func(Ownership)
}

// NewFSM returns an empty table; onChange may be nil.
func NewFSM(onChange func(Ownership)) *FSM {
	return &FSM{owned: map[string]Ownership{}, onChange: onChange}
}

// Apply applies one committed command. Its return value is the new
// Ownership or an *ErrStale / error.
func (f *FSM) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("bad command at index %d: %w", l.Index, err)
	}
	res := f.apply(c)
	if o, ok := res.(Ownership); ok && f.onChange != nil {
		f.onChange(o)
	}
	return res
}

func (f *FSM) apply(c Command) any {
	if c.Op != "assign" || c.Instance == "" {
		return fmt.Errorf("bad command %+v", c)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.owned[c.Instance]
	if cur.Epoch != c.Expect {
		return &ErrStale{Instance: c.Instance, Expect: c.Expect, Current: cur.Epoch}
	}
	o := Ownership{Instance: c.Instance, Owner: c.Owner, Epoch: cur.Epoch + 1, Since: c.Time, Reason: c.Reason}
	f.owned[c.Instance] = o
	return o
}

// Get returns one instance's ownership.
func (f *FSM) Get(instance string) (Ownership, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	o, ok := f.owned[instance]
	return o, ok
}

// All returns the table sorted by instance.
func (f *FSM) All() []Ownership {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := slices.Collect(maps.Values(f.owned))
	slices.SortFunc(out, func(a, b Ownership) int {
		if a.Instance < b.Instance {
			return -1
		}
		if a.Instance > b.Instance {
			return 1
		}
		return 0
	})
	return out
}

// Snapshot captures the table.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot(f.All()), nil
}

// Restore replaces the table from a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var all []Ownership
	if err := json.NewDecoder(rc).Decode(&all); err != nil {
		return fmt.Errorf("restore ownership snapshot: %w", err)
	}
	f.mu.Lock()
	f.owned = map[string]Ownership{}
	for _, o := range all {
		f.owned[o.Instance] = o
	}
	f.mu.Unlock()
	if f.onChange != nil {
		for _, o := range all {
			f.onChange(o)
		}
	}
	return nil
}

type snapshot []Ownership

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]Ownership(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
