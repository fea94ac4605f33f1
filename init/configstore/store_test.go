package configstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/configsource"
)

func rev(content string) configsource.Revision {
	h := sha256.Sum256([]byte(content))
	return configsource.Revision{ID: hex.EncodeToString(h[:]), Data: []byte(content), Source: "/etc/stack.yaml", Time: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
}

func TestAppliedBecomesLastGoodAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LastGood(); !errors.Is(err, ErrNoRevision) {
		t.Fatalf("empty store: %v", err)
	}
	a, b := rev("stack: a\n"), rev("stack: b\n")
	if err := s.MarkApplied(a); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkRejected(b, errors.New("stack.yaml:3:1: hosts: at least one host is required")); err != nil {
		t.Fatal(err)
	}
	// A reboot: a new Store on the same directory.
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.LastGood()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || string(got.Data) != "stack: a\n" || got.Source != a.Source || !got.Time.Equal(a.Time) {
		t.Errorf("last good after reopen: %+v", got)
	}
	h, err := s2.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Result != Applied || h[1].Result != Rejected || h[1].Error != "stack.yaml:3:1: hosts: at least one host is required" || h[1].At.IsZero() {
		t.Errorf("history %+v", h)
	}
	st, err := s2.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Current == nil || st.Current.ID != a.ID || st.LastRejected == nil || st.LastRejected.ID != b.ID {
		t.Errorf("status %+v", st)
	}
	// No temporary files are left behind.
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("leftover temp file %s", p)
		}
		return nil
	})
}

func TestRollback(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, b, bad := rev("stack: a\n"), rev("stack: b\n"), rev("stack: [\n")
	for _, r := range []configsource.Revision{a, b} {
		if err := s.MarkApplied(r); err != nil {
			t.Fatal(err)
		}
	}
	s.MarkRejected(bad, errors.New("syntax"))
	got, err := s.Rollback(a.ID[:8], nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || string(got.Data) != "stack: a\n" || got.Source != a.Source {
		t.Errorf("rollback returned %+v", got)
	}
	if lg, _ := s.LastGood(); lg.ID != a.ID {
		t.Errorf("last good after rollback: %s, want %s", lg.ID, a.ID)
	}
	h, _ := s.History()
	if last := h[len(h)-1]; last.Result != RolledBack || last.ID != a.ID {
		t.Errorf("last history entry %+v", last)
	}
	// A revision the check refuses is not made current.
	_, err = s.Rollback(bad.ID, func(r configsource.Revision) error { return errors.New("does not parse") })
	if err == nil || !strings.Contains(err.Error(), "cannot be rolled back to: does not parse") {
		t.Errorf("rollback to a bad revision: %v", err)
	}
	if lg, _ := s.LastGood(); lg.ID != a.ID {
		t.Errorf("refused rollback changed last good to %s", lg.ID)
	}
	for _, tt := range []struct{ id, err string }{
		{"ffff", "revision ffff is not in the store"},
		{"../../etc/passwd", "want a hex revision ID"},
		{"", "want a hex revision ID"},
	} {
		if _, err := s.Rollback(tt.id, nil); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("Rollback(%q): %v, want %q", tt.id, err, tt.err)
		}
	}
}

func TestPruneKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	first := rev("stack: first\n")
	s.MarkApplied(first)
	base := time.Now()
	s.now = func() time.Time { return base }
	os.Chtimes(s.revPath(first.ID), base.Add(-time.Hour), base.Add(-time.Hour))
	for i := range MaxRevisions + 10 {
		if err := s.MarkRejected(rev(fmt.Sprintf("stack: r%d\n", i)), errors.New("bad")); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "revisions"))
	if len(entries) > MaxRevisions {
		t.Errorf("%d revision files kept, want at most %d", len(entries), MaxRevisions)
	}
	if lg, err := s.LastGood(); err != nil || lg.ID != first.ID {
		t.Errorf("last good pruned: %v %s", err, lg.ID)
	}
}

func TestConcurrentWritersKeepEveryEntry(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _ := Open(dir) // separate Store values: the file lock serialises them
			for i := range 10 {
				if err := s.MarkApplied(rev(fmt.Sprintf("stack: w%d-%d\n", w, i))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	s, _ := Open(dir)
	h, err := s.History()
	if err != nil || len(h) != 40 {
		t.Fatalf("history has %d entries (%v), want 40", len(h), err)
	}
}

func TestDamagedStateIsReported(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	os.WriteFile(filepath.Join(dir, "current.json"), []byte("{not json"), 0o600)
	if _, err := s.LastGood(); err == nil || !strings.Contains(err.Error(), "current.json") {
		t.Errorf("damaged current.json: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "history.json"), []byte("[{"), 0o600)
	if err := s.MarkApplied(rev("stack: a\n")); err != nil {
		t.Fatalf("damaged history blocked an apply: %v", err)
	}
	if h, err := s.History(); err != nil || len(h) != 1 {
		t.Errorf("history after damage: %v %+v", err, h)
	}
	if _, err := os.Stat(filepath.Join(dir, "history.json.damaged")); err != nil {
		t.Errorf("damaged history not kept aside: %v", err)
	}
}

func TestReadingAMissingStoreCreatesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "config")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LastGood(); !errors.Is(err, ErrNoRevision) {
		t.Errorf("LastGood: %v", err)
	}
	if h, err := s.History(); err != nil || len(h) != 0 {
		t.Errorf("History: %v %v", h, err)
	}
	if _, err := s.Revision("abcd"); err == nil || !strings.Contains(err.Error(), "not in the store") {
		t.Errorf("Revision: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reading created %s: %v", dir, err)
	}
	if err := s.MarkApplied(rev("stack: a\n")); err != nil {
		t.Fatalf("first write: %v", err)
	}
}

func TestLockWaitIsBounded(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	if err := s.MarkApplied(rev("stack: a\n")); err != nil {
		t.Fatal(err)
	}
	// Another process holds the lock and never lets go.
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A separate open file description: flock conflicts like another process.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	s.lockTimeout = 300 * time.Millisecond
	start := time.Now()
	err = s.MarkApplied(rev("stack: b\n"))
	if err == nil || !strings.Contains(err.Error(), "config store lock") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("gave up only after %s", d) // a hang guard, not a timing check
	}
	if lg, _ := s.LastGood(); lg.ID != rev("stack: a\n").ID {
		t.Error("last good changed without the lock")
	}
}
