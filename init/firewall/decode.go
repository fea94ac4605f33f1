package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// errNoTable is returned by read when the table does not exist.
var errNoTable = fmt.Errorf("table inet %s does not exist", TableName)

// read decodes the live table inet magestack from the kernel into a
// Ruleset. Elements of dynamic sets (packet-path state) are left out.
// Expressions outside the vocabulary Build uses are reported, not guessed.
func read(conn *nftables.Conn) (*Ruleset, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == TableName {
			table = t
		}
	}
	if table == nil {
		return nil, errNoTable
	}
	sets, err := conn.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	rs := &Ruleset{}
	d := &decoder{anon: map[string][][]byte{}}
	for _, s := range sets {
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("set %s elements: %w", s.Name, err)
		}
		if s.Anonymous {
			keys := make([][]byte, 0, len(elems))
			for _, e := range elems {
				keys = append(keys, e.Key)
			}
			d.anon[s.Name] = keys
			continue
		}
		out := Set{Name: s.Name, Interval: s.Interval, Dynamic: s.Dynamic, Size: s.Size}
		if s.HasTimeout {
			out.Timeout = s.Timeout
		}
		if !s.Dynamic {
			if out.Elements, err = decodeElements(s.Interval, elems); err != nil {
				return nil, fmt.Errorf("set %s: %w", s.Name, err)
			}
		}
		rs.Sets = append(rs.Sets, out)
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name != TableName {
			continue
		}
		out := Chain{Name: c.Name, Type: string(c.Type), Policy: "accept"}
		if c.Priority != nil {
			out.Priority = int(*c.Priority)
		}
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			out.Policy = "drop"
		}
		if c.Hooknum != nil {
			for name, h := range hooks {
				if *h == *c.Hooknum {
					out.Hook = name
				}
			}
		}
		rules, err := conn.GetRules(table, c)
		if err != nil {
			return nil, fmt.Errorf("chain %s rules: %w", c.Name, err)
		}
		for _, r := range rules {
			stmts, err := d.rule(r.Exprs)
			if err != nil {
				return nil, fmt.Errorf("chain %s rule handle %d: %w", c.Name, r.Handle, err)
			}
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out.Rules = append(out.Rules, Rule{Stmts: stmts, Comment: comment})
		}
		rs.Chains = append(rs.Chains, out)
	}
	return rs, nil
}

// decodeElements turns a set's elements back into prefixes; interval sets
// come as start/end pairs (the end exclusive) in any order.
func decodeElements(interval bool, elems []nftables.SetElement) ([]netip.Prefix, error) {
	var out []netip.Prefix
	if !interval {
		for _, e := range elems {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				return nil, fmt.Errorf("element %x is not an address", e.Key)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
		return out, nil
	}
	sorted := slices.Clone(elems)
	// Adjacent intervals share a key: the end of [a, k) and the start of
	// [k, b). The end sorts first, or the start would pair with the wrong
	// end and open an interval to the end of the address space.
	slices.SortStableFunc(sorted, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		switch {
		case a.IntervalEnd && !b.IntervalEnd:
			return -1
		case b.IntervalEnd && !a.IntervalEnd:
			return 1
		}
		return 0
	})
	for i := 0; i < len(sorted); i++ {
		e := sorted[i]
		if e.IntervalEnd {
			continue // the 0.0.0.0 end marker, or an end already consumed
		}
		start, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			return nil, fmt.Errorf("element %x is not an address", e.Key)
		}
		end := netip.Addr{} // open to the end of the address space
		if i+1 < len(sorted) && sorted[i+1].IntervalEnd {
			end, _ = netip.AddrFromSlice(sorted[i+1].Key)
			i++
		}
		out = append(out, rangePrefixes(start, end)...)
	}
	return out, nil
}

