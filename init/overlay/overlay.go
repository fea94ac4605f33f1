// Package overlay stretches the internal bridge (ms-int) across the hosts
// of a stack with VXLAN, so every role instance keeps its fixed address and
// MAC wherever it runs: web1 on dh1 reaches db1 on dh2 at db1's address
// with nothing reconfigured when a role moves host.
//
// Each host adds a VXLAN port "ms-vx" to its bridge, bound to its own
// underlay address (the pair link's if the host has one, else its public
// address), with one all-zeros forwarding entry per peer host: broadcast
// and unknown unicast are replicated to every peer (head-end replication,
// no multicast needed on the underlay) and the bridges learn where each
// MAC lives. The firewall accepts the VXLAN port only from the peer hosts'
// underlay addresses.
//
// The VXLAN header costs 50 bytes: the overlay port's MTU is the
// underlay's minus 50, and role veths on the bridge must not exceed it.
package overlay

import (
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/stackfile"
)

const (
	// Iface is the VXLAN port on the internal bridge.
	Iface = "ms-vx"
	// Port is the IANA VXLAN port.
	Port = 4789
	// Overhead is what VXLAN over IPv4 adds to each frame.
	Overhead = 50
)

// Config is one host's side of the overlay.
type Config struct {
	Bridge string     // "ms-int"
	VNI    int        // the stack's network identifier
	Local  netip.Addr // this host's underlay address
	Peers  []netip.Addr
	MTU    int // of the VXLAN port; 0: 1500 - Overhead
}

// VNIFor derives a stack's VNI from its name, so two stacks sharing an
// underlay never merge their internal networks.
func VNIFor(stackName string) int {
	return int(crc32.ChecksumIEEE([]byte(stackName))%(1<<24-2)) + 1
}

// underlay is the address a host uses for the overlay.
func underlay(h stackfile.Host) (netip.Addr, bool) {
	if h.PairLink != nil && h.PairLink.Address.IsValid() {
		return h.PairLink.Address.Addr(), true
	}
	if h.Address.IsValid() {
		return h.Address.Addr(), true
	}
	return netip.Addr{}, false
}

// ConfigFor computes hostName's overlay from the stack. ok is false when
// the stack has a single host (no overlay needed). Hosts without a static
// address cannot be reached by their peers: that is an error naming them.
func ConfigFor(stack *stackfile.Stack, hostName string) (cfg Config, ok bool, err error) {
	if len(stack.Hosts) < 2 {
		return Config{}, false, nil
	}
	cfg = Config{Bridge: "ms-int", VNI: VNIFor(stack.Name)}
	found := false
	for i, h := range stack.Hosts {
		a, has := underlay(h)
		if !has {
			return Config{}, false, fmt.Errorf("overlay: hosts[%d] (%s): needs a static address or pairlink.address so its peers can reach its internal network", i, h.Name)
		}
		if h.Name == hostName {
			cfg.Local, found = a, true
			continue
		}
		cfg.Peers = append(cfg.Peers, a)
	}
	if !found {
		return Config{}, false, fmt.Errorf("overlay: host %q is not in the stack", hostName)
	}
	return cfg, true, nil
}

// PeerAddrs lists the underlay addresses of every host but hostName: the
// sources the firewall accepts the VXLAN port from.
func PeerAddrs(stack *stackfile.Stack, hostName string) []netip.Addr {
	var out []netip.Addr
	for _, h := range stack.Hosts {
		if a, ok := underlay(h); ok && h.Name != hostName && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// Up creates (or updates) the VXLAN port in ns (netns.None(): the
// caller's), attaches it to the bridge and installs one flood entry per
// peer, removing entries of peers no longer listed. Idempotent.
func Up(ns netns.NsHandle, cfg Config) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("overlay: netlink: %w", err)
	}
	defer h.Close()
	br, err := h.LinkByName(cfg.Bridge)
	if err != nil {
		return fmt.Errorf("overlay: bridge %s: %w", cfg.Bridge, err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = 1500 - Overhead
	}
	l, err := h.LinkByName(Iface)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: Iface, MTU: mtu},
			VxlanId:   cfg.VNI, SrcAddr: cfg.Local.AsSlice(), Port: Port, Learning: true,
		}
		if err := h.LinkAdd(vx); err != nil {
			return fmt.Errorf("overlay: create %s (vni %d, local %s): %w", Iface, cfg.VNI, cfg.Local, err)
		}
		if l, err = h.LinkByName(Iface); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("overlay: %w", err)
	} else if vx, ok := l.(*netlink.Vxlan); !ok || vx.VxlanId != cfg.VNI || !net.IP(vx.SrcAddr).Equal(cfg.Local.AsSlice()) {
		return fmt.Errorf("overlay: %s exists with other settings (recreate it)", Iface)
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("overlay: attach %s to %s: %w", Iface, cfg.Bridge, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("overlay: %s up: %w", Iface, err)
	}
	zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	want := map[netip.Addr]bool{}
	for _, p := range cfg.Peers {
		want[p] = true
		err := h.NeighAppend(&netlink.Neigh{
			LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: p.AsSlice(), HardwareAddr: zero,
		})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("overlay: flood entry for peer %s: %w", p, err)
		}
	}
	have, err := h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("overlay: list flood entries: %w", err)
	}
	for _, n := range have {
		a, ok := netip.AddrFromSlice(n.IP)
		if ok && n.HardwareAddr.String() == zero.String() && !want[a.Unmap()] {
			if err := h.NeighDel(&n); err != nil {
				return fmt.Errorf("overlay: drop flood entry for %s: %w", a, err)
			}
		}
	}
	return nil
}

// InstanceMAC is a fixed MAC for a role instance's address, so the
// instance keeps its MAC when it moves host and neighbours' ARP caches stay
// right (locally administered, unicast: 02:4d:<IPv4>).
func InstanceMAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x02, 0x4d, a[0], a[1], a[2], a[3]}
}
