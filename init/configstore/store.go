// Package configstore keeps the stack file revisions a host has seen: the
// last good one (what a reboot brings up when the config source is
// unreachable) and a history of what was applied, rejected or rolled back,
// when, and why. Every write is atomic (temp file, fsync, rename, fsync of
// the directory), so a power cut leaves either the old or the new state.
package configstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/configsource"
)

// DefaultDir is where the store lives on a host's persistent disk.
const DefaultDir = "/var/lib/magestack/config"

// Limits on what the store keeps.
const (
	MaxHistory   = 200 // history entries
	MaxRevisions = 50  // revision files (the last good one is always kept)
)

// Result is what happened to a revision.
type Result string

const (
	Applied    Result = "applied"
	Rejected   Result = "rejected"    // invalid, or failed to apply and was rolled back
	RolledBack Result = "rolled-back" // made current again by an operator's rollback
)

// Entry is one line of the history.
type Entry struct {
	ID     string    `json:"id"`
	Source string    `json:"source,omitempty"`
	Time   time.Time `json:"time"` // the revision's own time (commit time)
	At     time.Time `json:"at"`   // when it was applied, rejected or rolled back
	Result Result    `json:"result"`
	Error  string    `json:"error,omitempty"`
	// Note qualifies an applied revision, e.g. changes left undone.
	Note string `json:"note,omitempty"`
}

// ErrNoRevision is returned when the store holds no good revision yet.
var ErrNoRevision = errors.New("no good config revision stored")

// Store is a config store in one directory.
type Store struct {
	dir         string
	mu          sync.Mutex
	now         func() time.Time
	lockTimeout time.Duration
}

// Open opens the store in dir ("" for DefaultDir). The directory is created
// by the first write, so reading a store that does not exist yet (an
// operator's machine, a first boot) has no side effects.
func Open(dir string) (*Store, error) {
	if dir == "" {
		dir = DefaultDir
	}
	return &Store{dir: dir, now: time.Now, lockTimeout: LockTimeout}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

var idRE = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

func checkID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("revision %q: want a hex revision ID (4 to 64 characters)", id)
	}
	return nil
}

// current is the last good revision's metadata (current.json).
type current struct {
	ID     string    `json:"id"`
	Source string    `json:"source,omitempty"`
	Time   time.Time `json:"time"`
}

// lock serialises writers across processes (PID 1 and the CLI).
func (s *Store) lock() (func(), error) {
	s.mu.Lock()
	if err := os.MkdirAll(filepath.Join(s.dir, "revisions"), 0o700); err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("config store: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("config store lock: %w", err)
	}
	// Bounded: PID 1 must not hang behind a stuck CLI holding the lock.
	deadline := time.Now().Add(s.lockTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			s.mu.Unlock()
			return nil, fmt.Errorf("config store lock %s: %w", f.Name(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() { f.Close(); s.mu.Unlock() }, nil
}

// LockTimeout bounds the wait for another process's store lock.
const LockTimeout = 10 * time.Second

// writeAtomic replaces path with data so that a crash leaves the old or the
// new content, never a mix.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Store) revPath(id string) string { return filepath.Join(s.dir, "revisions", id+".yaml") }

// saveData stores a revision's content under its ID.
func (s *Store) saveData(rev configsource.Revision) error {
	if err := checkID(rev.ID); err != nil {
		return err
	}
	p := s.revPath(rev.ID)
	if old, err := os.ReadFile(p); err == nil && string(old) == string(rev.Data) {
		return nil
	}
	return writeAtomic(p, rev.Data)
}

func (s *Store) readCurrent() (current, error) {
	var c current
	b, err := os.ReadFile(filepath.Join(s.dir, "current.json"))
	if errors.Is(err, os.ErrNotExist) {
		return c, ErrNoRevision
	}
	if err != nil {
		return c, fmt.Errorf("config store: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("config store: current.json: %w", err)
	}
	return c, nil
}

func (s *Store) setCurrent(rev configsource.Revision) error {
	b, err := json.MarshalIndent(current{ID: rev.ID, Source: rev.Source, Time: rev.Time}, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(s.dir, "current.json"), append(b, '\n'))
}

func (s *Store) readHistory() ([]Entry, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "history.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config store: %w", err)
	}
	var h []Entry
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("config store: history.json: %w", err)
	}
	return h, nil
}

func (s *Store) appendHistory(e Entry) error {
	h, err := s.readHistory()
	if err != nil {
		// A damaged history must not stop config from being applied:
		// start a new one, keeping the damaged file aside.
		os.Rename(filepath.Join(s.dir, "history.json"), filepath.Join(s.dir, "history.json.damaged"))
		h = nil
	}
	h = append(h, e)
	if len(h) > MaxHistory {
		h = h[len(h)-MaxHistory:]
	}
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(s.dir, "history.json"), append(b, '\n'))
}

// prune removes the oldest revision files beyond MaxRevisions, never the
// last good one.
func (s *Store) prune(keep string) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "revisions"))
	if err != nil || len(entries) <= MaxRevisions {
		return
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		if info, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".yaml") {
			files = append(files, file{e.Name(), info.ModTime()})
		}
	}
	slices.SortFunc(files, func(a, b file) int { return a.mod.Compare(b.mod) })
	excess := len(files) - MaxRevisions
	for _, f := range files {
		if excess <= 0 {
			break
		}
		if f.name != keep+".yaml" && os.Remove(filepath.Join(s.dir, "revisions", f.name)) == nil {
			excess--
		}
	}
}

