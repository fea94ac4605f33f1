// Package scaleoverride keeps `magestack scale` counts: a local override of
// a role's instance count, set on a running host without a commit to the
// stack file's repository.
//
// How it relates to the stack file: the stack file stays the source of
// truth for everything else, and an override remembers the stack file's
// count it was set against (Base). It stays in force, through new revisions
// and reboots (it is kept on the data disk), as long as the stack file
// still says Base for that role; the first revision that changes the role's
// count ends it, so a count committed to Git always wins over an older
// local one. Setting a count equal to the stack file's removes the override.
// Only web scales: every other role runs at most one instance.
package scaleoverride

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"magestack/init/stackfile"
)

// Override is one role's local count.
type Override struct {
	Role  string    `json:"role"`
	Count int       `json:"count"`
	Base  int       `json:"base"` // the stack file's count when it was set
	Set   time.Time `json:"set"`
}

// Scalable reports whether role may be scaled, and why not.
func Scalable(role string) error {
	if !stackfile.IsRole(role) {
		return fmt.Errorf("unknown role %q (roles: %s)", role, strings.Join(stackfile.RoleNames(), ", "))
	}
	if role != "web" {
		return fmt.Errorf("role %s cannot scale: it runs at most %d instance (only web, stateless behind lb, scales)", role, stackfile.MaxRoleCount)
	}
	return nil
}

// ParseArg parses "role=N" as given on the command line.
func ParseArg(arg string) (role string, count int, err error) {
	role, n, ok := strings.Cut(arg, "=")
	if !ok || role == "" || n == "" {
		return "", 0, fmt.Errorf("%q: want ROLE=COUNT, e.g. web=3", arg)
	}
	count, err = strconv.Atoi(n)
	if err != nil {
		return "", 0, fmt.Errorf("%q: count %q is not a whole number", arg, n)
	}
	if err := Check(role, count); err != nil {
		return "", 0, fmt.Errorf("%q: %w", arg, err)
	}
	return role, count, nil
}

// Check validates a wanted count for role.
func Check(role string, count int) error {
	if err := Scalable(role); err != nil {
		return err
	}
	if count < 1 {
		return fmt.Errorf("count %d: at least 1 (a site needs a web instance; set 0 in the stack file to run none)", count)
	}
	if count > stackfile.MaxWebCount {
		return fmt.Errorf("count %d: at most %d %s instances", count, stackfile.MaxWebCount, role)
	}
	return nil
}

// Apply returns file (the stack as its stack file says) with the overrides
// still in force applied, as a new stack (file is not changed), and the
// overrides the stack file has superseded (it changed that role's count).
// The result is checked: its instances must get addresses.
func Apply(file *stackfile.Stack, list []Override) (eff *stackfile.Stack, kept, superseded []Override, err error) {
	cp := *file
	cp.Roles = maps.Clone(file.Roles)
	for _, o := range list {
		r, ok := cp.Roles[o.Role]
		if !ok || r.Count != o.Base {
			superseded = append(superseded, o)
			continue
		}
		r.Count = o.Count
		cp.Roles[o.Role] = r
		kept = append(kept, o)
	}
	if _, err := cp.Instances(); err != nil {
		return file, nil, nil, fmt.Errorf("scaled stack: %w", err)
	}
	return &cp, kept, superseded, nil
}

// Store keeps the overrides in one JSON file.
type Store struct {
	path string
	mu   sync.Mutex
}

// FileName is the store's file under the host's state directory.
const FileName = "scale.json"

// Open returns the store kept at path (created on the first Set).
func Open(path string) *Store { return &Store{path: path} }

// List returns the overrides, by role.
func (s *Store) List() ([]Override, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read()
}

func (s *Store) read() ([]Override, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scale overrides: %w", err)
	}
	var list []Override
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("scale overrides %s: %w", s.path, err)
	}
	for _, o := range list {
		if err := Check(o.Role, o.Count); err != nil {
			return nil, fmt.Errorf("scale overrides %s: %s: %w", s.path, o.Role, err)
		}
	}
	return list, nil
}

// Set records o, replacing the role's previous override.
func (s *Store) Set(o Override) error {
	if err := Check(o.Role, o.Count); err != nil {
		return err
	}
	return s.update(func(list []Override) []Override {
		list = slices.DeleteFunc(list, func(x Override) bool { return x.Role == o.Role })
		return append(list, o)
	})
}

// Delete removes the overrides of roles.
func (s *Store) Delete(roles ...string) error {
	return s.update(func(list []Override) []Override {
		return slices.DeleteFunc(list, func(x Override) bool { return slices.Contains(roles, x.Role) })
	})
}

// Replace makes list the whole set (used to restore a previous one).
func (s *Store) Replace(list []Override) error {
	return s.update(func([]Override) []Override { return slices.Clone(list) })
}

func (s *Store) update(fn func([]Override) []Override) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	list, err := s.read()
	if err != nil {
		return err
	}
	list = fn(list)
	slices.SortFunc(list, func(a, b Override) int { return strings.Compare(a.Role, b.Role) })
	if len(list) == 0 {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("scale overrides: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("scale overrides: %w", err)
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("scale overrides: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("scale overrides: %w", err)
	}
	return nil
}
