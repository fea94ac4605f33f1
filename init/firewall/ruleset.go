package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// TableName is the host's own nftables table. Nothing else in the kernel's
// ruleset is touched by magestack.
const TableName = "magestack"

// AllowSet is the named set of client prefixes that bypass the public rate
// limit; UpdateAllow edits it in place.
const AllowSet = "public_allow"

// ForbiddenSet is the named set of addresses roles may never reach: every
// host's address, the VIP, the pair links, the witness, fence devices and
// the provisioning server (see RoleForbidden).
const ForbiddenSet = "role_forbidden"

// MeterSet is the dynamic set holding one rate-limit state per public source.
const MeterSet = "public_meter"

// Ruleset is a pure description of the table inet magestack: what Build
// computes from the stack file, what Apply loads, and what Read decodes from
// the kernel. Render prints it in `nft list table` syntax.
type Ruleset struct {
	// Table names the inet table; empty: TableName (the host's).
	Table  string
	Sets   []Set
	Chains []Chain
}

// TableOrDefault is the table the ruleset lives in.
func (rs *Ruleset) TableOrDefault() string {
	if rs.Table == "" {
		return TableName
	}
	return rs.Table
}

// Set is a named set of IPv4 addresses.
type Set struct {
	Name     string
	Interval bool          // prefixes allowed ("flags interval")
	Dynamic  bool          // filled from the packet path ("flags dynamic")
	Timeout  time.Duration // element lifetime; 0 none
	Size     uint32        // maximum elements; 0 the kernel's default
	Elements []netip.Prefix
}

// Chain is a base chain of the table.
type Chain struct {
	Name     string
	Type     string // filter or nat
	Hook     string // input, forward, output, prerouting, postrouting
	Priority int    // 0 filter, -100 dstnat, 100 srcnat
	Policy   string // accept or drop
	Rules    []Rule
}

// Rule is a list of statements ending in a verdict (or a NAT statement),
// with an optional comment carried in the rule's user data.
type Rule struct {
	Stmts   []Stmt
	Comment string
}

// Stmt is one match or action of a rule. Each knows its nft text; the
// netlink encoding and decoding live in encode.go and decode.go.
type Stmt interface{ String() string }

// IfName matches the input (or output) interface name.
type IfName struct {
	Out  bool
	Name string
}

// CtState matches conntrack states (any of them).
type CtState struct{ States []string }

// IPAddr matches the IPv4 source (or destination) against a prefix (a /32
// is a plain address).
type IPAddr struct {
	Dst    bool
	Prefix netip.Prefix
}

// IPAddrs matches the IPv4 source (or destination) against an anonymous set
// of addresses.
type IPAddrs struct {
	Dst   bool
	Addrs []netip.Addr
}

// IPAddrSet matches the IPv4 source (or destination) against a named set.
type IPAddrSet struct {
	Dst bool
	Set string
}

// Ports matches the transport destination port (one, or an anonymous set).
type Ports struct {
	Proto string // tcp or udp
	Ports []uint16
}

// ICMPType matches ICMP (or ICMPv6) message types.
type ICMPType struct {
	V6    bool
	Types []uint8
}

// Limit is a token-bucket rate limit in packets per second; Over inverts it
// (matches once the rate is exceeded).
type Limit struct {
	Rate  uint64
	Burst uint32
	Over  bool
}

// Meter adds the packet's IPv4 source to a dynamic set, keeping one Limit
// per source; it matches when that source's limit matches.
type Meter struct {
	Set   string
	Limit Limit
}

// Counter counts packets and bytes; every rule has one.
type Counter struct{ Packets, Bytes uint64 }

// Verdict ends the rule: accept or drop.
type Verdict struct{ Kind string }

// LocalDst matches packets addressed to one of the host's own addresses
// (including the VIP): `fib daddr type local`.
type LocalDst struct{}

// Jump continues in another chain of the table (used by tests to inject a
// broken rule: a jump to a chain that does not exist).
type Jump struct{ Chain string }

// DNAT rewrites the IPv4 destination address (ports unchanged).
type DNAT struct{ To netip.Addr }

// Masquerade rewrites the source to the outgoing interface's address.
type Masquerade struct{}

func saddrWord(dst bool) string {
	if dst {
		return "daddr"
	}
	return "saddr"
}

func (s IfName) String() string {
	if s.Out {
		return fmt.Sprintf("oifname %q", s.Name)
	}
	return fmt.Sprintf("iifname %q", s.Name)
}

func (s CtState) String() string { return "ct state " + strings.Join(s.States, ",") }

