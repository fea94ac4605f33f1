package netconf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"magestack/init/dhcpclient"
	"magestack/init/ipconfig"
)

// State is the live network configuration Up made. It is safe for
// concurrent use; Snapshot is what the status API shows.
type State struct {
	opts Options
	cfg  ipconfig.Config
	h    *netlink.Handle
	log  *slog.Logger

	wg   sync.WaitGroup
	done chan struct{}

	mu     sync.Mutex
	ifaces map[string]*ifaceState
}

type ifaceState struct {
	InterfaceStatus
	routes []netlink.Route // routes this package installed on the link
}

// InterfaceStatus is one interface's configuration, as JSON.
type InterfaceStatus struct {
	Name    string `json:"name"`
	Mode    string `json:"mode,omitempty"` // "static" or "dhcp"; "" not configured
	Carrier bool   `json:"carrier"`
	// Phase: static, requesting, bound, renewed, rebound, expired, nak.
	Phase       string       `json:"phase,omitempty"`
	Address     netip.Prefix `json:"address,omitzero"`
	Gateway     netip.Addr   `json:"gateway,omitzero"`
	Routes      []string     `json:"routes,omitempty"`
	DNS         []netip.Addr `json:"dns,omitempty"`
	Domain      string       `json:"domain,omitempty"`
	Server      netip.Addr   `json:"dhcp_server,omitzero"`
	LeaseSecs   int64        `json:"lease_seconds,omitempty"`
	LeaseExpiry time.Time    `json:"lease_expiry,omitzero"`
	Bound       time.Time    `json:"bound,omitzero"`
	LastRenewal time.Time    `json:"last_renewal,omitzero"`
	LastEvent   string       `json:"last_event,omitempty"`
	LastError   string       `json:"last_error,omitempty"`
}

// Snapshot is a point-in-time copy of the State.
type Snapshot struct {
	Mode       ipconfig.Mode     `json:"mode"`
	IPConfig   string            `json:"ip,omitempty"` // the ip= value as given
	ResolvConf string            `json:"resolv_conf"`
	Interfaces []InterfaceStatus `json:"interfaces"`
}

func newState(opts Options, cfg ipconfig.Config, h *netlink.Handle) *State {
	return &State{
		opts:   opts,
		cfg:    cfg,
		h:      h,
		log:    opts.Logger,
		done:   make(chan struct{}),
		ifaces: map[string]*ifaceState{},
	}
}

// Snapshot copies the current state, interfaces sorted by name.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Mode: s.cfg.Mode, IPConfig: s.opts.Cmdline, ResolvConf: s.opts.ResolvConf}
	for _, is := range s.ifaces {
		st := is.InterfaceStatus
		st.DNS = slices.Clone(st.DNS)
		st.Routes = slices.Clone(st.Routes)
		snap.Interfaces = append(snap.Interfaces, st)
	}
	sort.Slice(snap.Interfaces, func(i, j int) bool { return snap.Interfaces[i].Name < snap.Interfaces[j].Name })
	return snap
}

// Interface returns one interface's status.
func (s *State) Interface(name string) (InterfaceStatus, bool) {
	for _, is := range s.Snapshot().Interfaces {
		if is.Name == name {
			return is, true
		}
	}
	return InterfaceStatus{}, false
}

// Wait returns once the context given to Up is cancelled and every
// background DHCP client has stopped.
func (s *State) Wait() { <-s.done }

// closeWhenDone releases the netlink handle after ctx ends and the
// clients have returned. Called once Up has started every goroutine.
func (s *State) closeWhenDone(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.wg.Wait()
		s.h.Close()
		close(s.done)
	}()
}

func (s *State) ensure(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ifaces[name] == nil {
		s.ifaces[name] = &ifaceState{InterfaceStatus: InterfaceStatus{Name: name}}
	}
}

func (s *State) setCarrier(name string, up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ifaces[name].Carrier = up
}

func (s *State) setError(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.ifaces[name].LastError = err.Error()
	}
}

