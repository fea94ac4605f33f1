// Package netconf brings the host's network up at boot: loopback, NICs,
// carrier, then the kernel's ip= configuration or DHCP on every NIC with
// carrier, and keeps DHCP leases renewed in the background.
package netconf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/dhcpclient"
	"magestack/init/ipconfig"
)

// Options configures Up. Zero values take the documented defaults.
type Options struct {
	// Cmdline is the value of the kernel's ip= parameter; "" means DHCP
	// on every NIC with carrier.
	Cmdline string
	// Hostname is sent to DHCP servers (option 12); ip='s hostname field
	// wins when given.
	Hostname string
	Logger   *slog.Logger
	// CarrierTimeout bounds the wait for carrier on all NICs together
	// (default 10 s).
	CarrierTimeout time.Duration
	// LeaseTimeout bounds how long Up waits for DHCP leases (default 10 s);
	// the clients keep trying afterwards.
	LeaseTimeout time.Duration
	// ResolvConf is where DNS servers are written (default /etc/resolv.conf).
	ResolvConf string
	// Netns is the path of the network namespace to configure; "" is the
	// caller's. Tests use it; PID 1 leaves it empty.
	Netns string
	// DHCP tunes the clients (timeouts, backoff); Interface, Hostname,
	// Netns, Logger and OnEvent are filled in by Up.
	DHCP dhcpclient.Config
	// OnEvent, if set, is called after each DHCP event has been applied.
	OnEvent func(dhcpclient.Event)
}

// ErrLeasePending marks Up's error when some interface has no lease yet:
// the network is partly or not configured, DHCP keeps trying in the
// background, and the boot should continue. Do not call Up again.
var ErrLeasePending = errors.New("DHCP still trying in the background")

const (
	defaultCarrierTimeout = 10 * time.Second
	defaultLeaseTimeout   = 10 * time.Second
	defaultResolvConf     = "/etc/resolv.conf"
)

// Up configures the network and returns the live State. A nil error means
// every interface it chose is configured. Errors wrapping ErrLeasePending
// leave DHCP running; other errors are bad ip= values or netlink failures.
// Background work stops when ctx is cancelled; State.Wait waits for it.
func Up(ctx context.Context, opts Options) (*State, error) {
	if opts.CarrierTimeout <= 0 {
		opts.CarrierTimeout = defaultCarrierTimeout
	}
	if opts.LeaseTimeout <= 0 {
		opts.LeaseTimeout = defaultLeaseTimeout
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = defaultResolvConf
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	log := opts.Logger

	var errs []error
	cfg, err := ipconfig.Parse(opts.Cmdline)
	if err != nil {
		// Booting without network would leave the host unreachable: say
		// what is wrong and fall back to what an absent ip= means.
		log.Error(fmt.Sprintf("net: %v; falling back to DHCP on every NIC with carrier", err))
		errs = append(errs, err)
		cfg = ipconfig.Config{Mode: ipconfig.ModeDHCP}
	}
	if cfg.Hostname != "" {
		opts.Hostname = cfg.Hostname
	}

	h, err := newHandle(opts.Netns)
	if err != nil {
		return nil, err
	}
	st := newState(opts, cfg, h)
	defer st.closeWhenDone(ctx)

	if err := st.loopbackUp(); err != nil {
		// Not fatal for the uplink: keep going and report.
		log.Error("net: " + err.Error())
		errs = append(errs, err)
	}
	if cfg.Mode == ipconfig.ModeOff {
		log.Info("net: ip=off: only loopback configured")
		return st, errors.Join(errs...)
	}

	nics, err := st.candidates(cfg.Device)
	if err != nil {
		return st, errors.Join(append(errs, err)...)
	}
	withCarrier := st.waitCarrier(ctx, nics)

	switch cfg.Mode {
	case ipconfig.ModeStatic:
		err = st.applyStatic(nics, withCarrier)
	case ipconfig.ModeDHCP:
		err = st.startDHCP(ctx, nics, withCarrier)
	}
	if err != nil {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// newHandle opens a route-only netlink handle: netlink.NewHandle with no
// families also opens XFRM and netfilter sockets, which fail with
// EPROTONOSUPPORT on a kernel without those modules loaded.
func newHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("net: open netlink: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("net: open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("net: open netlink in %s: %w", path, err)
	}
	return h, nil
}

func (s *State) loopbackUp() error {
	lo, err := s.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find loopback: %w", err)
	}
	if err := s.h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring loopback up: %w", err)
	}
	return nil
}

