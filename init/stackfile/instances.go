package stackfile

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// RoleNames lists the node roles in start order: a role starts after every
// role before it is ready, and stops before them.
var roleNames = []string{"fw", "mail", "db", "web", "lb", "acc", "monitor"}

// RoleNames returns the node roles in start order.
func RoleNames() []string { return slices.Clone(roleNames) }

// IsRole reports whether name is a node role.
func IsRole(name string) bool { return slices.Contains(roleNames, name) }

// roleOffset is where each role's block of addresses starts inside the
// internal subnet. Hosts' bridge addresses take offsets 1..19 (host i has
// 1+i); web scales, so it has the open range from 100 up.
var roleOffset = map[string]int{
	"fw": 20, "lb": 30, "db": 40, "mail": 50, "acc": 60, "monitor": 70, "web": 100,
}

// roleBlock is how many instances fit in each fixed block.
const roleBlock = 10

// MaxHosts is how many hosts fit below the first role block.
const MaxHosts = 19

// Instance is one role instance, e.g. web2.
type Instance struct {
	Name string     `json:"name"`    // web2
	Role string     `json:"role"`    // web
	N    int        `json:"n"`       // 2 (1-based)
	Addr netip.Addr `json:"address"` // fixed internal address
	Host string     `json:"host"`    // host that runs it by default (placement)
}

// FQDN is the instance's name inside the stack, e.g. web2.i.
func (i Instance) FQDN() string { return i.Name + ".i" }

// Offset is the instance's fixed position inside the internal subnet
// (its address's offset): unique per instance and stable as instances
// are added, so other per-instance numbers (a volume's DRBD minor and
// port) derive from it.
func (i Instance) Offset() int { return roleOffset[i.Role] + i.N - 1 }

// offsetAddr returns the address at offset off inside prefix p.
func offsetAddr(p netip.Prefix, off int) (netip.Addr, error) {
	p = p.Masked()
	if !p.IsValid() {
		return netip.Addr{}, fmt.Errorf("internal subnet is not set")
	}
	bits := p.Addr().BitLen() - p.Bits()
	if bits < 63 && off >= (1<<bits)-1 {
		return netip.Addr{}, fmt.Errorf("offset %d does not fit in %s", off, p)
	}
	b := p.Addr().AsSlice()
	carry := off
	for i := len(b) - 1; i >= 0 && carry > 0; i-- {
		sum := int(b[i]) + carry
		b[i] = byte(sum)
		carry = sum >> 8
	}
	a, _ := netip.AddrFromSlice(b)
	return a, nil
}

// InstanceAddr returns the fixed internal address of instance n (1-based)
// of role.
func (s *Stack) InstanceAddr(role string, n int) (netip.Addr, error) {
	base, ok := roleOffset[role]
	if !ok {
		return netip.Addr{}, fmt.Errorf("unknown role %q", role)
	}
	if n < 1 || (role != "web" && n > roleBlock) {
		return netip.Addr{}, fmt.Errorf("%s%d: instance number out of range", role, n)
	}
	return offsetAddr(s.Internal, base+n-1)
}

// HostBridgeAddr returns the internal-bridge address of the host at index i
// of Hosts; roles on that host use it as their gateway.
func (s *Stack) HostBridgeAddr(i int) (netip.Addr, error) {
	if i < 0 || i >= MaxHosts {
		return netip.Addr{}, fmt.Errorf("host index %d out of range (at most %d hosts)", i, MaxHosts)
	}
	return offsetAddr(s.Internal, 1+i)
}

// Instances lists every role instance in start order with its address and
// default placement. Placement spreads instances over the hosts that may
// hold them, round-robin, starting each role at its own offset so that one
// host runs everything, added hosts take a share, and scaling one role never
// moves another role's instances.
func (s *Stack) Instances() ([]Instance, error) {
	var out []Instance
	for ri, role := range roleNames {
		r := s.Roles[role]
		hosts := r.Hosts
		if len(hosts) == 0 {
			for _, h := range s.Hosts {
				hosts = append(hosts, h.Name)
			}
		}
		for n := 1; n <= r.Count; n++ {
			addr, err := s.InstanceAddr(role, n)
			if err != nil {
				return nil, fmt.Errorf("roles.%s: %w", role, err)
			}
			inst := Instance{Name: fmt.Sprintf("%s%d", role, n), Role: role, N: n, Addr: addr}
			if len(hosts) > 0 {
				inst.Host = hosts[(ri+n-1)%len(hosts)]
			}
			out = append(out, inst)
		}
	}
	return out, nil
}

// HostByMAC finds the host whose boot NIC is mac (any spelling net.ParseMAC
// accepts: case and separators do not matter).
func (s *Stack) HostByMAC(mac string) (*Host, int, bool) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil, -1, false
	}
	for i := range s.Hosts {
		if hw, err := net.ParseMAC(s.Hosts[i].MAC); err == nil && hw.String() == want.String() {
			return &s.Hosts[i], i, true
		}
	}
	return nil, -1, false
}

// HostByName returns the host called name.
func (s *Stack) HostByName(name string) (*Host, int, bool) {
	for i := range s.Hosts {
		if s.Hosts[i].Name == name {
			return &s.Hosts[i], i, true
		}
	}
	return nil, -1, false
}
