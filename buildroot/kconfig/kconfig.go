// Package kconfig checks a kernel's build configuration (the
// /boot/config-<version> file) against the options magestack relies on,
// listed in buildroot/kernel-options.txt.
package kconfig

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// Config maps CONFIG_ names to their values ("y", "m", a number or a quoted
// string). Options "is not set" are absent.
type Config map[string]string

// Parse reads a kernel .config.
func Parse(r io.Reader) (Config, error) {
	c := Config{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") {
			return nil, fmt.Errorf("line %d: not a CONFIG_X=value line: %q", n, line)
		}
		c[k] = v
	}
	return c, s.Err()
}

// ParseFile reads a kernel .config from a file.
func ParseFile(file string) (Config, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// Requirement is one option magestack needs.
type Requirement struct {
	Option  string // CONFIG_X
	BuiltIn bool   // must be =y; otherwise =y or =m
	Why     string // the comment on its line
	Line    int
}

// ParseRequirements reads the kernel-options list format: "CONFIG_X" or
// "CONFIG_X=y", optionally followed by "# why".
func ParseRequirements(r io.Reader) ([]Requirement, error) {
	var out []Requirement
	seen := map[string]int{}
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line, why, _ := strings.Cut(s.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		req := Requirement{Option: line, Why: strings.TrimSpace(why), Line: n}
		if opt, val, ok := strings.Cut(line, "="); ok {
			if val != "y" {
				return nil, fmt.Errorf("line %d: %q: only =y may be required", n, line)
			}
			req.Option, req.BuiltIn = opt, true
		}
		if !strings.HasPrefix(req.Option, "CONFIG_") || strings.ContainsAny(req.Option, " \t") {
			return nil, fmt.Errorf("line %d: %q is not a CONFIG_ option", n, line)
		}
		if prev, dup := seen[req.Option]; dup {
			return nil, fmt.Errorf("line %d: %s already listed on line %d", n, req.Option, prev)
		}
		seen[req.Option] = n
		out = append(out, req)
	}
	return out, s.Err()
}

// Missing lists, one per entry, every requirement the config does not meet,
// with what it has and why magestack needs it.
func (c Config) Missing(reqs []Requirement) []string {
	var out []string
	for _, r := range reqs {
		v, ok := c[r.Option]
		switch {
		case ok && v == "y":
			continue
		case ok && v == "m" && !r.BuiltIn:
			continue
		}
		have := "not set"
		if ok {
			have = "=" + v
		}
		want := "=y or =m"
		if r.BuiltIn {
			want = "=y"
		}
		msg := fmt.Sprintf("%s: want %s, kernel has %s", r.Option, want, have)
		if r.Why != "" {
			msg += " (" + r.Why + ")"
		}
		out = append(out, msg)
	}
	return out
}
