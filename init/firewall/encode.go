package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Conntrack state bits (nf_conntrack_common.h).
var ctBits = map[string]uint32{"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}

var hooks = map[string]*nftables.ChainHook{
	"input": nftables.ChainHookInput, "forward": nftables.ChainHookForward, "output": nftables.ChainHookOutput,
	"prerouting": nftables.ChainHookPrerouting, "postrouting": nftables.ChainHookPostrouting,
}

// queue adds the whole table to conn's pending batch. The caller flushes.
func queue(conn *nftables.Conn, rs *Ruleset) error {
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: rs.TableOrDefault()}
	// Add-then-delete makes the delete valid whether or not the table
	// exists, so the batch never needs a prior read and stays atomic.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)

	named := map[string]*nftables.Set{}
	for _, s := range rs.Sets {
		set := &nftables.Set{
			Table: table, Name: s.Name, KeyType: nftables.TypeIPAddr,
			Interval: s.Interval, Dynamic: s.Dynamic, HasTimeout: s.Timeout != 0, Timeout: s.Timeout, Size: s.Size,
		}
		elems, err := setElements(s.Interval, s.Elements)
		if err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		first := elems[:min(len(elems), elemChunk)]
		if err := conn.AddSet(set, first); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		if err := addElements(conn, set, elems[len(first):]); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		named[s.Name] = set
	}
	for _, c := range rs.Chains {
		hook, ok := hooks[c.Hook]
		if !ok {
			return fmt.Errorf("chain %s: unknown hook %q", c.Name, c.Hook)
		}
		prio := nftables.ChainPriority(c.Priority)
		policy := nftables.ChainPolicyAccept
		if c.Policy == "drop" {
			policy = nftables.ChainPolicyDrop
		}
		chain := conn.AddChain(&nftables.Chain{
			Name: c.Name, Table: table, Type: nftables.ChainType(c.Type),
			Hooknum: hook, Priority: &prio, Policy: &policy,
		})
		for i, r := range c.Rules {
			e := &encoder{conn: conn, table: table, named: named}
			for _, s := range r.Stmts {
				if err := e.stmt(s); err != nil {
					return fmt.Errorf("chain %s rule %d (%s): %w", c.Name, i+1, r, err)
				}
			}
			nr := &nftables.Rule{Table: table, Chain: chain, Exprs: e.exprs}
			if r.Comment != "" {
				nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
			}
			conn.AddRule(nr)
		}
	}
	return nil
}

// elemChunk bounds the elements per netlink message: the element list is
// one nested attribute whose length field is 16 bits, and google/nftables
// does not split it; past 64 KiB the length wraps and the kernel reads a
// truncated (or garbled) list.
const elemChunk = 1024

