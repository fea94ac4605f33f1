package firewall

import (
	"errors"
	"fmt"
	"net/netip"

	"magestack/init/stackfile"
	"magestack/services"
)

// WitnessTable is the witness's own table. The witness runs on a machine
// magestack does not own, so it never touches the host's table name nor
// anything else in that machine's ruleset.
const WitnessTable = "magestack_witness"

// BuildWitness computes the witness's policy: its cluster ports accept
// the stack's hosts (every hosts[].address) and nothing else; loopback and
// established/related traffic pass. The chain's policy is accept, so the
// rest of the machine (its SSH, its own tables) is left to whoever manages
// it: in nftables a packet must pass every base chain on its hook, so a
// drop policy here would firewall the whole machine.
func BuildWitness(stack *stackfile.Stack, ports []services.Port) (*Ruleset, error) {
	if stack == nil {
		return nil, errors.New("firewall: witness: no stack")
	}
	if len(ports) == 0 {
		return nil, errors.New("firewall: witness: no cluster ports")
	}
	var hosts []netip.Addr
	for _, h := range stack.Hosts {
		if a := h.Address.Addr(); a.Is4() {
			hosts = append(hosts, a)
		}
	}
	if len(hosts) == 0 {
		return nil, errors.New("firewall: witness: no host has a static IPv4 address (hosts[].address) to accept")
	}
	byProto := portsByProto(ports)
	for proto := range byProto {
		if proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("firewall: witness: bad cluster port protocol %q", proto)
		}
	}
	input := []Rule{
		rule("", IfName{Name: "lo"}, Verdict{"accept"}),
		rule("", CtState{[]string{"established", "related"}}, Verdict{"accept"}),
	}
	for _, proto := range []string{"tcp", "udp"} {
		if ps := byProto[proto]; len(ps) > 0 {
			input = append(input, rule("cluster from the hosts", addrMatch(false, hosts), Ports{proto, ps}, Verdict{"accept"}))
		}
	}
	// Without an nfproto guard these match IPv6 too: no member speaks
	// IPv6 to the witness, so IPv6 on the cluster ports is refused.
	for _, proto := range []string{"tcp", "udp"} {
		if ps := byProto[proto]; len(ps) > 0 {
			input = append(input, rule("cluster ports: hosts only", Ports{proto, ps}, Verdict{"drop"}))
		}
	}
	return &Ruleset{Table: WitnessTable, Chains: []Chain{
		{Name: "input", Type: "filter", Hook: "input", Priority: 0, Policy: "accept", Rules: input},
	}}, nil
}
