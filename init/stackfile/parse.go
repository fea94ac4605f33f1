package stackfile

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default stack file.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Default returns the embedded default stack: one host, every role.
func Default() *Stack {
	s, err := Parse("default.yaml", defaultYAML)
	if err != nil {
		panic(fmt.Sprintf("embedded default stack is invalid: %v", err)) // caught by tests
	}
	return s
}

// Parse decodes a stack file strictly (unknown keys are errors), fills in
// defaults and validates it. name is used in error messages.
func Parse(name string, data []byte) (*Stack, error) {
	var s Stack
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.applyDefaults()
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &s, nil
}

// Role defaults; a stack file overrides any of them.
var roleDefaults = map[string]Role{
	"fw":      {Count: 1, CPUWeight: 100, Memory: 64 << 20, Pids: 128},
	"lb":      {Count: 1, CPUWeight: 200, Memory: 256 << 20, Pids: 512},
	"web":     {Count: 1, CPUWeight: 100, Memory: 512 << 20, Pids: 1024},
	"db":      {Count: 1, CPUWeight: 200, Memory: 1 << 30, Pids: 512, Volume: 1 << 30},
	"mail":    {Count: 1, CPUWeight: 50, Memory: 128 << 20, Pids: 256},
	"acc":     {Count: 1, CPUWeight: 50, Memory: 256 << 20, Pids: 512},
	"monitor": {Count: 1, CPUWeight: 50, Memory: 128 << 20, Pids: 256},
}

func (s *Stack) applyDefaults() {
	if !s.Internal.IsValid() {
		s.Internal = netip.MustParsePrefix("172.16.0.0/24")
	}
	if s.VPN.Port == 0 {
		s.VPN.Port = 51820
	}
	if !s.VPN.Subnet.IsValid() {
		s.VPN.Subnet = netip.MustParsePrefix("10.8.0.0/24")
	}
	if s.Public.RateLimit == 0 {
		s.Public.RateLimit = 100
	}
	c := &s.Cluster
	for _, d := range []struct {
		f   *Duration
		def time.Duration
	}{{&c.Heartbeat, 100 * time.Millisecond}, {&c.Suspect, 300 * time.Millisecond}, {&c.Dead, time.Second}, {&c.HoldDown, time.Minute}, {&s.Config.Poll, time.Minute}} {
		if *d.f == 0 {
			*d.f = Duration(d.def)
		}
	}
	if s.Roles == nil {
		s.Roles = map[string]Role{}
	}
	for name, def := range roleDefaults {
		r, ok := s.Roles[name]
		if !ok {
			s.Roles[name] = def
			continue
		}
		if r.CPUWeight == 0 {
			r.CPUWeight = def.CPUWeight
		}
		if r.Memory == 0 {
			r.Memory = def.Memory
		}
		if r.Pids == 0 {
			r.Pids = def.Pids
		}
		if r.Volume == 0 {
			r.Volume = def.Volume
		}
		s.Roles[name] = r
	}
}

// Validate checks the stack's semantics. The stack file issue grows this
// into errors that name file, line, column and field.
func (s *Stack) Validate() error {
	if s.Name == "" {
		return fmt.Errorf("stack: name is required")
	}
	if len(s.Hosts) == 0 {
		return fmt.Errorf("hosts: at least one host is required")
	}
	if len(s.Hosts) > MaxHosts {
		return fmt.Errorf("hosts: at most %d hosts", MaxHosts)
	}
	for name := range s.Roles {
		if !IsRole(name) {
			return fmt.Errorf("roles.%s: unknown role (roles are %v)", name, roleNames)
		}
	}
	if _, err := s.Instances(); err != nil {
		return err
	}
	return nil
}
