package roleenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

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
