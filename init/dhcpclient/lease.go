package dhcpclient

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Route is one classless static route (option 121). A zero Gateway means
// the destination is on-link.
type Route struct {
	Dest    netip.Prefix `json:"dest"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
}

// Lease is what a DHCP server granted, in the form netconf applies.
type Lease struct {
	Interface string       `json:"interface"`
	Address   netip.Prefix `json:"address"`
	// Gateway is the first router of option 3. Per RFC 3442 a client that
	// receives classless routes ignores option 3: Routes then win.
	Gateway  netip.Addr    `json:"gateway,omitzero"`
	Routes   []Route       `json:"routes,omitempty"`
	DNS      []netip.Addr  `json:"dns,omitempty"`
	Domain   string        `json:"domain,omitempty"`
	Search   []string      `json:"search,omitempty"`
	MTU      int           `json:"mtu,omitempty"`
	Server   netip.Addr    `json:"server"`
	Duration time.Duration `json:"duration"`
	T1       time.Duration `json:"t1"`
	T2       time.Duration `json:"t2"`
	// Acquired is when the ACK arrived; every timer counts from it.
	Acquired time.Time `json:"acquired"`

	ack *dhcpv4.DHCPv4
}

// RenewAt is T1: start unicasting renewals to the server.
func (l *Lease) RenewAt() time.Time { return l.Acquired.Add(l.T1) }

// RebindAt is T2: start broadcasting to any server.
func (l *Lease) RebindAt() time.Time { return l.Acquired.Add(l.T2) }

// Expiry is when the address must no longer be used.
func (l *Lease) Expiry() time.Time { return l.Acquired.Add(l.Duration) }

// DefaultLeaseTime is assumed when an ACK carries no lease time (option 51
// is mandatory in an ACK, but a client must not bind forever on a bad one).
const DefaultLeaseTime = time.Hour

// leaseFromACK turns an ACK into a Lease, checking what a client must have.
func leaseFromACK(ifname string, ack *dhcpv4.DHCPv4, now time.Time) (*Lease, error) {
	addr, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || addr.IsUnspecified() {
		return nil, fmt.Errorf("ACK from %v has no address (yiaddr %v)", ack.ServerIdentifier(), ack.YourIPAddr)
	}
	bits := 0
	if mask := ack.SubnetMask(); mask != nil {
		ones, size := mask.Size()
		if size != 32 {
			return nil, fmt.Errorf("ACK from %v has a non-contiguous subnet mask %v", ack.ServerIdentifier(), net.IP(mask))
		}
		bits = ones
	} else {
		bits = classfulBits(addr)
	}
	l := &Lease{
		Interface: ifname,
		Address:   netip.PrefixFrom(addr, bits),
		Domain:    ack.DomainName(),
		Acquired:  now,
		ack:       ack,
	}
	l.Server = toAddr(ack.ServerIdentifier())
	if rs := ack.Router(); len(rs) > 0 {
		l.Gateway = toAddr(rs[0])
	}
	for _, r := range ack.ClasslessStaticRoute() {
		if r == nil || r.Dest == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dest.IP.To4())
		if !ok {
			continue
		}
		ones, _ := r.Dest.Mask.Size()
		l.Routes = append(l.Routes, Route{Dest: netip.PrefixFrom(dst, ones).Masked(), Gateway: toAddr(r.Router)})
	}
	for _, d := range ack.DNS() {
		if a := toAddr(d); a.IsValid() {
			l.DNS = append(l.DNS, a)
		}
	}
	if s := ack.DomainSearch(); s != nil {
		l.Search = append(l.Search, s.Labels...)
	}
	if v := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(v) == 2 {
		l.MTU = int(v[0])<<8 | int(v[1])
	}

	l.Duration = ack.IPAddressLeaseTime(DefaultLeaseTime)
	if l.Duration <= 0 {
		l.Duration = DefaultLeaseTime
	}
	// RFC 2131 4.4.5 defaults; values the server sends are used only when
	// they keep T1 < T2 < lease.
	l.T1 = ack.IPAddressRenewalTime(l.Duration / 2)
	l.T2 = ack.IPAddressRebindingTime(l.Duration * 7 / 8)
	if l.T2 <= 0 || l.T2 >= l.Duration {
		l.T2 = l.Duration * 7 / 8
	}
	if l.T1 <= 0 || l.T1 >= l.T2 {
		l.T1 = min(l.Duration/2, l.T2)
	}
	return l, nil
}

func toAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// classfulBits is the mask to assume when a server omits option 1.
func classfulBits(a netip.Addr) int {
	switch first := a.As4()[0]; {
	case first < 128:
		return 8
	case first < 192:
		return 16
	default:
		return 24
	}
}
