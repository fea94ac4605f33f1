// Package firewall generates, applies and inspects the host's nftables
// policy.
//
// Design decision: the fw role is realised on the host itself, as the
// nftables table `inet magestack` (filter, DNAT to lb, masquerade) plus the
// WireGuard endpoint `ms-vpn` (package vpn), not as a separate namespace
// owning the uplink. The host's own services (control API, cluster ports)
// are therefore guarded by the same table: the input chain drops everything
// from the public side except the VPN's UDP port, the API port is open to
// the VPN subnet only, and cluster ports only on the pair link and from the
// other hosts' addresses. Roles cannot reach the host at all (input from
// ms-int is dropped unless it belongs to a connection the host opened),
// nor, in forward, any address of the set role_forbidden: every host's
// public and pair-link address, the pair network, the VIP, the witness,
// the fence devices and the provisioning (config) server. That forward
// drop comes before egress and masquerade on purpose: a masqueraded role
// packet would reach a peer's or the witness's cluster ports from this
// host's own address, which they trust, and no rule there can tell.
//
// The ruleset is a pure description (Ruleset) computed by Build from the
// stack file and the roles' declared exposure (services.Lookup); Render
// prints it exactly as `nft list table inet magestack` does, which the
// kernel round-trip test checks. Apply loads it as ONE netlink batch:
// add table, delete table, add everything, so the batch is valid whether or
// not the table exists and the kernel commits all of it or none of it.
// UpdateAllow edits only the public_allow set. Read decodes the live table
// back into a Ruleset (for `firewall show`/`check`) without the nft binary.
//
// Role-to-role traffic between instances on the same bridge is bridged, not
// routed; it passes the inet forward chain through bridge netfilter
// (br_netfilter, net.bridge.bridge-nf-call-iptables=1), which ApplyForStack
// enables. VPN clients are recognised by their source subnet; the public
// interfaces drop any packet claiming a VPN source, so only ms-vpn (or a
// route behind it) can present one.
//
// Public traffic to 80/443 is DNATed only when addressed to the host
// itself (`fib daddr type local`: its own address or the VIP), to lb's
// internal address wherever lb runs (the internal network spans hosts).
// New public connections are rate-limited per source address through the
// dynamic set public_meter; sources in public_allow skip the limit.
// UpdateAllow edits that set in place in about a third of a millisecond.
//
// Limits: the internal network and the VPN are IPv4; on the IPv6 side the
// host accepts only neighbour discovery and rate-limited echo requests.
// Bridged traffic is not reverse-path filtered, so a role can send a packet
// with a forged source (another role's or a VPN address); the reply goes
// to the address's real owner, so such a connection cannot complete.
package firewall
