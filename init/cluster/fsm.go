// Package cluster keeps the stack's cluster state — which host owns each
// role instance, under which ownership epoch, and the operator's switches
// that must hold on whichever host runs a role (a site's maintenance mode)
// — in hashicorp/raft across the hosts of a pair and a witness, so a pair
// keeps a majority (2 of 3) when one machine is lost. A host runs an
// instance only while the committed log says it owns it and it still hears
// from a majority.
package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
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

// Setting is one cluster-wide switch, kept by key; an empty value is no
// setting.
type Setting struct {
	Key   string    `json:"key"`
	Value string    `json:"value"`
	Since time.Time `json:"since"`
}

// Command is one change: "assign" changes the ownership table and carries
// the epoch it expects, so two decisions made on the same view cannot both
// apply; "set" sets (or, with an empty value, clears) a setting.
type Command struct {
	Op       string    `json:"op"` // "assign" or "set"
	Instance string    `json:"instance,omitempty"`
	Owner    string    `json:"owner,omitempty"`
	Expect   uint64    `json:"expect,omitempty"` // the instance's current epoch; 0 for a new instance
	Key      string    `json:"key,omitempty"`
	Value    string    `json:"value,omitempty"`
	Time     time.Time `json:"time"` // proposer's clock, for status only
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

// Hooks are told of applied changes, outside the FSM's lock and on raft's
// apply path: they must not block.
type Hooks struct {
	OnChange  func(Ownership)
	OnSetting func(Setting) // a cleared setting comes with an empty value
}

// FSM is the replicated ownership table and settings.
type FSM struct {
	mu       sync.RWMutex
	owned    map[string]Ownership
	settings map[string]Setting
	hooks    Hooks
}

// NewFSM returns an empty table.
func NewFSM(h Hooks) *FSM {
	return &FSM{owned: map[string]Ownership{}, settings: map[string]Setting{}, hooks: h}
}

// Apply applies one committed command. Its return value is the new
// Ownership or Setting, or an *ErrStale / error.
func (f *FSM) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("bad command at index %d: %w", l.Index, err)
	}
	if c.Op == "set" {
		return f.set(c)
	}
	res := f.apply(c)
	if o, ok := res.(Ownership); ok && f.hooks.OnChange != nil {
		f.hooks.OnChange(o)
	}
	return res
}

func (f *FSM) set(c Command) any {
	if c.Key == "" {
		return fmt.Errorf("bad command %+v: no key", c)
	}
	s := Setting{Key: c.Key, Value: c.Value, Since: c.Time}
	f.mu.Lock()
	if s.Value == "" {
		delete(f.settings, s.Key)
	} else {
		f.settings[s.Key] = s
	}
	f.mu.Unlock()
	if f.hooks.OnSetting != nil {
		f.hooks.OnSetting(s)
	}
	return s
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
	slices.SortFunc(out, func(a, b Ownership) int { return strings.Compare(a.Instance, b.Instance) })
	return out
}

// Setting returns one setting; ok is false when it is not set.
func (f *FSM) Setting(key string) (Setting, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.settings[key]
	return s, ok
}

// Settings returns every setting, sorted by key.
func (f *FSM) Settings() []Setting {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := slices.Collect(maps.Values(f.settings))
	slices.SortFunc(out, func(a, b Setting) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Snapshot captures the table and the settings.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot{Owned: f.All(), Settings: f.Settings()}, nil
}

// Restore replaces the table and the settings from a snapshot. Snapshots
// written before settings existed are a bare ownership list.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore cluster snapshot: %w", err)
	}
	var snap snapshot
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		err = json.Unmarshal(t, &snap.Owned)
	} else {
		err = json.Unmarshal(b, &snap)
	}
	if err != nil {
		return fmt.Errorf("restore cluster snapshot: %w", err)
	}
	// Refuse entries no command could have produced (a corrupt or foreign
	// snapshot) before touching the table: a member that restored them
	// would disagree with those that applied the log.
	for i, o := range snap.Owned {
		if o.Instance == "" || o.Epoch == 0 {
			return fmt.Errorf("restore cluster snapshot: owned[%d]: instance %q epoch %d: want a name and an epoch above 0", i, o.Instance, o.Epoch)
		}
	}
	for i, s := range snap.Settings {
		if s.Key == "" {
			return fmt.Errorf("restore cluster snapshot: settings[%d]: no key", i)
		}
	}
	f.mu.Lock()
	f.owned = map[string]Ownership{}
	for _, o := range snap.Owned {
		f.owned[o.Instance] = o
	}
	old := f.settings
	f.settings = map[string]Setting{}
	for _, s := range snap.Settings {
		// An empty value is no setting, as when a command clears one.
		if s.Value == "" {
			continue
		}
		f.settings[s.Key] = s
	}
	f.mu.Unlock()
	if f.hooks.OnChange != nil {
		for _, o := range snap.Owned {
			f.hooks.OnChange(o)
		}
	}
	if f.hooks.OnSetting != nil {
		for key := range old {
			if _, kept := f.settings[key]; !kept {
				f.hooks.OnSetting(Setting{Key: key})
			}
		}
		for _, s := range snap.Settings {
			f.hooks.OnSetting(s)
		}
	}
	return nil
}

type snapshot struct {
	Owned    []Ownership `json:"owned"`
	Settings []Setting   `json:"settings,omitempty"`
}

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