// addElements queues elems in messages of at most elemChunk elements.
func addElements(conn *nftables.Conn, set *nftables.Set, elems []nftables.SetElement) error {
	for len(elems) > 0 {
		n := min(len(elems), elemChunk)
		if err := conn.SetAddElements(set, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// deleteElements is addElements for removal.
func deleteElements(conn *nftables.Conn, set *nftables.Set, elems []nftables.SetElement) error {
	for len(elems) > 0 {
		n := min(len(elems), elemChunk)
		if err := conn.SetDeleteElements(set, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// setElements encodes prefixes for a named set; interval sets hold
// [start, end) pairs, the end being the address after the prefix.
func setElements(interval bool, prefixes []netip.Prefix) ([]nftables.SetElement, error) {
	ps := slices.Clone(prefixes)
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	out := make([]nftables.SetElement, 0, 2*len(ps))
	if !interval {
		for _, p := range ps {
			if !p.IsSingleIP() {
				return nil, fmt.Errorf("%s: prefixes need an interval set", p)
			}
			out = append(out, nftables.SetElement{Key: p.Addr().AsSlice()})
		}
		return out, nil
	}
	// One backing array for every key: 10,000 prefixes would otherwise be
	// 20,000 small allocations.
	keys := make([]byte, 0, 8*len(ps))
	key := func(a netip.Addr) []byte {
		b := a.As4()
		keys = append(keys, b[:]...)
		return keys[len(keys)-4 : len(keys) : len(keys)]
	}
	for i, p := range ps {
		p = p.Masked()
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("%s is not IPv4", p)
		}
		if i > 0 && ps[i-1].Overlaps(p) {
			return nil, fmt.Errorf("%s overlaps %s", p, ps[i-1])
		}
		out = append(out, nftables.SetElement{Key: key(p.Addr())})
		if end, ok := prefixEnd(p); ok {
			out = append(out, nftables.SetElement{Key: key(end), IntervalEnd: true})
		}
	}
	return out, nil
}

// prefixEnd is the first address after p; ok is false when p reaches the
// end of the address space (the interval is then open-ended).
func prefixEnd(p netip.Prefix) (netip.Addr, bool) {
	last := p.Addr()
	for b := 0; b < 32-p.Bits(); b++ {
		s := last.As4()
		v := binary.BigEndian.Uint32(s[:]) | 1<<b
		binary.BigEndian.PutUint32(s[:], v)
		last = netip.AddrFrom4(s)
	}
	next := last.Next()
	return next, next.IsValid()
}

// encoder turns one rule's statements into expressions, adding the
// protocol guards nft adds implicitly: a payload load without
// `meta nfproto`/`meta l4proto` would read IPv6 or UDP headers as if they
// were IPv4 or TCP.
type encoder struct {
	conn    *nftables.Conn
	table   *nftables.Table
	named   map[string]*nftables.Set
	exprs   []expr.Any
	nfproto byte
	l4proto byte
}

func (e *encoder) add(x ...expr.Any) { e.exprs = append(e.exprs, x...) }

func (e *encoder) needNfproto(p byte) {
	if e.nfproto == p {
		return
	}
	e.nfproto = p
	e.add(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
}

func (e *encoder) needL4proto(p byte) {
	if e.l4proto == p {
		return
	}
	e.l4proto = p
	e.add(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
}

// ifname pads to IFNAMSIZ: the kernel compares all 16 bytes.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func addrOffset(dst bool) uint32 {
	if dst {
		return 16
	}
	return 12
}

// anonSet adds a constant anonymous set to the batch and returns it.
func (e *encoder) anonSet(keyType nftables.SetDatatype, keys [][]byte) (*nftables.Set, error) {
	if len(keys) > elemChunk {
		return nil, fmt.Errorf("%d elements in one inline set (at most %d)", len(keys), elemChunk)
	}
	set := &nftables.Set{Table: e.table, Anonymous: true, Constant: true, KeyType: keyType}
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: k}
	}
	if err := e.conn.AddSet(set, elems); err != nil {
		return nil, err
	}
	return set, nil
}

func (e *encoder) lookup(set *nftables.Set) {
	e.add(&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
}

func (e *encoder) stmt(s Stmt) error {
	switch s := s.(type) {
	case IfName:
		key := expr.MetaKeyIIFNAME
		if s.Out {
			key = expr.MetaKeyOIFNAME
		}
		e.add(&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(s.Name)})
	case CtState:
		var mask uint32
		for _, st := range s.States {
			bit, ok := ctBits[st]
			if !ok {
				return fmt.Errorf("unknown ct state %q", st)
			}
			mask |= bit
		}
		e.add(&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)})
	case IPAddr:
		if !s.Prefix.Addr().Is4() {
			return fmt.Errorf("%s is not IPv4", s.Prefix)
		}
		e.needNfproto(unix.NFPROTO_IPV4)
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(s.Dst), Len: 4})
		p := s.Prefix.Masked()
		if !p.IsSingleIP() {
			mask := netip.PrefixFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Bits()).Masked().Addr().AsSlice()
			e.add(&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
		}
		e.add(&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
	case IPAddrs:
		e.needNfproto(unix.NFPROTO_IPV4)
		keys := make([][]byte, len(s.Addrs))
		for i, a := range s.Addrs {
			if !a.Is4() {
				return fmt.Errorf("%s is not IPv4", a)
			}
			keys[i] = a.AsSlice()
		}
		set, err := e.anonSet(nftables.TypeIPAddr, keys)
		if err != nil {
			return err
		}
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(s.Dst), Len: 4})
		e.lookup(set)
	case IPAddrSet:
		set, ok := e.named[s.Set]
		if !ok {
			// Kept by name so a broken reference fails in the kernel, inside
			// the batch, like any other invalid rule.
			set = &nftables.Set{Table: e.table, Name: s.Set}
		}
		e.needNfproto(unix.NFPROTO_IPV4)
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(s.Dst), Len: 4})
		e.lookup(set)
	case Ports:
		proto := byte(unix.IPPROTO_TCP)
		if s.Proto == "udp" {
			proto = unix.IPPROTO_UDP
		} else if s.Proto != "tcp" {
			return fmt.Errorf("unknown protocol %q", s.Proto)
		}
		e.needL4proto(proto)
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if len(s.Ports) == 1 {
			e.add(&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(s.Ports[0])})
			break
		}
		keys := make([][]byte, len(s.Ports))
		for i, p := range s.Ports {
			keys[i] = binaryutil.BigEndian.PutUint16(p)
		}
		set, err := e.anonSet(nftables.TypeInetService, keys)
		if err != nil {
			return err
		}
		e.lookup(set)
	case ICMPType:
		nf, l4, dt := byte(unix.NFPROTO_IPV4), byte(unix.IPPROTO_ICMP), nftables.TypeICMPType
		if s.V6 {
			nf, l4, dt = unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6, nftables.TypeICMP6Type
		}
		e.needNfproto(nf)
		e.needL4proto(l4)
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1})
		if len(s.Types) == 1 {
			e.add(&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{s.Types[0]}})
			break
		}
		keys := make([][]byte, len(s.Types))
		for i, t := range s.Types {
			keys[i] = []byte{t}
		}
		set, err := e.anonSet(dt, keys)
		if err != nil {
			return err
		}
		e.lookup(set)
	case Limit:
		e.add(limitExpr(s))
	case Meter:
		set, ok := e.named[s.Set]
		if !ok {
			set = &nftables.Set{Table: e.table, Name: s.Set}
		}
		e.needNfproto(unix.NFPROTO_IPV4)
		e.add(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_ADD,
				Exprs: []expr.Any{limitExpr(s.Limit)}})
	case Counter:
		e.add(&expr.Counter{Packets: s.Packets, Bytes: s.Bytes})
	case Verdict:
		switch s.Kind {
		case "accept":
			e.add(&expr.Verdict{Kind: expr.VerdictAccept})
		case "drop":
			e.add(&expr.Verdict{Kind: expr.VerdictDrop})
		default:
			return fmt.Errorf("unknown verdict %q", s.Kind)
		}
	case LocalDst:
		e.add(&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
	case Jump:
		e.add(&expr.Verdict{Kind: expr.VerdictJump, Chain: s.Chain})
	case DNAT:
		if !s.To.Is4() {
			return fmt.Errorf("dnat to %s: not IPv4", s.To)
		}
		e.add(&expr.Immediate{Register: 1, Data: s.To.AsSlice()},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1})
	case Masquerade:
		e.add(&expr.Masq{})
	default:
		return fmt.Errorf("unsupported statement %T", s)
	}
	return nil
}

func limitExpr(l Limit) *expr.Limit {
	return &expr.Limit{Type: expr.LimitTypePkts, Rate: l.Rate, Over: l.Over, Unit: expr.LimitTimeSecond, Burst: l.Burst}
}
