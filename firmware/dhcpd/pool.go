package dhcpd

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Pool hands out addresses from a range in full-DHCP mode, remembering each
// MAC's address so a client keeps it across requests. Reservations pin a
// MAC to an address (hosts with a fixed address in the stack file).
type Pool struct {
	mu       sync.Mutex
	first    netip.Addr
	last     netip.Addr
	byMAC    map[string]lease
	byAddr   map[netip.Addr]string
	reserved map[string]netip.Addr
	declined map[netip.Addr]time.Time
	now      func() time.Time
}

type lease struct {
	addr    netip.Addr
	expires time.Time
}

// NewPool makes a pool for first..last inclusive.
func NewPool(first, last netip.Addr, reservations map[string]netip.Addr) (*Pool, error) {
	if !first.Is4() || !last.Is4() || last.Less(first) {
		return nil, fmt.Errorf("pool range %s-%s: want two IPv4 addresses, first ≤ last", first, last)
	}
	p := &Pool{first: first, last: last, byMAC: map[string]lease{}, byAddr: map[netip.Addr]string{},
		reserved: map[string]netip.Addr{}, declined: map[netip.Addr]time.Time{}, now: time.Now}
	for mac, a := range reservations {
		p.reserved[normMAC(mac)] = a
	}
	return p, nil
}

func normMAC(mac string) string {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return mac
	}
	return hw.String()
}

// Offer returns the address for mac without committing a lease beyond a
// short hold, preferring its reservation, then its previous address, then
// the requested one if free.
func (p *Pool) Offer(mac string, requested netip.Addr) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	mac = normMAC(mac)
	if a, ok := p.reserved[mac]; ok {
		return a, nil
	}
	if l, ok := p.byMAC[mac]; ok {
		return l.addr, nil
	}
	if requested.IsValid() && p.freeLocked(requested) {
		p.holdLocked(mac, requested, time.Minute)
		return requested, nil
	}
	for a := p.first; ; a = a.Next() {
		if p.freeLocked(a) {
			p.holdLocked(mac, a, time.Minute)
			return a, nil
		}
		if a == p.last {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("address pool %s-%s is exhausted", p.first, p.last)
}

// Commit confirms mac's lease on addr for d. It fails when addr is not the
// one this pool gave mac (the client must restart with DISCOVER: NAK).
func (p *Pool) Commit(mac string, addr netip.Addr, d time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mac = normMAC(mac)
	if a, ok := p.reserved[mac]; ok {
		if a != addr {
			return fmt.Errorf("%s is reserved %s, asked for %s", mac, a, addr)
		}
		return nil
	}
	if l, ok := p.byMAC[mac]; ok && l.addr == addr {
		p.holdLocked(mac, addr, d)
		return nil
	}
	if p.inRange(addr) && p.freeLocked(addr) {
		p.holdLocked(mac, addr, d)
		return nil
	}
	return fmt.Errorf("%s is not %s's address", addr, mac)
}

// Release frees mac's lease.
func (p *Pool) Release(mac string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	mac = normMAC(mac)
	if l, ok := p.byMAC[mac]; ok {
		delete(p.byAddr, l.addr)
		delete(p.byMAC, mac)
	}
}

// Decline marks addr as in use by someone else for a while.
func (p *Pool) Decline(mac string, addr netip.Addr) {
	p.Release(mac)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.declined[addr] = p.now().Add(10 * time.Minute)
}

func (p *Pool) inRange(a netip.Addr) bool {
	return a.Is4() && !a.Less(p.first) && !p.last.Less(a)
}

func (p *Pool) freeLocked(a netip.Addr) bool {
	if !p.inRange(a) {
		return false
	}
	if until, ok := p.declined[a]; ok && p.now().Before(until) {
		return false
	}
	for _, r := range p.reserved {
		if r == a {
			return false
		}
	}
	mac, ok := p.byAddr[a]
	if !ok {
		return true
	}
	if p.now().After(p.byMAC[mac].expires) {
		delete(p.byAddr, a)
		delete(p.byMAC, mac)
		return true
	}
	return false
}

func (p *Pool) holdLocked(mac string, a netip.Addr, d time.Duration) {
	if old, ok := p.byMAC[mac]; ok && old.addr != a {
		delete(p.byAddr, old.addr)
	}
	p.byMAC[mac] = lease{addr: a, expires: p.now().Add(d)}
	p.byAddr[a] = mac
}