// isNIC says whether a link is a NIC to configure: Ethernet-like, with a
// MAC, and not loopback or a software device magestack or the kernel made
// (bridges, tunnels, bonds, VLANs...). veth counts: it is what a NIC looks
// like inside a container or a test namespace.
func isNIC(l netlink.Link) bool {
	a := l.Attrs()
	if a.Name == "lo" || a.EncapType != "ether" || len(a.HardwareAddr) != 6 {
		return false
	}
	switch l.Type() {
	case "device", "veth":
		return true
	}
	return false
}

// candidates lists the NICs to consider, sorted by name, and sets them up.
func (s *State) candidates(device string) ([]netlink.Link, error) {
	var nics []netlink.Link
	if device != "" {
		l, err := s.h.LinkByName(device)
		if err != nil {
			return nil, fmt.Errorf("net: ip= names device %q: %w", device, err)
		}
		nics = []netlink.Link{l}
	} else {
		all, err := s.h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("net: list links: %w", err)
		}
		for _, l := range all {
			if isNIC(l) {
				nics = append(nics, l)
			}
		}
		slices.SortFunc(nics, func(a, b netlink.Link) int { return strings.Compare(a.Attrs().Name, b.Attrs().Name) })
	}
	if len(nics) == 0 {
		return nil, fmt.Errorf("net: no network interface found (only loopback)")
	}
	var names []string
	for _, l := range nics {
		names = append(names, l.Attrs().Name)
		if err := s.h.LinkSetUp(l); err != nil {
			s.log.Error(fmt.Sprintf("net: bring %s up: %v", l.Attrs().Name, err))
		}
		s.ensure(l.Attrs().Name)
	}
	s.log.Info("net: interfaces " + strings.Join(names, " "))
	return nics, nil
}

// waitCarrier polls until every NIC has carrier or the timeout passes, and
// logs one line per NIC. It returns the names with carrier.
func (s *State) waitCarrier(ctx context.Context, nics []netlink.Link) map[string]bool {
	start := time.Now()
	deadline := start.Add(s.opts.CarrierTimeout)
	up := map[string]bool{}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range nics {
			name := l.Attrs().Name
			if up[name] {
				continue
			}
			if s.hasCarrier(name) {
				up[name] = true
				s.setCarrier(name, true)
				s.log.Info(fmt.Sprintf("net: %s carrier up after %s", name, time.Since(start).Round(time.Millisecond)))
			}
		}
		if len(up) == len(nics) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	for _, l := range nics {
		if name := l.Attrs().Name; !up[name] {
			s.log.Warn(fmt.Sprintf("net: %s has no carrier after %s (cable or link down?)", name, s.opts.CarrierTimeout))
		}
	}
	return up
}

func (s *State) hasCarrier(name string) bool {
	l, err := s.h.LinkByName(name)
	if err != nil {
		return false
	}
	a := l.Attrs()
	// Some drivers report operstate "unknown" but do set LOWER_UP.
	return a.OperState == netlink.OperUp || (a.RawFlags&lowerUp != 0 && a.OperState != netlink.OperDown)
}

const lowerUp = 1 << 16 // IFF_LOWER_UP

// applyStatic configures ip=<client-ip>...: the named device, else the
// first NIC with carrier, else the first NIC.
func (s *State) applyStatic(nics []netlink.Link, carrier map[string]bool) error {
	cfg := s.cfg
	link := nics[0]
	if cfg.Device == "" {
		for _, l := range nics {
			if carrier[l.Attrs().Name] {
				link = l
				break
			}
		}
	}
	name := link.Attrs().Name
	if err := s.h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(cfg.Address)}); err != nil {
		return fmt.Errorf("net: add %s to %s: %w", cfg.Address, name, err)
	}
	var routes []dhcpclient.Route
	if cfg.Gateway.IsValid() {
		routes = append(routes, dhcpclient.Route{Dest: netip.MustParsePrefix("0.0.0.0/0"), Gateway: cfg.Gateway})
	}
	installed, err := s.replaceRoutes(link, nil, routes, cfg.Address.Addr())
	s.mu.Lock()
	is := s.ifaces[name]
	is.Mode = "static"
	is.Phase = "static"
	is.Address = cfg.Address
	is.Gateway = cfg.Gateway
	is.DNS = slices.Clone(cfg.DNS)
	is.routes = installed
	s.mu.Unlock()
	s.log.Info(fmt.Sprintf("net: static %s %s gateway=%v dns=%v", name, cfg.Address, cfg.Gateway, cfg.DNS))
	if err != nil {
		return err
	}
	if len(cfg.DNS) > 0 {
		return s.writeResolvConf()
	}
	return nil
}