func (s IPAddr) String() string {
	return "ip " + saddrWord(s.Dst) + " " + prefixText(s.Prefix)
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (s IPAddrs) String() string {
	addrs := slices.Clone(s.Addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	txt := make([]string, len(addrs))
	for i, a := range addrs {
		txt[i] = a.String()
	}
	return "ip " + saddrWord(s.Dst) + " { " + strings.Join(txt, ", ") + " }"
}

func (s IPAddrSet) String() string { return "ip " + saddrWord(s.Dst) + " @" + s.Set }

func (s Ports) String() string {
	ports := slices.Clone(s.Ports)
	slices.Sort(ports)
	txt := make([]string, len(ports))
	for i, p := range ports {
		txt[i] = fmt.Sprint(p)
	}
	return s.Proto + " dport " + braced(txt)
}

func braced(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return "{ " + strings.Join(items, ", ") + " }"
}

// icmpNames are nft's names of the ICMP types the ruleset uses.
var icmpNames = map[uint8]string{0: "echo-reply", 3: "destination-unreachable", 8: "echo-request", 11: "time-exceeded"}
var icmp6Names = map[uint8]string{1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded",
	128: "echo-request", 129: "echo-reply", 133: "nd-router-solicit", 134: "nd-router-advert",
	135: "nd-neighbor-solicit", 136: "nd-neighbor-advert"}

func (s ICMPType) String() string {
	types := slices.Clone(s.Types)
	slices.Sort(types)
	names, word := icmpNames, "icmp"
	if s.V6 {
		names, word = icmp6Names, "icmpv6"
	}
	txt := make([]string, len(types))
	for i, t := range types {
		if n, ok := names[t]; ok {
			txt[i] = n
		} else {
			txt[i] = fmt.Sprint(t)
		}
	}
	return word + " type " + braced(txt)
}

func (s Limit) String() string {
	var b strings.Builder
	b.WriteString("limit rate ")
	if s.Over {
		b.WriteString("over ")
	}
	fmt.Fprintf(&b, "%d/second", s.Rate)
	// nft omits the default burst of 5 packets.
	if s.Burst != 0 && s.Burst != 5 {
		fmt.Fprintf(&b, " burst %d packets", s.Burst)
	}
	return b.String()
}

func (s Meter) String() string {
	return fmt.Sprintf("add @%s { ip saddr %s }", s.Set, s.Limit)
}

func (s Counter) String() string {
	return fmt.Sprintf("counter packets %d bytes %d", s.Packets, s.Bytes)
}

func (s Verdict) String() string { return s.Kind }

func (LocalDst) String() string { return "fib daddr type local" }

func (s Jump) String() string { return "jump " + s.Chain }

func (s DNAT) String() string { return "dnat ip to " + s.To.String() }

func (Masquerade) String() string { return "masquerade" }

func (r Rule) String() string {
	parts := make([]string, 0, len(r.Stmts)+1)
	for _, s := range r.Stmts {
		parts = append(parts, s.String())
	}
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

// priorityName is how nft prints the standard chain priorities.
func priorityName(typ string, prio int) string {
	switch {
	case prio == 0 && typ == "filter":
		return "filter"
	case prio == -100 && typ == "nat":
		return "dstnat"
	case prio == 100 && typ == "nat":
		return "srcnat"
	}
	return fmt.Sprint(prio)
}

// durationText prints a timeout the way nft does (1m, 30s, 1h2m3s).
func durationText(d time.Duration) string {
	var b strings.Builder
	for _, u := range []struct {
		d time.Duration
		s string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.s)
			d -= n * u.d
		}
	}
	return b.String()
}

// Render prints the ruleset exactly as `nft list table inet magestack`
// prints it once loaded: the golden files, `firewall show` and the kernel
// round-trip test all compare this text.
func Render(rs *Ruleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.TableOrDefault())
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, s := range rs.Sets {
		sep()
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype ipv4_addr\n", s.Name)
		if s.Size != 0 {
			fmt.Fprintf(&b, "\t\tsize %d\n", s.Size)
		}
		var flags []string
		if s.Interval {
			flags = append(flags, "interval")
		}
		if s.Dynamic {
			flags = append(flags, "dynamic")
		}
		if s.Timeout != 0 {
			flags = append(flags, "timeout")
		}
		if len(flags) > 0 {
			fmt.Fprintf(&b, "\t\tflags %s\n", strings.Join(flags, ","))
		}
		if s.Timeout != 0 {
			fmt.Fprintf(&b, "\t\ttimeout %s\n", durationText(s.Timeout))
		}
		if len(s.Elements) > 0 {
			elems := slices.Clone(s.Elements)
			slices.SortFunc(elems, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
			txt := make([]string, len(elems))
			for i, e := range elems {
				txt[i] = prefixText(e)
			}
			writeElements(&b, txt)
		}
		b.WriteString("\t}\n")
	}
	for _, c := range rs.Chains {
		sep()
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy %s;\n", c.Type, c.Hook, priorityName(c.Type, c.Priority), c.Policy)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// writeElements wraps a named set's element list the way nft does for
// IPv4 addresses: two elements per line, continuation lines indented to
// the opening brace.
func writeElements(b *strings.Builder, txt []string) {
	b.WriteString("\t\telements = { ")
	for i, t := range txt {
		if i > 0 {
			if i%2 == 0 {
				b.WriteString(",\n\t\t\t     ")
			} else {
				b.WriteString(", ")
			}
		}
		b.WriteString(t)
	}
	b.WriteString(" }\n")
}

// ZeroCounters returns a copy of rs with every counter at zero, so live and
// desired rulesets compare on rules alone.
func ZeroCounters(rs *Ruleset) *Ruleset {
	out := &Ruleset{Table: rs.Table, Sets: slices.Clone(rs.Sets)}
	for _, c := range rs.Chains {
		c2 := c
		c2.Rules = make([]Rule, len(c.Rules))
		for i, r := range c.Rules {
			r2 := Rule{Comment: r.Comment, Stmts: make([]Stmt, len(r.Stmts))}
			for j, s := range r.Stmts {
				if _, ok := s.(Counter); ok {
					s = Counter{}
				}
				r2.Stmts[j] = s
			}
			c2.Rules[i] = r2
		}
		out.Chains = append(out.Chains, c2)
	}
	return out
}