// rangePrefixes covers [start, end) with the fewest prefixes; an invalid
// end means "to the last address".
func rangePrefixes(start, end netip.Addr) []netip.Prefix {
	s4 := start.As4()
	lo := uint64(binary.BigEndian.Uint32(s4[:]))
	hi := uint64(1) << 32
	if end.IsValid() {
		e4 := end.As4()
		hi = uint64(binary.BigEndian.Uint32(e4[:]))
	}
	var out []netip.Prefix
	for lo < hi {
		size := uint64(1)
		bits := 32
		for bits > 0 && lo%(size*2) == 0 && lo+size*2 <= hi {
			size *= 2
			bits--
		}
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(lo))
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), bits))
		lo += size
	}
	return out
}

type decoder struct {
	anon map[string][][]byte
}

var ctNames = []struct {
	bit  uint32
	name string
}{{1, "invalid"}, {2, "established"}, {4, "related"}, {8, "new"}, {64, "untracked"}}

var ifnameKeys = map[expr.MetaKey]bool{expr.MetaKeyIIFNAME: false, expr.MetaKeyOIFNAME: true}

// rule decodes the expression patterns the encoder produces.
func (d *decoder) rule(exprs []expr.Any) ([]Stmt, error) {
	var out []Stmt
	var l4 byte
	at := func(i int) expr.Any {
		if i < len(exprs) {
			return exprs[i]
		}
		return nil
	}
	for i := 0; i < len(exprs); i++ {
		switch x := exprs[i].(type) {
		case *expr.Meta:
			cmp, ok := at(i + 1).(*expr.Cmp)
			if !ok {
				return nil, fmt.Errorf("meta %v without compare", x.Key)
			}
			i++
			switch x.Key {
			case expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME:
				out = append(out, IfName{Out: ifnameKeys[x.Key], Name: string(bytes.TrimRight(cmp.Data, "\x00"))})
			case expr.MetaKeyNFPROTO:
				// protocol guard: implied by the payload match that follows
			case expr.MetaKeyL4PROTO:
				if len(cmp.Data) > 0 {
					l4 = cmp.Data[0]
				}
			default:
				return nil, fmt.Errorf("meta key %v not understood", x.Key)
			}
		case *expr.Ct:
			bw, ok1 := at(i + 1).(*expr.Bitwise)
			_, ok2 := at(i + 2).(*expr.Cmp)
			if x.Key != expr.CtKeySTATE || !ok1 || !ok2 || len(bw.Mask) != 4 {
				return nil, fmt.Errorf("ct expression not understood")
			}
			i += 2
			mask := binary.NativeEndian.Uint32(bw.Mask)
			var st []string
			for _, c := range ctNames {
				if mask&c.bit != 0 {
					st = append(st, c.name)
				}
			}
			out = append(out, CtState{st})
		case *expr.Payload:
			s, n, err := d.payload(x, at(i+1), at(i+2), l4)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
			i += n
		case *expr.Fib:
			cmp, ok := at(i + 1).(*expr.Cmp)
			if !ok || !x.FlagDADDR || !x.ResultADDRTYPE || len(cmp.Data) != 4 || binary.NativeEndian.Uint32(cmp.Data) != unix.RTN_LOCAL {
				return nil, fmt.Errorf("fib expression not understood")
			}
			i++
			out = append(out, LocalDst{})
		case *expr.Limit:
			out = append(out, limitStmt(x))
		case *expr.Counter:
			out = append(out, Counter{Packets: x.Packets, Bytes: x.Bytes})
		case *expr.Verdict:
			switch x.Kind {
			case expr.VerdictAccept:
				out = append(out, Verdict{"accept"})
			case expr.VerdictDrop:
				out = append(out, Verdict{"drop"})
			case expr.VerdictJump:
				out = append(out, Jump{x.Chain})
			default:
				return nil, fmt.Errorf("verdict %v not understood", x.Kind)
			}
		case *expr.Immediate:
			nat, ok := at(i + 1).(*expr.NAT)
			a, ok2 := netip.AddrFromSlice(x.Data)
			if !ok || !ok2 || nat.Type != expr.NATTypeDestNAT || nat.Family != unix.NFPROTO_IPV4 {
				return nil, fmt.Errorf("immediate not followed by an IPv4 dnat")
			}
			i++
			out = append(out, DNAT{a})
		case *expr.Masq:
			out = append(out, Masquerade{})
		default:
			return nil, fmt.Errorf("expression %T not understood", x)
		}
	}
	return out, nil
}

