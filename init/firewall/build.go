package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"magestack/init/overlay"
	"magestack/init/stackfile"
	"magestack/services"
)

// HostView is what Build needs to know about the host it runs on, beyond
// the stack file.
type HostView struct {
	// PublicIfaces are the uplinks (the public side).
	PublicIfaces []string
	// InternalBridge is the roles' bridge, "ms-int".
	InternalBridge string
	// VPNIface is the WireGuard interface, "ms-vpn".
	VPNIface string
	// PairIfaces are dedicated pair links; the cluster ports are accepted on
	// them.
	PairIfaces []string
	// LBAddr is lb's current internal address; zero: lb1's fixed address.
	LBAddr netip.Addr
	// APIPort is the host's TCP control API port, reachable from the VPN
	// only; 0: the API is a unix socket only.
	APIPort uint16
	// ClusterPorts are the host's cluster ports (raft, heartbeats),
	// accepted on PairIfaces and from the other hosts' static addresses.
	ClusterPorts []services.Port
	// HostName names this host in the stack (excluded from the peers).
	HostName string
	// RoleForbidden are addresses beyond the stack file's that roles must
	// never reach (e.g. the netboot server the host was told of on its
	// command line); they join the role_forbidden set.
	RoleForbidden []netip.Prefix
}

// Defaults for the policy.
const (
	DefaultBridge   = "ms-int"
	DefaultVPNIface = "ms-vpn"
	// icmpRate limits echo requests to the host, per second.
	icmpRate  = 10
	icmpBurst = 20
	// meterTimeout is how long an idle source's rate-limit state lives.
	meterTimeout = time.Minute
	meterSize    = 65535
)