// MarkApplied records rev as applied: it becomes the last good revision.
func (s *Store) MarkApplied(rev configsource.Revision) error {
	return s.record(rev, Applied, nil, true, "")
}

// MarkAppliedNote is MarkApplied with a note kept in the history (what was
// left undone, for instance).
func (s *Store) MarkAppliedNote(rev configsource.Revision, note string) error {
	return s.record(rev, Applied, nil, true, note)
}

// MarkRejected records that rev was refused (invalid) or failed to apply
// and was rolled back; the last good revision is unchanged.
func (s *Store) MarkRejected(rev configsource.Revision, cause error) error {
	return s.record(rev, Rejected, cause, false, "")
}

func (s *Store) record(rev configsource.Revision, res Result, cause error, good bool, note string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.saveData(rev); err != nil {
		return fmt.Errorf("config store: save revision: %w", err)
	}
	if good {
		if err := s.setCurrent(rev); err != nil {
			return fmt.Errorf("config store: set last good: %w", err)
		}
	}
	e := Entry{ID: rev.ID, Source: rev.Source, Time: rev.Time, At: s.now().UTC(), Result: res, Note: note}
	if cause != nil {
		e.Error = cause.Error()
	}
	if err := s.appendHistory(e); err != nil {
		return fmt.Errorf("config store: history: %w", err)
	}
	cur, _ := s.readCurrent()
	s.prune(cur.ID)
	return nil
}

// LastGood returns the last applied revision with its content.
func (s *Store) LastGood() (configsource.Revision, error) {
	c, err := s.readCurrent()
	if err != nil {
		return configsource.Revision{}, err
	}
	data, err := os.ReadFile(s.revPath(c.ID))
	if err != nil {
		return configsource.Revision{}, fmt.Errorf("config store: last good revision %s: %w", c.ID, err)
	}
	return configsource.Revision{ID: c.ID, Source: c.Source, Time: c.Time, Data: data}, nil
}

// History returns the history, oldest first.
func (s *Store) History() ([]Entry, error) { return s.readHistory() }

// Revision returns a stored revision by ID or unique ID prefix.
func (s *Store) Revision(id string) (configsource.Revision, error) {
	if err := checkID(id); err != nil {
		return configsource.Revision{}, err
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, "revisions"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return configsource.Revision{}, fmt.Errorf("config store: %w", err)
	}
	var match []string
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".yaml")
		if strings.HasSuffix(e.Name(), ".yaml") && strings.HasPrefix(name, id) {
			match = append(match, name)
		}
	}
	switch len(match) {
	case 0:
		return configsource.Revision{}, fmt.Errorf("revision %s is not in the store (see config history)", id)
	case 1:
	default:
		return configsource.Revision{}, fmt.Errorf("revision %s is ambiguous: %s", id, strings.Join(match, ", "))
	}
	full := match[0]
	data, err := os.ReadFile(s.revPath(full))
	if err != nil {
		return configsource.Revision{}, fmt.Errorf("config store: %w", err)
	}
	rev := configsource.Revision{ID: full, Data: data}
	if h, err := s.readHistory(); err == nil {
		for i := len(h) - 1; i >= 0; i-- {
			if h[i].ID == full {
				rev.Source, rev.Time = h[i].Source, h[i].Time
				break
			}
		}
	}
	return rev, nil
}

// Rollback makes a stored revision the last good one again and records it
// in the history. check (may be nil) vets the revision's content first,
// e.g. by parsing it; a revision that fails is not made current.
func (s *Store) Rollback(id string, check func(configsource.Revision) error) (configsource.Revision, error) {
	rev, err := s.Revision(id)
	if err != nil {
		return rev, err
	}
	if check != nil {
		if err := check(rev); err != nil {
			return rev, fmt.Errorf("revision %s cannot be rolled back to: %w", rev.ID, err)
		}
	}
	if err := s.record(rev, RolledBack, nil, true, ""); err != nil {
		return rev, err
	}
	return rev, nil
}

// Status is the store's view for `magestack status`.
type Status struct {
	// Current is the last good revision's latest history entry.
	Current *Entry `json:"current,omitempty"`
	// LastRejected is the most recent rejected revision newer than Current.
	LastRejected *Entry `json:"lastRejected,omitempty"`
}

// Status reports the applied revision and, if one was refused since, the
// rejected revision and why.
func (s *Store) Status() (Status, error) {
	var st Status
	h, err := s.readHistory()
	if err != nil {
		return st, err
	}
	cur, err := s.readCurrent()
	if err != nil && !errors.Is(err, ErrNoRevision) {
		return st, err
	}
	for i := len(h) - 1; i >= 0; i-- {
		e := h[i]
		if e.ID == cur.ID && e.Result != Rejected {
			st.Current = &e
			break
		}
		if e.Result == Rejected && st.LastRejected == nil {
			st.LastRejected = &e
		}
	}
	return st, nil
}