// apply makes a DHCP event true on the system. Failures are logged and
// kept in the status; the client carries on either way.
func (s *State) apply(e dhcpclient.Event) {
	name := e.Interface
	link, err := s.h.LinkByName(name)
	if err != nil {
		s.record(name, e, fmt.Errorf("apply %s: find link: %w", e.Kind, err))
		return
	}
	s.mu.Lock()
	old := s.ifaces[name].routes
	s.mu.Unlock()

	var errs []error
	switch e.Kind {
	case dhcpclient.EventBound, dhcpclient.EventRenewed, dhcpclient.EventRebound:
		l := e.Lease
		if e.Previous != nil && e.Previous.Address != l.Address {
			if err := s.h.AddrDel(link, &netlink.Addr{IPNet: ipNet(e.Previous.Address)}); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("remove old address %s: %w", e.Previous.Address, err))
			}
		}
		if l.MTU >= 576 && l.MTU != link.Attrs().MTU {
			if err := s.h.LinkSetMTU(link, l.MTU); err != nil {
				errs = append(errs, fmt.Errorf("set MTU %d: %w", l.MTU, err))
			}
		}
		// AddrReplace also restores an address someone removed meanwhile.
		if err := s.h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(l.Address)}); err != nil {
			errs = append(errs, fmt.Errorf("add address %s: %w", l.Address, err))
		}
		installed, err := s.replaceRoutes(link, old, leaseRoutes(l), l.Address.Addr())
		if err != nil {
			errs = append(errs, err)
		}
		s.mu.Lock()
		is := s.ifaces[name]
		is.routes = installed
		is.Mode, is.Phase, is.Carrier = "dhcp", string(e.Kind), true
		is.Address, is.Gateway, is.DNS, is.Domain, is.Server = l.Address, l.Gateway, l.DNS, l.Domain, l.Server
		if len(l.Routes) > 0 {
			is.Gateway = netip.Addr{}
			for _, r := range l.Routes {
				if r.Dest.Bits() == 0 {
					is.Gateway = r.Gateway
				}
			}
		}
		is.Routes = routeStrings(l)
		is.LeaseSecs, is.LeaseExpiry = int64(l.Duration/time.Second), l.Expiry()
		if e.Kind == dhcpclient.EventBound {
			is.Bound = l.Acquired
		} else {
			is.LastRenewal = l.Acquired
		}
		s.mu.Unlock()
	case dhcpclient.EventExpired, dhcpclient.EventNAK:
		if e.Lease != nil {
			if _, err := s.replaceRoutes(link, old, nil, netip.Addr{}); err != nil {
				errs = append(errs, err)
			}
			if err := s.h.AddrDel(link, &netlink.Addr{IPNet: ipNet(e.Lease.Address)}); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("remove address %s: %w", e.Lease.Address, err))
			} else {
				s.log.Info(fmt.Sprintf("net: removed %s from %s (lease %s)", e.Lease.Address, name, e.Kind))
			}
		}
		s.mu.Lock()
		is := s.ifaces[name]
		is.routes = nil
		is.Phase = string(e.Kind)
		if e.Lease != nil {
			is.Address, is.Gateway, is.DNS, is.Domain, is.Routes = netip.Prefix{}, netip.Addr{}, nil, "", nil
			is.LeaseExpiry = time.Time{}
		}
		s.mu.Unlock()
	}
	if err := s.writeResolvConf(); err != nil {
		errs = append(errs, err)
	}
	var joined error
	if len(errs) > 0 {
		joined = fmt.Errorf("apply %s on %s: %v", e.Kind, name, errs)
	}
	s.record(name, e, joined)
}

func (s *State) record(name string, e dhcpclient.Event, err error) {
	s.mu.Lock()
	is := s.ifaces[name]
	is.LastEvent = string(e.Kind)
	if err != nil {
		is.LastError = err.Error()
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("net: " + err.Error())
	}
}

// leaseRoutes is what a lease asks to route. RFC 3442: when classless
// routes are present the router option is ignored.
func leaseRoutes(l *dhcpclient.Lease) []dhcpclient.Route {
	if len(l.Routes) > 0 {
		return l.Routes
	}
	if l.Gateway.IsValid() {
		return []dhcpclient.Route{{Dest: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: l.Gateway}}
	}
	return nil
}