// Build computes the ruleset for stack as seen by host. It is pure: the
// same inputs always give the same Ruleset, and nothing touches the kernel.
// Errors name the stack-file field (or host setting) at fault.
func Build(stack *stackfile.Stack, host HostView) (*Ruleset, error) {
	if stack == nil {
		return nil, errors.New("firewall: no stack")
	}
	if host.InternalBridge == "" {
		host.InternalBridge = DefaultBridge
	}
	if host.VPNIface == "" {
		host.VPNIface = DefaultVPNIface
	}
	if err := check(stack, host); err != nil {
		return nil, err
	}
	insts, err := stack.Instances()
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	addrs := map[string][]netip.Addr{} // role → instance addresses
	for _, in := range insts {
		addrs[in.Role] = append(addrs[in.Role], in.Addr)
	}
	if host.LBAddr.IsValid() {
		if !host.LBAddr.Is4() || !stack.Internal.Contains(host.LBAddr) {
			return nil, fmt.Errorf("firewall: lb address %s is not inside internal %s", host.LBAddr, stack.Internal)
		}
		if len(addrs["lb"]) > 0 {
			addrs["lb"] = []netip.Addr{host.LBAddr}
		}
	}

	rs := &Ruleset{}
	allow := slices.Clone(stack.Public.Allow)
	for i, p := range allow {
		allow[i] = p.Masked()
	}
	rs.Sets = append(rs.Sets, Set{Name: AllowSet, Interval: true, Elements: allow})
	rs.Sets = append(rs.Sets, Set{Name: ForbiddenSet, Interval: true, Elements: RoleForbidden(stack, host.RoleForbidden)})
	limited := stack.Public.RateLimit > 0
	if limited {
		rs.Sets = append(rs.Sets, Set{Name: MeterSet, Dynamic: true, Timeout: meterTimeout, Size: meterSize})
	}

	vpnSrc := IPAddr{Prefix: stack.VPN.Subnet.Masked()}
	var input, forward, prerouting, postrouting []Rule
	base := []Rule{
		rule("", CtState{[]string{"established", "related"}}, Verdict{"accept"}),
		rule("", CtState{[]string{"invalid"}}, Verdict{"drop"}),
	}
	input = append(input, rule("", IfName{Name: "lo"}, Verdict{"accept"}))
	input = append(input, base...)
	// Roles are hostile: nothing they send is for the host itself, on any
	// of its addresses (bridge, public, VIP, pair link). Dropping by
	// interface, before any rule that trusts a source address, also stops
	// a role forging a peer's or the witness's address on the bridge to
	// send one-way UDP (heartbeats, VXLAN) to the host.
	input = append(input, rule("roles never reach the host", IfName{Name: host.InternalBridge}, Verdict{"drop"}))
	// Nothing from the public side may claim a VPN address: the VPN subnet
	// is what opens the management ports.
	for _, pub := range host.PublicIfaces {
		input = append(input, rule("spoofed vpn source", IfName{Name: pub}, vpnSrc, Verdict{"drop"}))
	}
	input = append(input,
		rule("ping", ICMPType{Types: []uint8{8}}, Limit{Rate: icmpRate, Burst: icmpBurst}, Verdict{"accept"}),
		rule("ipv6 neighbour discovery", ICMPType{V6: true, Types: []uint8{133, 134, 135, 136}}, Verdict{"accept"}),
		rule("ping6", ICMPType{V6: true, Types: []uint8{128}}, Limit{Rate: icmpRate, Burst: icmpBurst}, Verdict{"accept"}),
	)
	for _, pub := range host.PublicIfaces {
		input = append(input, rule("wireguard", IfName{Name: pub}, Ports{"udp", []uint16{stack.VPN.Port}}, Verdict{"accept"}))
	}
	if host.APIPort != 0 {
		input = append(input, rule("vpn -> host api", vpnSrc, Ports{"tcp", []uint16{host.APIPort}}, Verdict{"accept"}))
	}
	if peers := overlay.PeerAddrs(stack, host.HostName); len(peers) > 0 && len(stack.Hosts) > 1 {
		input = append(input, rule("internal network from peer hosts", addrMatch(false, peers), Ports{"udp", []uint16{overlay.Port}}, Verdict{"accept"}))
	}
	if len(host.ClusterPorts) > 0 {
		byProto := portsByProto(host.ClusterPorts)
		for _, pair := range host.PairIfaces {
			for _, proto := range []string{"tcp", "udp"} {
				if ps := byProto[proto]; len(ps) > 0 {
					input = append(input, rule("cluster on pair link", IfName{Name: pair}, Ports{proto, ps}, Verdict{"accept"}))
				}
			}
		}
		var peers []netip.Addr
		for _, h := range stack.Hosts {
			if h.Name != host.HostName && h.Address.IsValid() && h.Address.Addr().Is4() {
				peers = append(peers, h.Address.Addr())
			}
		}
		// The witness votes and may lead: it dials the hosts' raft and
		// cluster RPC ports like a peer host does.
		if w, err := netip.ParseAddrPort(stack.Witness); err == nil && w.Addr().Is4() && !slices.Contains(peers, w.Addr()) {
			peers = append(peers, w.Addr())
		}
		if len(peers) > 0 {
			for _, proto := range []string{"tcp", "udp"} {
				if ps := byProto[proto]; len(ps) > 0 {
					input = append(input, rule("cluster from peer hosts and witness", addrMatch(false, peers), Ports{proto, ps}, Verdict{"accept"}))
				}
			}
		}
	}

	forward = append(forward, base...)
	forward = append(forward, roleForbiddenRules(stack, host)...)
	for _, pub := range host.PublicIfaces {
		forward = append(forward, rule("spoofed vpn source", IfName{Name: pub}, vpnSrc, Verdict{"drop"}))
	}
	// Public ports: DNAT in prerouting, then allow-list, rate limit and
	// accept in forward (after DNAT the destination is the role instance).
	publicPorts := map[uint16]string{}
	for _, role := range stackfile.RoleNames() {
		def, _ := services.Lookup(role)
		if len(def.Public) == 0 || len(addrs[role]) == 0 {
			continue
		}
		to := addrs[role][0]
		byProto := portsByProto(def.Public)
		for _, proto := range []string{"tcp", "udp"} {
			ps := byProto[proto]
			if len(ps) == 0 {
				continue
			}
			for _, p := range ps {
				if other, dup := publicPorts[p]; dup {
					return nil, fmt.Errorf("firewall: public port %s/%d claimed by both %s and %s", proto, p, other, role)
				}
				publicPorts[p] = role
			}
			dst := IPAddr{Dst: true, Prefix: netip.PrefixFrom(to, 32)}
			for _, pub := range host.PublicIfaces {
				in := IfName{Name: pub}
				prerouting = append(prerouting, rule("public -> "+role, in, LocalDst{}, Ports{proto, ps}, DNAT{to}))
				forward = append(forward, rule("public allow-list -> "+role, in, dst, Ports{proto, ps}, IPAddrSet{Set: AllowSet}, Verdict{"accept"}))
				if limited {
					lim := Limit{Rate: uint64(stack.Public.RateLimit), Burst: uint32(stack.Public.RateLimit), Over: true}
					forward = append(forward, rule("public rate limit", in, CtState{[]string{"new"}}, dst, Ports{proto, ps}, Meter{MeterSet, lim}, Verdict{"drop"}))
				}
				forward = append(forward, rule("public -> "+role, in, dst, Ports{proto, ps}, Verdict{"accept"}))
			}
		}
	}
	// VPN → management ports of each role.
	for _, role := range stackfile.RoleNames() {
		def, _ := services.Lookup(role)
		if len(def.Management) == 0 || len(addrs[role]) == 0 {
			continue
		}
		byProto := portsByProto(def.Management)
		for _, proto := range []string{"tcp", "udp"} {
			if ps := byProto[proto]; len(ps) > 0 {
				forward = append(forward, rule("vpn -> "+role, vpnSrc, addrMatch(true, addrs[role]), Ports{proto, ps}, Verdict{"accept"}))
			}
		}
	}
	// Role to role, from the roles' declared needs; all else is dropped by
	// the policy.
	for _, role := range stackfile.RoleNames() {
		def, _ := services.Lookup(role)
		if len(addrs[role]) == 0 {
			continue
		}
		for _, need := range def.Needs {
			if len(addrs[need.Role]) == 0 {
				continue
			}
			ports := need.Ports
			if need.Caches {
				for _, p := range stack.CachePorts() {
					ports = append(slices.Clone(ports), services.Port{Proto: "tcp", Port: p, Name: "cache"})
				}
			}
			byProto := portsByProto(ports)
			for _, proto := range []string{"tcp", "udp"} {
				if ps := byProto[proto]; len(ps) > 0 {
					forward = append(forward, rule(role+" -> "+need.Role, addrMatch(false, addrs[role]), addrMatch(true, addrs[need.Role]), Ports{proto, ps}, Verdict{"accept"}))
				}
			}
		}
	}
	internal := IPAddr{Prefix: stack.Internal.Masked()}
	for _, pub := range host.PublicIfaces {
		forward = append(forward, rule("roles -> internet", IfName{Name: host.InternalBridge}, IfName{Out: true, Name: pub}, internal, Verdict{"accept"}))
		postrouting = append(postrouting, rule("roles egress", IfName{Out: true, Name: pub}, internal, Masquerade{}))
	}

	rs.Chains = []Chain{
		{Name: "input", Type: "filter", Hook: "input", Priority: 0, Policy: "drop", Rules: input},
		{Name: "forward", Type: "filter", Hook: "forward", Priority: 0, Policy: "drop", Rules: forward},
		{Name: "output", Type: "filter", Hook: "output", Priority: 0, Policy: "accept"},
		{Name: "prerouting", Type: "nat", Hook: "prerouting", Priority: -100, Policy: "accept", Rules: prerouting},
		{Name: "postrouting", Type: "nat", Hook: "postrouting", Priority: 100, Policy: "accept", Rules: postrouting},
	}
	return rs, nil
}

