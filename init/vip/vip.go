// Package vip holds the stack's floating website address on the host that
// owns the edge roles: it puts the address on the public interface and
// announces it with gratuitous ARP — a burst when taken (0, 1 and 5 s) and
// then periodically, because after a partition heals neighbours keep stale
// entries for minutes unless told again — and answers another host that
// announces it meanwhile.
package vip

import (
	"bytes"
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

// Holder keeps one address on one interface while Hold runs.
type Holder struct {
	Link string       // interface name
	Addr netip.Prefix // e.g. 192.0.2.50/24
	// Burst is when to announce after taking the address (0, 1 and 5 s),
	// Every how often after that.
	Burst  []time.Duration
	Every  time.Duration
	Logger *slog.Logger
	// Allowed, when set, is asked before every announcement: a host that
	// was paused and has just resumed must not announce an address its
	// peer took meanwhile (a missed ticker fires at once on resume).
	Allowed func() bool
	// DefendAfter is how long after another host announced the address
	// this holder answers with its own announcement.
	DefendAfter time.Duration
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
	return &Holder{Link: link, Addr: addr, Burst: []time.Duration{0, time.Second, 5 * time.Second}, Every: 30 * time.Second, DefendAfter: time.Second, Logger: log, nl: nl, fd: fd}, nil
}

// Close releases the holder's sockets; call it after Hold returned.
func (h *Holder) Close() {
	unix.Close(h.fd)
	h.nl.Close()
}

// Hold adds the address, announces it on the burst schedule and then every
// h.Every until ctx ends, then removes the address. The socket used for
// announcing was opened by New, in its caller's namespace.
//
// While holding, it also listens for another host announcing the same
// address (RFC 5227's conflict): a host resumed from a pause still believes
// it holds the address for a moment and may announce it from a timer that
// was due, which moves the neighbours to it just before it steps down and
// leaves the website unreachable until their entries expire. The holder
// answers such an announcement with its own, h.DefendAfter later: long
// enough for a stale host to have stepped down (so the two do not trade
// announcements), and asking Allowed first like every announcement.
func (h *Holder) Hold(ctx context.Context) error {
	link, err := h.nl.LinkByName(h.Link)
	if err != nil {
		return fmt.Errorf("vip %s: interface %s: %w", h.Addr, h.Link, err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(h.Addr)}
	if err := h.nl.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("vip %s on %s: %w", h.Addr, h.Link, err)
	}
	ifi := link.Attrs()
	watchCtx, stopWatch := context.WithCancel(ctx)
	conflicts := make(chan net.HardwareAddr, 1)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		h.watchConflicts(watchCtx, ifi.Index, ifi.HardwareAddr, conflicts)
	}()
	defer func() {
		// The address goes first: stepping down must not wait for the
		// watcher's read timeout.
		if err := h.nl.AddrDel(link, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			h.Logger.Warn("vip: removing address failed", "addr", h.Addr, "link", h.Link, "err", err)
		} else {
			h.Logger.Info("vip: released", "addr", h.Addr, "link", h.Link)
		}
		stopWatch()
		<-watched // Close may follow: the socket must be out of use
	}()
	pkt := garp(ifi.HardwareAddr, h.Addr.Addr())
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	announce := func() {
		if h.Allowed != nil && !h.Allowed() {
			h.Logger.Warn("vip: not announcing: this host may no longer hold the address", "addr", h.Addr)
			return
		}
		if err := unix.Sendto(h.fd, pkt, 0, to); err != nil {
			h.Logger.Warn("vip: gratuitous ARP failed", "addr", h.Addr, "link", h.Link, "err", err)
		}
	}
	h.Logger.Info("vip: holding", "addr", h.Addr, "link", h.Link)
	start := time.Now()
	next := 0               // index into h.Burst; past it, every h.Every
	var first time.Duration // announce at once when no burst is set
	if len(h.Burst) > 0 {
		first = h.Burst[0]
	}
	timer := time.NewTimer(first)
	defer timer.Stop()
	var defend <-chan time.Time // pending answer to a conflict
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			announce()
			next++
			if next < len(h.Burst) {
				timer.Reset(time.Until(start.Add(h.Burst[next])))
			} else {
				timer.Reset(h.Every)
			}
		case mac := <-conflicts:
			if defend == nil {
				h.Logger.Warn("vip: another host announced the address; answering if this host still holds it",
					"addr", h.Addr, "mac", mac.String(), "after", h.DefendAfter)
				defend = time.After(h.DefendAfter)
			}
		case <-defend:
			defend = nil
			announce()
		}
	}
}

// watchConflicts reports (without blocking) every ARP packet received on
// ifindex that gives h.Addr at a MAC other than own, until ctx ends.
func (h *Holder) watchConflicts(ctx context.Context, ifindex int, own net.HardwareAddr, out chan<- net.HardwareAddr) {
	// A read timeout lets the loop see ctx end; the socket is blocking.
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(h.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		h.Logger.Warn("vip: not watching for another host announcing the address", "addr", h.Addr, "err", err)
		return
	}
	buf := make([]byte, 128)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(h.fd, buf, 0)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				h.Logger.Warn("vip: reading ARP failed", "addr", h.Addr, "err", err)
				time.Sleep(time.Second)
			}
			continue
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Ifindex != ifindex || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if mac, ok := claims(buf[:n], h.Addr.Addr()); ok && !bytes.Equal(mac, own) {
			select {
			case out <- mac:
			default:
			}
		}
	}
}

// claims reports whether an Ethernet/IPv4 ARP packet (request or reply)
// gives ip as its sender address, and at which MAC.
func claims(p []byte, ip netip.Addr) (net.HardwareAddr, bool) {
	if len(p) < 28 || binary.BigEndian.Uint16(p[0:]) != 1 || binary.BigEndian.Uint16(p[2:]) != 0x0800 || p[4] != 6 || p[5] != 4 {
		return nil, false
	}
	if op := binary.BigEndian.Uint16(p[6:]); op != 1 && op != 2 {
		return nil, false
	}
	if netip.AddrFrom4([4]byte(p[14:18])) != ip {
		return nil, false
	}
	return net.HardwareAddr(bytes.Clone(p[8:14])), true
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
