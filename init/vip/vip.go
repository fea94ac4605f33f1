// Package vip holds the stack's floating website address on the host that
// owns the edge roles: it puts the address on the public interface and
// announces it with gratuitous ARP — a burst when taken (0, 1 and 5 s) and
// then periodically, because after a partition heals neighbours keep stale
// entries for minutes unless told again.
package vip

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Announce schedule after taking the address.
var burst = []time.Duration{0, time.Second, 5 * time.Second}

// Holder keeps one address on one interface while Hold runs.
type Holder struct {
	Link   string       // interface name
	Addr   netip.Prefix // e.g. 192.0.2.50/24
	Every  time.Duration
	Logger *slog.Logger
	// Allowed, when set, is asked before every announcement: a host that
	// was paused and has just resumed must not announce an address its
	// peer took meanwhile (a missed ticker fires at once on resume).
	Allowed func() bool
	// nl and fd (an AF_PACKET socket for ARP) belong to the network
	// namespace New ran in, whatever thread Hold later runs on.
	nl *netlink.Handle
	fd int
}

// New returns a holder working in the caller's network namespace.
func New(link string, addr netip.Prefix, log *slog.Logger) (*Holder, error) {
	if !addr.Addr().Is4() {
		return nil, fmt.Errorf("vip %s: only IPv4 addresses are announced with ARP", addr)
	}
	// Route netlink only: kernels without XFRM refuse a handle that asks
	// for every family.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("vip: netlink: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("vip: packet socket: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A host letting the address go may still send from it (a resumed VM
	// retransmitting what was in flight when it was paused). Its ARP
	// requests must then name its own address, not the VIP, or neighbours
	// would learn the VIP at the host that is giving it up and lose the
	// website until their entry expires (arp_announce 2: the best local
	// address for the target, whatever the packet's source).
	if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", link, "arp_announce"), []byte("2"), 0); err != nil {
		log.Warn("vip: cannot keep the VIP out of ARP requests; neighbours may follow a host stepping down", "link", link, "err", err)
	}
	return &Holder{Link: link, Addr: addr, Every: 30 * time.Second, Logger: log, nl: nl, fd: fd}, nil
}

// Close releases the holder's sockets; call it after Hold returned.
func (h *Holder) Close() {
	unix.Close(h.fd)
	h.nl.Close()
}

// Hold adds the address, announces it on the burst schedule and then every
// h.Every until ctx ends, then removes the address. The socket used for
// announcing was opened by New, in its caller's namespace.
func (h *Holder) Hold(ctx context.Context) error {
	link, err := h.nl.LinkByName(h.Link)
	if err != nil {
		return fmt.Errorf("vip %s: interface %s: %w", h.Addr, h.Link, err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(h.Addr)}
	if err := h.nl.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("vip %s on %s: %w", h.Addr, h.Link, err)
	}
	defer func() {
		if err := h.nl.AddrDel(link, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			h.Logger.Warn("vip: removing address failed", "addr", h.Addr, "link", h.Link, "err", err)
		} else {
			h.Logger.Info("vip: released", "addr", h.Addr, "link", h.Link)
		}
	}()
	fd := h.fd
	ifi := link.Attrs()
	pkt := garp(ifi.HardwareAddr, h.Addr.Addr())
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	announce := func() {
		if h.Allowed != nil && !h.Allowed() {
			h.Logger.Warn("vip: not announcing: this host may no longer hold the address", "addr", h.Addr)
			return
		}
		if err := unix.Sendto(fd, pkt, 0, to); err != nil {
			h.Logger.Warn("vip: gratuitous ARP failed", "addr", h.Addr, "link", h.Link, "err", err)
		}
	}
	h.Logger.Info("vip: holding", "addr", h.Addr, "link", h.Link)
	start := time.Now()
	for _, at := range burst {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(start.Add(at))):
			announce()
		}
	}
	t := time.NewTicker(h.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			announce()
		}
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// garp is an ARP request announcing ip at mac (sender and target address
// both ip), the form every stack accepts to refresh a neighbour entry.
func garp(mac net.HardwareAddr, ip netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], 1) // request
	copy(b[8:14], mac)
	a := ip.As4()
	copy(b[14:18], a[:])
	// target MAC stays zero
	copy(b[24:28], a[:])
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
