// Package timeline records when each boot step started and ended, in
// milliseconds since the kernel started, prints one console line per step
// and keeps the list for the status API and `magestack boot`.
package timeline

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// DefaultPath is where PID 1 persists the boot timeline (PersistTo) for
// `magestack boot` and the status API.
const DefaultPath = "/run/magestack/timeline.json"

// Entry is one attempt of one boot step.
type Entry struct {
	Step    string `json:"step"`
	Attempt int    `json:"attempt"`
	StartMS int64  `json:"start_ms"`
	// EndMS is 0 while the step runs.
	EndMS int64 `json:"end_ms,omitempty"`
	// Done is set once the attempt ended, OK says how.
	Done  bool   `json:"done"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Timeline is safe for concurrent use: steps retried in the background end
// while later steps run.
type Timeline struct {
	mu      sync.Mutex
	entries []Entry
	clock   func() int64
	emit    func(line string)
	persist string
}

// New returns a timeline. clock gives ms since kernel start; emit receives
// each finished step's console line (nil: none).
func New(clock func() int64, emit func(line string)) *Timeline {
	if emit == nil {
		emit = func(string) {}
	}
	return &Timeline{clock: clock, emit: emit}
}

// PersistTo makes every change also write the snapshot as JSON to path
// (atomically), so a CLI can read the boot timeline without the API.
func (t *Timeline) PersistTo(path string) {
	t.mu.Lock()
	t.persist = path
	t.mu.Unlock()
}

// Begin records the start of an attempt of step and returns the function
// that records its end (err nil: ok).
func (t *Timeline) Begin(step string) (end func(err error)) {
	t.mu.Lock()
	attempt := 1
	for _, e := range t.entries {
		if e.Step == step {
			attempt++
		}
	}
	i := len(t.entries)
	t.entries = append(t.entries, Entry{Step: step, Attempt: attempt, StartMS: t.clock()})
	t.saveLocked()
	t.mu.Unlock()

	var once sync.Once
	return func(err error) {
		once.Do(func() {
			t.mu.Lock()
			e := &t.entries[i]
			e.EndMS, e.Done, e.OK = t.clock(), true, err == nil
			if err != nil {
				e.Error = err.Error()
			}
			line := Line(*e)
			t.saveLocked()
			t.mu.Unlock()
			t.emit(line)
		})
	}
}

// Line is the console form of a finished entry:
// `magestack: timeline <step> start_ms=<a> end_ms=<b> ok|error`.
func Line(e Entry) string {
	result := "ok"
	if !e.OK {
		result = "error"
	}
	return fmt.Sprintf("magestack: timeline %s start_ms=%d end_ms=%d %s", e.Step, e.StartMS, e.EndMS, result)
}

// Snapshot returns a copy of every entry so far, in start order.
func (t *Timeline) Snapshot() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Entry(nil), t.entries...)
}

func (t *Timeline) saveLocked() {
	if t.persist == "" {
		return
	}
	b, err := json.MarshalIndent(t.entries, "", "  ")
	if err != nil {
		return
	}
	_ = writeAtomic(t.persist, b)
}

// ReadFile reads a snapshot written by PersistTo.
func ReadFile(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read boot timeline: %w", err)
	}
	var es []Entry
	if err := json.Unmarshal(b, &es); err != nil {
		return nil, fmt.Errorf("parse boot timeline %s: %w", path, err)
	}
	return es, nil
}

func writeAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
