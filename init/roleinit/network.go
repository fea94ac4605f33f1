package roleinit

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// waitNetwork brings loopback up and waits until the host has moved the
// role's veth end in, named it, given it its address and set it up.
func waitNetwork(ctx context.Context, ifname string, addr netip.Prefix, limit time.Duration) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if ifname == "" {
		return nil
	}
	if limit == 0 {
		limit = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	delay := time.Millisecond
	last := "interface not there yet"
	for {
		if ok, why := linkReady(ifname, addr); ok {
			return nil
		} else {
			last = why
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("network: %s not configured within %v: %s", ifname, limit, last)
		case <-time.After(delay):
		}
		// The host configures the link right after clone returns: poll
		// tightly at first, then back off.
		if delay < 5*time.Millisecond {
			delay += delay / 2
		}
	}
}

func linkReady(ifname string, want netip.Prefix) (bool, string) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, err.Error()
	}
	if l.Attrs().Flags&(1<<0) == 0 { // IFF_UP
		return false, "link is down"
	}
	if !want.IsValid() {
		return true, ""
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, err.Error()
	}
	for _, a := range addrs {
		if p, ok := netipPrefix(a); ok && p == want {
			return true, ""
		}
	}
	return false, fmt.Sprintf("address %s not assigned yet", want)
}

func netipPrefix(a netlink.Addr) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}