func routeStrings(l *dhcpclient.Lease) []string {
	var out []string
	for _, r := range leaseRoutes(l) {
		if r.Gateway.IsValid() {
			out = append(out, fmt.Sprintf("%s via %s", r.Dest, r.Gateway))
		} else {
			out = append(out, fmt.Sprintf("%s on-link", r.Dest))
		}
	}
	return out
}

// replaceRoutes installs want on link and removes what it installed before
// that is no longer wanted. Each interface's routes get their own metric so
// two DHCP NICs can both hold a default route.
func (s *State) replaceRoutes(link netlink.Link, old []netlink.Route, want []dhcpclient.Route, src netip.Addr) ([]netlink.Route, error) {
	a := link.Attrs()
	proto := netlink.RouteProtocol(unix.RTPROT_DHCP)
	if s.cfg.Mode == ipconfig.ModeStatic {
		proto = unix.RTPROT_STATIC
	}
	var installed []netlink.Route
	var errs []string
	for _, w := range want {
		r := netlink.Route{
			LinkIndex: a.Index,
			Family:    netlink.FAMILY_V4,
			Protocol:  proto,
			Priority:  100 + a.Index,
			Table:     unix.RT_TABLE_MAIN,
		}
		if w.Dest.Bits() > 0 {
			r.Dst = ipNet(w.Dest)
		} else {
			r.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		}
		if src.IsValid() {
			r.Src = src.AsSlice()
		}
		if w.Gateway.IsValid() {
			r.Gw = w.Gateway.AsSlice()
			r.Scope = netlink.SCOPE_UNIVERSE
			if !s.onLink(link, w.Gateway, src) {
				r.Flags = int(netlink.FLAG_ONLINK)
			}
		} else {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := s.h.RouteReplace(&r); err != nil {
			errs = append(errs, fmt.Sprintf("route %s via %v: %v", w.Dest, w.Gateway, err))
			continue
		}
		installed = append(installed, r)
	}
	for _, o := range old {
		if !slices.ContainsFunc(installed, func(n netlink.Route) bool { return sameRoute(o, n) }) {
			if err := s.h.RouteDel(&o); err != nil && !isGone(err) {
				errs = append(errs, fmt.Sprintf("remove route %v: %v", o.Dst, err))
			}
		}
	}
	if len(errs) > 0 {
		return installed, fmt.Errorf("routes on %s: %s", a.Name, strings.Join(errs, "; "))
	}
	return installed, nil
}

// onLink says whether gw is inside a subnet configured on link.
func (s *State) onLink(link netlink.Link, gw, src netip.Addr) bool {
	addrs, err := s.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IPNet != nil && a.IPNet.Contains(gw.AsSlice()) {
			return true
		}
	}
	return false
}

func sameRoute(a, b netlink.Route) bool {
	return a.LinkIndex == b.LinkIndex && a.Priority == b.Priority &&
		a.Dst.String() == b.Dst.String() && a.Gw.Equal(b.Gw)
}

// isGone reports errors meaning "already removed".
func isGone(err error) bool {
	return errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}

// writeResolvConf writes every configured interface's DNS servers and
// search domains, interfaces in name order, atomically (rename).
func (s *State) writeResolvConf() error {
	s.mu.Lock()
	names := make([]string, 0, len(s.ifaces))
	for n := range s.ifaces {
		names = append(names, n)
	}
	sort.Strings(names)
	var servers []netip.Addr
	var search []string
	for _, n := range names {
		is := s.ifaces[n]
		for _, d := range is.DNS {
			if !slices.Contains(servers, d) {
				servers = append(servers, d)
			}
		}
		if is.Domain != "" && !slices.Contains(search, is.Domain) {
			search = append(search, is.Domain)
		}
	}
	s.mu.Unlock()

	var b strings.Builder
	b.WriteString("# written by magestack netconf\n")
	if len(search) > 0 {
		b.WriteString("search " + strings.Join(search, " ") + "\n")
	}
	for _, d := range servers {
		b.WriteString("nameserver " + d.String() + "\n")
	}
	path := s.opts.ResolvConf
	if cur, err := os.ReadFile(path); err == nil && string(cur) == b.String() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