// roleForbiddenRules drop role traffic to the cluster's own machines before
// anything can accept it. This is what keeps a role's packets off the
// peers' and the witness's cluster ports: once masqueraded, they would
// arrive from this host's address, which those ports trust, and the peer
// cannot tell them apart. Matching the interface catches every role on the
// bridge (local or over the overlay); matching the internal source catches
// role traffic entering by any other path.
func roleForbiddenRules(stack *stackfile.Stack, host HostView) []Rule {
	const why = "roles never reach hosts, witness, pair link, fence, provisioning"
	dst := IPAddrSet{Dst: true, Set: ForbiddenSet}
	return []Rule{
		rule(why, IfName{Name: host.InternalBridge}, dst, Verdict{"drop"}),
		rule(why, IPAddr{Prefix: stack.Internal.Masked()}, dst, Verdict{"drop"}),
	}
}

// rule builds a rule with a counter placed just before its final action,
// where nft puts it.
func rule(comment string, stmts ...Stmt) Rule {
	n := len(stmts)
	out := make([]Stmt, 0, n+1)
	out = append(out, stmts[:n-1]...)
	out = append(out, Counter{}, stmts[n-1])
	return Rule{Stmts: out, Comment: comment}
}

func addrMatch(dst bool, addrs []netip.Addr) Stmt {
	if len(addrs) == 1 {
		return IPAddr{Dst: dst, Prefix: netip.PrefixFrom(addrs[0], 32)}
	}
	return IPAddrs{Dst: dst, Addrs: addrs}
}

