package services

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/template"
	"time"

	"magestack/init/health"
)

// A Payload is what one image runs for one role: its services in
// dependency order, the files written into the role at start (templated per
// instance) and the capabilities the role keeps. Payloads are data: a new
// image swaps them without touching the mechanism that runs them.
type Payload struct {
	Image    string    `json:"image"`
	Caps     []string  `json:"caps"` // kept capabilities, CAP_* names
	Services []Service `json:"services"`
	Files    []File    `json:"files,omitempty"`
}

// Service is one supervised process inside a role.
type Service struct {
	Name    string        `json:"name"`
	Command []string      `json:"command"` // absolute path inside the image first
	Env     []string      `json:"env,omitempty"`
	After   []string      `json:"after,omitempty"` // services ready before this one starts
	Health  *health.Check `json:"health,omitempty"`
	// StopSignal is sent first on stop (default SIGTERM), then SIGKILL after
	// StopGrace (default 5s).
	StopSignal string        `json:"stop_signal,omitempty"`
	StopGrace  time.Duration `json:"stop_grace,omitempty"`
	// When names a role setting that must be "true" for the service to run
	// (e.g. test hooks); empty: always.
	When string `json:"when,omitempty"`
}

// File is written into the role's writable layer before services start.
// Content is a text/template over Instance.
type File struct {
	Path    string      `json:"path"`
	Content string      `json:"content"`
	Mode    os.FileMode `json:"mode"`
}

// Instance is what file templates see.
type Instance struct {
	Name  string // web1
	Role  string // web
	FQDN  string // web1.i
	Stack string // stack name
}

// Render executes the file's template for inst.
func (f File) Render(inst Instance) ([]byte, error) {
	t, err := template.New(f.Path).Option("missingkey=error").Parse(f.Content)
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", f.Path, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, inst); err != nil {
		return nil, fmt.Errorf("file %s: %w", f.Path, err)
	}
	return b.Bytes(), nil
}

// PayloadFor returns what image runs for role, with services whose When
// setting is not "true" in settings left out.
func PayloadFor(image, role string, settings map[string]string) (Payload, error) {
	byRole, ok := payloads[image]
	if !ok {
		return Payload{}, fmt.Errorf("image %q: unknown (known: %s)", image, strings.Join(Images(), ", "))
	}
	p, ok := byRole[role]
	if !ok {
		return Payload{}, fmt.Errorf("image %q has no payload for role %q", image, role)
	}
	p.Image = image
	p.Caps = slices.Clone(p.Caps)
	p.Files = slices.Clone(p.Files)
	var svcs []Service
	for _, s := range p.Services {
		if s.When != "" && settings[s.When] != "true" {
			continue
		}
		svcs = append(svcs, s)
	}
	p.Services = svcs
	if err := p.Validate(); err != nil {
		return Payload{}, fmt.Errorf("image %q role %q: %w", image, role, err)
	}
	return p, nil
}

// Images lists the images that have payloads.
func Images() []string {
	var out []string
	for n := range payloads {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Validate checks names, commands, health checks and that After only names
// earlier services (so the list order is a valid start order).
func (p Payload) Validate() error {
	seen := map[string]bool{}
	for i, s := range p.Services {
		switch {
		case s.Name == "" || strings.ContainsAny(s.Name, "/ ") || strings.HasPrefix(s.Name, "cgroup.") || s.Name == "init":
			return fmt.Errorf("services[%d]: invalid name %q", i, s.Name)
		case seen[s.Name]:
			return fmt.Errorf("services[%d]: duplicate name %q", i, s.Name)
		case len(s.Command) == 0 || !strings.HasPrefix(s.Command[0], "/"):
			return fmt.Errorf("service %s: command must start with an absolute path, got %q", s.Name, s.Command)
		}
		for _, a := range s.After {
			if !seen[a] {
				return fmt.Errorf("service %s: after %q, which is not an earlier service", s.Name, a)
			}
		}
		if s.Health != nil {
			if err := s.Health.Validate(); err != nil {
				return fmt.Errorf("service %s: health: %w", s.Name, err)
			}
		}
		if s.StopSignal != "" && signalByName(s.StopSignal) == 0 {
			return fmt.Errorf("service %s: unknown stop signal %q", s.Name, s.StopSignal)
		}
		seen[s.Name] = true
	}
	for _, c := range p.Caps {
		if _, ok := capNumbers[c]; !ok {
			return fmt.Errorf("caps: unknown capability %q", c)
		}
	}
	for _, f := range p.Files {
		if !strings.HasPrefix(f.Path, "/") {
			return fmt.Errorf("file %q: path must be absolute", f.Path)
		}
		if _, err := f.Render(Instance{}); err != nil {
			return err
		}
	}
	return nil
}