func limitStmt(x *expr.Limit) Limit {
	return Limit{Rate: x.Rate, Burst: x.Burst, Over: x.Over}
}

// payload decodes a payload load and what consumes it; n is how many of the
// following expressions were used.
func (d *decoder) payload(p *expr.Payload, next, next2 expr.Any, l4 byte) (Stmt, int, error) {
	switch {
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 4 && (p.Offset == 12 || p.Offset == 16):
		dst := p.Offset == 16
		switch n := next.(type) {
		case *expr.Cmp:
			a, _ := netip.AddrFromSlice(n.Data)
			return IPAddr{Dst: dst, Prefix: netip.PrefixFrom(a, 32)}, 1, nil
		case *expr.Bitwise:
			cmp, ok := next2.(*expr.Cmp)
			if !ok {
				return nil, 0, fmt.Errorf("address mask without compare")
			}
			ones := 0
			for _, b := range n.Mask {
				for b&0x80 != 0 {
					ones++
					b <<= 1
				}
			}
			a, _ := netip.AddrFromSlice(cmp.Data)
			return IPAddr{Dst: dst, Prefix: netip.PrefixFrom(a, ones)}, 2, nil
		case *expr.Lookup:
			if keys, ok := d.anon[n.SetName]; ok {
				addrs := make([]netip.Addr, len(keys))
				for i, k := range keys {
					addrs[i], _ = netip.AddrFromSlice(k)
				}
				return IPAddrs{Dst: dst, Addrs: addrs}, 1, nil
			}
			return IPAddrSet{Dst: dst, Set: n.SetName}, 1, nil
		case *expr.Dynset:
			if dst || len(n.Exprs) != 1 {
				return nil, 0, fmt.Errorf("dynset not understood")
			}
			lim, ok := n.Exprs[0].(*expr.Limit)
			if !ok {
				return nil, 0, fmt.Errorf("dynset without limit not understood")
			}
			return Meter{Set: n.SetName, Limit: limitStmt(lim)}, 1, nil
		}
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2:
		proto := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[l4]
		if proto == "" {
			return nil, 0, fmt.Errorf("port match without a tcp/udp guard")
		}
		switch n := next.(type) {
		case *expr.Cmp:
			return Ports{proto, []uint16{binary.BigEndian.Uint16(n.Data)}}, 1, nil
		case *expr.Lookup:
			var ports []uint16
			for _, k := range d.anon[n.SetName] {
				ports = append(ports, binary.BigEndian.Uint16(k))
			}
			return Ports{proto, ports}, 1, nil
		}
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 0 && p.Len == 1 && (l4 == unix.IPPROTO_ICMP || l4 == unix.IPPROTO_ICMPV6):
		v6 := l4 == unix.IPPROTO_ICMPV6
		switch n := next.(type) {
		case *expr.Cmp:
			return ICMPType{V6: v6, Types: []uint8{n.Data[0]}}, 1, nil
		case *expr.Lookup:
			var ts []uint8
			for _, k := range d.anon[n.SetName] {
				ts = append(ts, k[0])
			}
			return ICMPType{V6: v6, Types: ts}, 1, nil
		}
	}
	return nil, 0, fmt.Errorf("payload load base %d offset %d len %d not understood", p.Base, p.Offset, p.Len)
}

// Diff compares two rulesets as rendered text with counters zeroed and
// lists the differing lines: "-" only in want, "+" only in got.
func Diff(want, got *Ruleset) []string {
	w := strings.Split(Render(ZeroCounters(want)), "\n")
	g := strings.Split(Render(ZeroCounters(got)), "\n")
	return lineDiff(w, g)
}

// lineDiff is an LCS diff; rulesets are small enough for O(n·m).
func lineDiff(a, b []string) []string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			out = append(out, "+ "+strings.TrimSpace(b[j]))
			j++
		default:
			out = append(out, "- "+strings.TrimSpace(a[i]))
			i++
		}
	}
	return out
}
