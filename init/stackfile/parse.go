package stackfile

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"reflect"
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

// MaxFileSize bounds a stack file; real ones are a few KiB.
const MaxFileSize = 1 << 20

// Parse decodes a stack file strictly, fills in defaults and validates it.
// name is the file name used in error messages. On failure the error lists
// every problem found (errors.Join of *FieldError, see FieldErrors), each
// naming file, line, column and field path.
func Parse(name string, data []byte) (s *Stack, err error) {
	if len(data) > MaxFileSize {
		return nil, &FieldError{File: name, Msg: fmt.Sprintf("file is %d bytes, more than the %d a stack file may have", len(data), MaxFileSize)}
	}
	root, err := parseNode(name, data)
	if err != nil {
		return nil, err
	}
	s = &Stack{src: &source{file: name, pos: map[string]Pos{}}}
	if len(root.Content) > 0 {
		top := root.Content[0]
		s.src.pos[""] = Pos{top.Line, top.Column}
		if top.Kind != yaml.MappingNode && !isNull(top) {
			return nil, &FieldError{File: name, Line: top.Line, Col: top.Column, Msg: "expected a mapping of stack fields (stack, hosts, roles, ...), got " + describe(top)}
		}
	}
	d := decoder{src: s.src}
	d.decode(root, "", reflect.ValueOf(s).Elem())
	if len(d.errs) > 0 {
		// Semantic checks on a half-decoded stack would mostly echo these.
		return nil, joinErrors(d.errs)
	}
	s.applyDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s.normalize()
	return s, nil
}

// normalize writes MACs in canonical form (lower case, colons), so other
// packages can compare them with net.HardwareAddr.String().
func (s *Stack) normalize() {
	for i := range s.Hosts {
		h := &s.Hosts[i]
		if m, err := normMAC(h.MAC); err == nil {
			h.MAC = m
		}
		if h.PairLink != nil {
			if m, err := normMAC(h.PairLink.MAC); err == nil {
				h.PairLink.MAC = m
			}
		}
	}
}

// parseNode reads exactly one YAML document into a node tree. yaml.v3 is
// guarded with recover: a parser bug on hostile input must become an error,
// never a dead PID 1.
func parseNode(name string, data []byte) (root *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &FieldError{File: name, Msg: fmt.Sprintf("YAML parser failed: %v", r)}
		}
	}()
	root = &yaml.Node{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(root); err != nil {
		if errors.Is(err, io.EOF) {
			return &yaml.Node{Kind: yaml.DocumentNode}, nil // empty file: reported by Validate
		}
		return nil, syntaxError(name, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, &FieldError{File: name, Line: extra.Line, Col: extra.Column, Msg: "a stack file holds one YAML document; remove the second \"---\" section"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(name, err)
	}
	return root, nil
}

// Role defaults; a stack file overrides any of them.
var roleDefaults = map[string]Role{
	"fw":      {Count: 1, CPUWeight: 100, Memory: 64 << 20, Pids: 128},
	"lb":      {Count: 1, CPUWeight: 200, Memory: 256 << 20, Pids: 512},
	"web":     {Count: 1, CPUWeight: 100, Memory: 512 << 20, Pids: 1024},
	"db":      {Count: 1, CPUWeight: 200, Memory: 1 << 30, Pids: 512, Volume: 1 << 30},
	"mail":    {Count: 1, CPUWeight: 50, Memory: 128 << 20, Pids: 256, Volume: 256 << 20},
	"acc":     {Count: 1, CPUWeight: 50, Memory: 256 << 20, Pids: 512, Volume: 1 << 30},
	"monitor": {Count: 1, CPUWeight: 50, Memory: 128 << 20, Pids: 256},
}

func (s *Stack) applyDefaults() {
	if !s.Internal.IsValid() {
		s.Internal = netip.MustParsePrefix("172.16.0.0/24")
	}
	if s.VPN.Port == 0 && !s.src.has("vpn.port") { // a written 0 is an error, not a default
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
		defaultCachePorts(r.Redis, 6379)
		defaultCachePorts(r.Memcached, 11211)
		if s.src != nil && !s.src.has("roles."+name+".count") {
			r.Count = def.Count // "web: {memory: 1GiB}" keeps the default count
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

// RoleDefaults returns the settings an omitted role gets (and an omitted
// field of a written role).
func RoleDefaults() map[string]Role { return maps.Clone(roleDefaults) }

// defaultCachePorts gives each cache instance without a port the service's
// default port plus its index in the list.
func defaultCachePorts(list []Cache, base int) {
	for i := range list {
		if list[i].Port == 0 && base+i <= 65535 {
			list[i].Port = uint16(base + i)
		}
	}
}
