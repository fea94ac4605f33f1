package firewall

import (
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"magestack/init/stackfile"
)

// RoleForbidden lists the IPv4 addresses and prefixes no role may reach,
// from the stack file plus extra: every host's public and pair-link
// address, the pair network, the VIP, the witness, each fence device and
// the config source's server (the provisioning server when hosts fetch
// from it). Names that are not address literals cannot be resolved in a
// pure build and are left out (docs/security.md says so). Prefixes inside
// others are folded, so the result loads into an interval set.
func RoleForbidden(stack *stackfile.Stack, extra []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	addAddr := func(a netip.Addr) {
		if a.IsValid() {
			out = append(out, netip.PrefixFrom(a.Unmap(), 32))
		}
	}
	for _, h := range stack.Hosts {
		addAddr(h.Address.Addr())
		if h.PairLink != nil {
			addAddr(h.PairLink.Address.Addr())
		}
		if h.Fence != nil {
			addAddr(literalHost(h.Fence.Address))
		}
	}
	out = append(out, stack.PairNet)
	addAddr(stack.Public.VIP.Addr())
	addAddr(literalHost(stack.Witness))
	addAddr(literalHost(stack.Config.Source))
	out = append(out, extra...)
	return foldPrefixes(out)
}

// literalHost returns the IP literal a device or source address names: a
// URL's host, host:port, or a bare address. Paths (a QMP socket) and DNS
// names give the zero Addr.
func literalHost(s string) netip.Addr {
	s = strings.TrimSpace(strings.TrimPrefix(s, "git+"))
	if s == "" {
		return netip.Addr{}
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return netip.Addr{}
		}
		s = u.Hostname()
	} else if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// foldPrefixes keeps the valid IPv4 prefixes, masked, sorted, without
// duplicates or prefixes covered by another (two CIDR prefixes either nest
// or are disjoint, so this leaves no overlap).
func foldPrefixes(in []netip.Prefix) []netip.Prefix {
	var ps []netip.Prefix
	for _, p := range in {
		if p.IsValid() && p.Addr().Is4() {
			ps = append(ps, p.Masked())
		}
	}
	// Widest first, so a covering prefix is kept before what it covers.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Contains(p.Addr()) && q.Bits() <= p.Bits() }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// ServerPrefixes returns, as /32 prefixes, the IPv4 literals the given
// URLs or host[:port] strings name (the config and image servers from the
// kernel command line: the provisioning network's servers), for
// HostView.RoleForbidden. Empty strings and names are skipped.
func ServerPrefixes(sources ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range sources {
		if a := literalHost(s); a.Is4() || a.Is4In6() {
			out = append(out, netip.PrefixFrom(a.Unmap(), 32))
		}
	}
	return out
}