func portsByProto(ports []services.Port) map[string][]uint16 {
	out := map[string][]uint16{}
	for _, p := range ports {
		if !slices.Contains(out[p.Proto], p.Port) {
			out[p.Proto] = append(out[p.Proto], p.Port)
		}
	}
	for _, ps := range out {
		slices.Sort(ps)
	}
	return out
}

// maxIfName is IFNAMSIZ minus the terminating NUL.
const maxIfName = 15

// check rejects configurations the firewall cannot express, naming the
// field. The stack file's own validation runs before; these are the
// firewall's additional rules.
func check(stack *stackfile.Stack, host HostView) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("firewall: "+format, a...)) }

	in := stack.Internal
	switch {
	case !in.IsValid():
		bad("internal: subnet is not set")
	case !in.Addr().Is4():
		bad("internal: %s is not an IPv4 subnet", in)
	}
	vpn := stack.VPN.Subnet
	switch {
	case !vpn.IsValid():
		bad("vpn.subnet: not set")
	case !vpn.Addr().Is4():
		bad("vpn.subnet: %s is not an IPv4 subnet", vpn)
	case in.IsValid() && vpn.Overlaps(in):
		bad("vpn.subnet: %s overlaps internal %s", vpn, in)
	}
	if stack.PairNet.IsValid() {
		for _, o := range []struct {
			name string
			p    netip.Prefix
		}{{"internal", in}, {"vpn.subnet", vpn}} {
			if o.p.IsValid() && stack.PairNet.Overlaps(o.p) {
				bad("pairnet: %s overlaps %s %s", stack.PairNet, o.name, o.p)
			}
		}
	}
	if stack.VPN.Port == 0 {
		bad("vpn.port: must be in 1..65535")
	}
	if stack.Public.RateLimit < -1 {
		bad("public.ratelimit: %d is not a rate (use -1 to disable)", stack.Public.RateLimit)
	}
	for i, p := range stack.Public.Allow {
		if !p.IsValid() || !p.Addr().Is4() {
			bad("public.allow[%d]: %s is not an IPv4 address or prefix", i, p)
		}
	}
	for name := range stack.Roles {
		if _, ok := services.Lookup(name); !ok {
			bad("roles.%s: unknown role", name)
		}
	}
	for _, role := range services.Names() {
		def, _ := services.Lookup(role)
		checkPorts := func(what string, ps []services.Port) {
			for _, p := range ps {
				if p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
					bad("services %s %s: bad port %s/%d", role, what, p.Proto, p.Port)
				}
			}
		}
		checkPorts("public", def.Public)
		checkPorts("management", def.Management)
		for _, n := range def.Needs {
			if _, ok := services.Lookup(n.Role); !ok {
				bad("services %s needs: unknown role %q", role, n.Role)
			}
			checkPorts("needs "+n.Role, n.Ports)
		}
	}
	if len(host.PublicIfaces) == 0 {
		bad("host: no public interface")
	}
	ifaces := append(append(slices.Clone(host.PublicIfaces), host.PairIfaces...), host.InternalBridge, host.VPNIface)
	for _, n := range ifaces {
		if n == "" || len(n) > maxIfName {
			bad("host: interface name %q must be 1..%d bytes", n, maxIfName)
		}
	}
	for _, p := range host.ClusterPorts {
		if p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
			bad("host: bad cluster port %s/%d", p.Proto, p.Port)
		}
	}
	return errors.Join(errs...)
}
