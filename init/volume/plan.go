package volume

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"magestack/init/stackfile"
)

// BasePort is where the volumes' replication ports start: volume of the
// instance at internal offset k listens on BasePort+k on the pair link, the
// same number on both hosts, stable as instances are added (offsets are
// fixed per instance).
const BasePort = 7800

// Plan is the set of volumes one host holds.
type Plan struct {
	Specs []Spec
	// Unreplicated says why the volumes have no peer although the host is
	// paired ("" when they have one, or the host has no pair).
	Unreplicated string
}

// Where volumes live on the host.
type Paths struct {
	Backing string // directory of the backing files, on the data disk
	Mount   string // directory the filesystems are mounted under
}

// PlanFor lists the volumes host holds in stack: one per instance with a
// volume that this host or its pair peer runs by placement (either may run
// it after a failover, so both keep a copy). secret names the peers'
// shared secret of a volume; nil leaves the secrets out (enough to know
// the ports).
func PlanFor(stack *stackfile.Stack, host string, paths Paths, secret func(name string) (string, error)) (Plan, error) {
	h, _, ok := stack.HostByName(host)
	if !ok {
		return Plan{}, fmt.Errorf("host %q is not in stack %s", host, stack.Name)
	}
	insts, err := stack.Instances()
	if err != nil {
		return Plan{}, err
	}
	var plan Plan
	var local, remote netip.Addr
	if h.Pair != "" {
		peer, _, ok := stack.HostByName(h.Pair)
		switch {
		case !ok:
			return Plan{}, fmt.Errorf("hosts.%s.pair: %q is not a host", host, h.Pair)
		case h.PairLink != nil && peer.PairLink != nil:
			local, remote = h.PairLink.Address.Addr(), peer.PairLink.Address.Addr()
		case h.Address.IsValid() && peer.Address.IsValid():
			local, remote = h.Address.Addr(), peer.Address.Addr()
		default:
			plan.Unreplicated = fmt.Sprintf("hosts %s and %s need static addresses or a pair link for the volumes to replicate", host, h.Pair)
		}
	}
	for _, in := range insts {
		size := int64(stack.Roles[in.Role].Volume)
		if size == 0 || (in.Host != host && (h.Pair == "" || in.Host != h.Pair)) {
			continue
		}
		off := in.Offset()
		s := Spec{
			Name:    in.Name,
			Minor:   off,
			Size:    size,
			Backing: filepath.Join(paths.Backing, in.Name+".img"),
			Mount:   filepath.Join(paths.Mount, in.Name),
		}
		if local.IsValid() {
			port := BasePort + off
			if port > 65535 {
				return Plan{}, fmt.Errorf("volume %s: replication port %d out of range", in.Name, port)
			}
			s.Peer = &Link{Local: netip.AddrPortFrom(local, uint16(port)), Remote: netip.AddrPortFrom(remote, uint16(port))}
			if secret != nil {
				var err error
				if s.Secret, err = secret("drbd." + in.Name); err != nil {
					return Plan{}, fmt.Errorf("volume %s: %w", in.Name, err)
				}
			}
		}
		plan.Specs = append(plan.Specs, s)
	}
	return plan, nil
}

// Ports are the replication ports of the plan's volumes.
func (p Plan) Ports() []uint16 {
	var out []uint16
	for _, s := range p.Specs {
		if s.Peer != nil {
			out = append(out, s.Peer.Local.Port())
		}
	}
	return out
}

// Spec finds the volume of an instance.
func (p Plan) Spec(instance string) (Spec, bool) {
	for _, s := range p.Specs {
		if s.Name == instance {
			return s, true
		}
	}
	return Spec{}, false
}
