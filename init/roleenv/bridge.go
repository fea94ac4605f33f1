package roleenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EnsureBridge makes sure the internal bridge exists in ns (netns.None():
// the caller's), holds addr (the host's bridge address with the internal
// prefix length) and is up. It is idempotent.
func EnsureBridge(ns netns.NsHandle, name string, addr netip.Prefix) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("bridge %s: netlink: %w", name, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge %s: create: %w%s", name, err, moduleHint(err, "bridge"))
		}
		if l, err = h.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("bridge %s: %w", name, err)
	case l.Type() != "bridge":
		return fmt.Errorf("bridge %s: a %s link of that name exists", name, l.Type())
	}
	have, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("bridge %s: addresses: %w", name, err)
	}
	present := false
	for _, a := range have {
		if p, ok := netipPrefix(a); ok && p == addr {
			present = true
		}
	}
	if !present {
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(addr)}); err != nil {
			return fmt.Errorf("bridge %s: address %s: %w", name, addr, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bridge %s: up: %w", name, err)
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func netipPrefix(a netlink.Addr) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

// moduleHint explains "operation not supported" from link creation: the
// kernel lacks the link type's module.
func moduleHint(err error, module string) string {
	if errors.Is(err, unix.EOPNOTSUPP) {
		return " (load the " + module + " kernel module)"
	}
	return ""
}

// EnableForwarding turns on IPv4 forwarding in ns (netns.None(): the
// caller's), so public traffic DNATed to lb and the roles' own egress can
// cross from the uplink to the internal bridge. PID 1 applies the firewall
// (default drop on forward) before roles, so this opens nothing the policy
// does not allow. The sysctl belongs to the namespace the file is opened
// in, hence the thread switch.
func EnableForwarding(ns netns.NsHandle) error {
	write := func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}
	if !ns.IsOpen() {
		if err := write(); err != nil {
			return fmt.Errorf("enable IPv4 forwarding: %w", err)
		}
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- write()
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}