// startDHCP runs a client on every NIC with carrier (or the device ip=
// names, or, with no carrier anywhere, every NIC in case a cable comes)
// and waits up to LeaseTimeout for each to be bound.
func (s *State) startDHCP(ctx context.Context, nics []netlink.Link, carrier map[string]bool) error {
	var chosen []string
	for _, l := range nics {
		if carrier[l.Attrs().Name] || s.cfg.Device != "" {
			chosen = append(chosen, l.Attrs().Name)
		}
	}
	var noCarrierErr error
	if len(chosen) == 0 {
		for _, l := range nics {
			chosen = append(chosen, l.Attrs().Name)
		}
		noCarrierErr = fmt.Errorf("net: no NIC has carrier after %s (%s)", s.opts.CarrierTimeout, strings.Join(chosen, ", "))
		s.log.Error(noCarrierErr.Error() + "; DHCP will keep trying on all of them in the background")
	}

	bound := map[string]chan struct{}{}
	for _, name := range chosen {
		ch := make(chan struct{})
		bound[name] = ch
		s.mu.Lock()
		s.ifaces[name].Mode = "dhcp"
		s.ifaces[name].Phase = "requesting"
		s.mu.Unlock()
		s.wg.Add(1)
		go s.runDHCP(ctx, name, ch)
	}

	if noCarrierErr != nil {
		// No cable anywhere: waiting for a lease cannot succeed, so do not
		// hold the boot any longer.
		return errors.Join(noCarrierErr, &pendingError{msg: fmt.Sprintf(
			"net: DHCP keeps trying on %s in the background", strings.Join(chosen, ", "))})
	}
	timer := time.NewTimer(s.opts.LeaseTimeout)
	defer timer.Stop()
	var missing []string
	for _, name := range chosen {
		select {
		case <-bound[name]:
			continue
		case <-ctx.Done():
		case <-timer.C:
		}
		// Timed out (or cancelled): collect everyone still unbound.
		for _, n := range chosen {
			select {
			case <-bound[n]:
			default:
				missing = append(missing, n)
			}
		}
		break
	}
	if len(missing) == 0 {
		return nil
	}
	msg := fmt.Sprintf("no DHCP lease on %s after %s; still trying in the background",
		strings.Join(missing, ", "), s.opts.LeaseTimeout)
	s.log.Error("net: " + msg)
	return &pendingError{msg: "net: " + msg}
}

// pendingError reads as its message alone and matches ErrLeasePending.
type pendingError struct{ msg string }

func (e *pendingError) Error() string        { return e.msg }
func (e *pendingError) Is(target error) bool { return target == ErrLeasePending }

// runDHCP keeps a DHCP client alive on one NIC until ctx ends. A panic in
// the client or in applying its events is reported and the client restarted.
func (s *State) runDHCP(ctx context.Context, name string, bound chan struct{}) {
	defer s.wg.Done()
	var once sync.Once
	signal := func() { once.Do(func() { close(bound) }) }
	backoff := time.Second
	for ctx.Err() == nil {
		err := s.runDHCPOnce(ctx, name, signal)
		if ctx.Err() != nil {
			return
		}
		s.setError(name, err)
		s.log.Error(fmt.Sprintf("net: DHCP client on %s stopped: %v; restarting in %s", name, err, backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (s *State) runDHCPOnce(ctx context.Context, name string, signal func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	cfg := s.opts.DHCP
	cfg.Interface = name
	cfg.Hostname = s.opts.Hostname
	cfg.Netns = s.opts.Netns
	cfg.Logger = s.log
	if s.cfg.Address.IsValid() {
		cfg.RequestedAddr = s.cfg.Address.Addr()
	}
	cfg.OnEvent = func(e dhcpclient.Event) {
		s.apply(e)
		if e.Kind == dhcpclient.EventBound || e.Kind == dhcpclient.EventRenewed || e.Kind == dhcpclient.EventRebound {
			signal()
		}
		if s.opts.OnEvent != nil {
			s.opts.OnEvent(e)
		}
	}
	c, err := dhcpclient.New(cfg)
	if err != nil {
		return err
	}
	return c.Run(ctx)
}
