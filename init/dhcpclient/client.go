// Package dhcpclient is a DHCPv4 client for one interface, built on
// insomniacslk/dhcp's nclient4: DORA with bounded exchanges and backoff,
// then the lease life cycle of RFC 2131 4.4.5 (renew at T1 by unicast,
// rebind at T2 by broadcast, re-DORA on NAK or expiry). It configures
// nothing itself: every change is reported as an Event for netconf to apply.
package dhcpclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"

	"magestack/init/nsdo"
)

// EventKind names a lease transition.
type EventKind string

const (
	EventBound   EventKind = "bound"   // a new lease after DORA (first or again)
	EventRenewed EventKind = "renewed" // the server extended the lease (RENEWING)
	EventRebound EventKind = "rebound" // some server extended it (REBINDING)
	EventExpired EventKind = "expired" // no server answered before expiry: stop using the address
	EventNAK     EventKind = "nak"     // a server refused the address: stop using it
)

// Event is one lease transition. For expired and nak, Lease is the lease that
// was lost (nil for a NAK during DORA); for the others it is the new lease.
type Event struct {
	Kind      EventKind
	Interface string
	Lease     *Lease
	// Previous is the lease this one replaces, if any (its address may differ).
	Previous *Lease
	// Message is the server's option 56 text for a NAK.
	Message string
}

// Config describes the client for one interface. Zero durations take the
// defaults noted on each field.
type Config struct {
	Interface string
	// Hostname is sent as option 12 when set.
	Hostname string
	// ClientID is option 61; nil sends type 1 (Ethernet) + the MAC.
	ClientID []byte
	// RequestedAddr asks for this address (option 50) in DISCOVER.
	RequestedAddr netip.Addr

	// ExchangeTimeout is the first wait for a reply within one exchange;
	// it doubles on each of ExchangeTries sends (default 1 s, 3 tries:
	// one exchange is bounded by 1+2+4 = 7 s).
	ExchangeTimeout time.Duration
	ExchangeTries   int
	// InitialBackoff and MaxBackoff bound the pause between failed DORA
	// rounds; it doubles with ±25% jitter (defaults 1 s and 30 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MinRetryInterval is the floor of the RENEWING/REBINDING retry interval,
	// which is otherwise half the time left to T2/expiry (RFC 2131 4.4.5;
	// default 60 s, never past the phase's end).
	MinRetryInterval time.Duration
	// ReleaseOnStop sends DHCPRELEASE when Run's context ends.
	ReleaseOnStop bool

	// Netns is the path of the network namespace the interface lives in;
	// "" is the caller's. Every socket is opened there.
	Netns string
	// OnEvent receives every transition, synchronously: Run waits for it,
	// so the address is applied before timers move on.
	OnEvent func(Event)
	Logger  *slog.Logger
}

// Client runs DHCP on one interface.
type Client struct {
	cfg Config
	hw  net.HardwareAddr
	log *slog.Logger
}

// New checks the interface exists and has an Ethernet address.
func New(cfg Config) (*Client, error) {
	if cfg.Interface == "" {
		return nil, errors.New("dhcp: no interface given")
	}
	if cfg.ExchangeTimeout <= 0 {
		cfg.ExchangeTimeout = time.Second
	}
	if cfg.ExchangeTries <= 0 {
		cfg.ExchangeTries = 3
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxBackoff < cfg.InitialBackoff {
		cfg.MaxBackoff = cfg.InitialBackoff
	}
	if cfg.MinRetryInterval <= 0 {
		cfg.MinRetryInterval = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log.With("interface", cfg.Interface)}
	err := nsdo.DoPath(cfg.Netns, func() error {
		ifc, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return err
		}
		c.hw = ifc.HardwareAddr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dhcp on %s: %w", cfg.Interface, err)
	}
	if len(c.hw) != 6 {
		return nil, fmt.Errorf("dhcp on %s: no Ethernet hardware address (%v)", cfg.Interface, c.hw)
	}
	if c.cfg.ClientID == nil {
		c.cfg.ClientID = append([]byte{byte(iana.HWTypeEthernet)}, c.hw...)
	}
	return c, nil
}

// Run obtains a lease and keeps it until ctx ends, reporting every change
// through OnEvent. It returns ctx's error; it never gives up on its own.
func (c *Client) Run(ctx context.Context) error {
	var lease *Lease
	for {
		if lease == nil {
			l, err := c.Acquire(ctx)
			if err != nil {
				return err
			}
			lease = l
			c.log.Info(fmt.Sprintf("dhcp: bound %s %s lease=%s", c.cfg.Interface, l.Address, l.Duration),
				"server", l.Server, "gateway", l.Gateway, "t1", l.T1, "t2", l.T2)
			c.emit(Event{Kind: EventBound, Lease: l})
		}
		next, kind, msg := c.keep(ctx, lease)
		if ctx.Err() != nil {
			if c.cfg.ReleaseOnStop && lease != nil && time.Now().Before(lease.Expiry()) {
				c.release(lease)
			}
			return ctx.Err()
		}
		switch kind {
		case EventRenewed, EventRebound:
			if next.Address != lease.Address {
				// The server moved us: treat it as a new binding.
				c.log.Warn(fmt.Sprintf("dhcp: %s address changed from %s to %s on %s", kind, lease.Address, next.Address, c.cfg.Interface))
				kind = EventBound
			}
			c.log.Info(fmt.Sprintf("dhcp: %s %s %s lease=%s", kind, c.cfg.Interface, next.Address.Addr(), next.Duration),
				"server", next.Server)
			c.emit(Event{Kind: kind, Lease: next, Previous: lease})
			lease = next
		case EventNAK:
			c.log.Warn(fmt.Sprintf("dhcp: NAK for %s on %s; restarting discovery", lease.Address, c.cfg.Interface), "message", msg)
			c.emit(Event{Kind: EventNAK, Lease: lease, Message: msg})
			lease = nil
		case EventExpired:
			c.log.Warn(fmt.Sprintf("dhcp: lease for %s on %s expired with no answer from any server; removing it and restarting discovery", lease.Address, c.cfg.Interface))
			c.emit(Event{Kind: EventExpired, Lease: lease})
			lease = nil
		}
	}
}

func (c *Client) emit(e Event) {
	e.Interface = c.cfg.Interface
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(e)
	}
}

// Acquire runs DORA until a lease is granted or ctx ends. Each round is
// bounded; failed rounds back off exponentially with jitter.
func (c *Client) Acquire(ctx context.Context) (*Lease, error) {
	backoff := c.cfg.InitialBackoff
	for attempt := 1; ; attempt++ {
		l, err := c.dora(ctx)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var nak *nclient4.ErrNak
		if errors.As(err, &nak) {
			c.emit(Event{Kind: EventNAK, Message: nak.Nak.Message()})
		}
		wait := jitter(backoff)
		c.log.Warn(fmt.Sprintf("dhcp: no lease on %s yet (attempt %d): %v; retrying in %s", c.cfg.Interface, attempt, err, wait.Round(time.Millisecond)))
		if !sleep(ctx, wait) {
			return nil, ctx.Err()
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// keep holds lease through RENEWING and REBINDING. It returns the extended
// lease with EventRenewed/EventRebound, or EventNAK / EventExpired.
func (c *Client) keep(ctx context.Context, lease *Lease) (*Lease, EventKind, string) {
	if !sleepUntil(ctx, lease.RenewAt()) {
		return nil, "", ""
	}
	phases := []struct {
		kind EventKind
		end  time.Time
		try  func(context.Context, *Lease) (*Lease, error)
	}{
		{EventRenewed, lease.RebindAt(), c.renew},
		{EventRebound, lease.Expiry(), c.rebind},
	}
	for _, ph := range phases {
		for time.Now().Before(ph.end) {
			attemptCtx, cancel := context.WithDeadline(ctx, ph.end)
			next, err := ph.try(attemptCtx, lease)
			cancel()
			if err == nil {
				return next, ph.kind, ""
			}
			if ctx.Err() != nil {
				return nil, "", ""
			}
			var nak *nclient4.ErrNak
			if errors.As(err, &nak) {
				return nil, EventNAK, nak.Nak.Message()
			}
			wait := retryInterval(time.Until(ph.end), c.cfg.MinRetryInterval)
			then := fmt.Sprintf("retrying in %s", wait.Round(time.Millisecond))
			if wait <= 0 {
				then = map[EventKind]string{EventRenewed: "T2 reached, rebinding", EventRebound: "lease ends"}[ph.kind]
			}
			c.log.Warn(fmt.Sprintf("dhcp: %s of %s on %s failed: %v; %s",
				map[EventKind]string{EventRenewed: "renewal", EventRebound: "rebinding"}[ph.kind],
				lease.Address.Addr(), c.cfg.Interface, err, then))
			if !sleep(ctx, wait) {
				return nil, "", ""
			}
		}
	}
	return nil, EventExpired, ""
}

// retryInterval is RFC 2131's "one-half of the remaining time", with a
// floor so a long phase is not hammered, but never past the phase's end.
func retryInterval(remaining, floor time.Duration) time.Duration {
	if remaining <= 0 {
		return 0
	}
	return min(max(remaining/2, floor), remaining)
}

// jitter spreads d by ±25% so hosts rebooted together do not retry in step.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d*3/4 + rand.N(d/2+1)
}

// newXID draws a transaction id. It uses math/rand/v2, whose generator the
// Go runtime seeds from the kernel's AT_RANDOM auxv bytes at exec: it never
// blocks. crypto/rand (and nclient4's own xid source) call getrandom(2),
// which blocks, or spins, until the kernel's CRNG is initialised: early in
// boot on old kernels that can take minutes. Debian's 6.1 kernel seeds the
// CRNG early with jitter entropy, so it would be fine there, but PID 1 must
// not depend on it. An xid only has to match replies, not be secret.
func newXID() dhcpv4.TransactionID {
	var x dhcpv4.TransactionID
	v := rand.Uint32()
	x[0], x[1], x[2], x[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return x
}

// message builds a request without dhcpv4.New, which draws its xid from
// getrandom (see newXID).
func (c *Client) message(t dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		ClientHWAddr:  c.hw,
		TransactionID: newXID(),
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		Options:       make(dhcpv4.Options),
	}
	m.UpdateOption(dhcpv4.OptMessageType(t))
	m.UpdateOption(dhcpv4.OptClientIdentifier(c.cfg.ClientID))
	if t != dhcpv4.MessageTypeRelease {
		m.UpdateOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize))
		if c.cfg.Hostname != "" {
			m.UpdateOption(dhcpv4.OptHostName(c.cfg.Hostname))
		}
		m.UpdateOption(dhcpv4.OptParameterRequestList(
			dhcpv4.OptionSubnetMask,
			dhcpv4.OptionRouter,
			dhcpv4.OptionDomainNameServer,
			dhcpv4.OptionDomainName,
			dhcpv4.OptionDNSDomainSearchList,
			dhcpv4.OptionInterfaceMTU,
			dhcpv4.OptionClasslessStaticRoute,
			dhcpv4.OptionIPAddressLeaseTime,
			dhcpv4.OptionRenewTimeValue,
			dhcpv4.OptionRebindingTimeValue,
		))
	}
	for _, mod := range mods {
		mod(m)
	}
	return m
}

// rawClient opens a packet socket on the interface for one exchange. The
// socket sees every IPv4 packet on the link, so it lives only as long as
// the exchange: the caller must Close it.
func (c *Client) rawClient(opts ...nclient4.ClientOpt) (*nclient4.Client, error) {
	var conn net.PacketConn
	err := nsdo.DoPath(c.cfg.Netns, func() error {
		var err error
		conn, err = nclient4.NewRawUDPConn(c.cfg.Interface, nclient4.ClientPort)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %s: %w", c.cfg.Interface, err)
	}
	return c.wrap(conn, opts...)
}

func (c *Client) wrap(conn net.PacketConn, opts ...nclient4.ClientOpt) (*nclient4.Client, error) {
	opts = append([]nclient4.ClientOpt{
		nclient4.WithTimeout(c.cfg.ExchangeTimeout),
		nclient4.WithRetry(c.cfg.ExchangeTries),
	}, opts...)
	cl, err := nclient4.NewWithConn(conn, c.hw, opts...)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return cl, nil
}

// dora runs one DISCOVER/OFFER/REQUEST/ACK round.
func (c *Client) dora(ctx context.Context) (*Lease, error) {
	cl, err := c.rawClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	var mods []dhcpv4.Modifier
	if c.cfg.RequestedAddr.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(c.cfg.RequestedAddr.AsSlice()))))
	}
	discover := c.message(dhcpv4.MessageTypeDiscover, mods...)
	offer, err := cl.SendAndRead(ctx, nclient4.DefaultServers, discover, nclient4.IsMessageType(dhcpv4.MessageTypeOffer))
	if err != nil {
		return nil, fmt.Errorf("DISCOVER: %w", noAnswer(err))
	}
	server := offer.ServerIdentifier()
	if server == nil || offer.YourIPAddr == nil || offer.YourIPAddr.IsUnspecified() {
		return nil, fmt.Errorf("OFFER without server identifier or address from %v", offer.ServerIPAddr)
	}
	// SELECTING: broadcast, ciaddr zero, naming the offer and its server.
	request := c.message(dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	)
	ack, err := cl.SendAndRead(ctx, nclient4.DefaultServers, request, nclient4.IsAll(
		nclient4.IsCorrectServer(server),
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)))
	if err != nil {
		return nil, fmt.Errorf("REQUEST %v from %v: %w", offer.YourIPAddr, server, noAnswer(err))
	}
	if ack.MessageType() == dhcpv4.MessageTypeNak {
		return nil, &nclient4.ErrNak{Offer: offer, Nak: ack}
	}
	return leaseFromACK(c.cfg.Interface, ack, time.Now())
}

// renew sends a RENEWING request by unicast from the leased address to the
// server that granted it, through an ordinary UDP socket (no packet socket
// needed once the address is configured).
func (c *Client) renew(ctx context.Context, lease *Lease) (*Lease, error) {
	var conn net.PacketConn
	err := nsdo.DoPath(c.cfg.Netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: lease.Address.Addr().AsSlice(), Port: nclient4.ClientPort})
		return err
	})
	server := &net.UDPAddr{IP: lease.Server.AsSlice(), Port: nclient4.ServerPort}
	if !lease.Server.IsValid() {
		server = nclient4.DefaultServers
	}
	var cl *nclient4.Client
	if err != nil {
		// The address is not (or no longer) configured, e.g. a caller that
		// does not apply leases: address the server by IP from the packet
		// socket instead.
		c.log.Debug("dhcp: renewing through the packet socket", "reason", err)
		cl, err = c.rawClient(nclient4.WithServerAddr(server))
	} else {
		cl, err = c.wrap(conn, nclient4.WithServerAddr(server))
	}
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return c.extend(ctx, cl, lease, server, nclient4.IsAll(
		nclient4.IsCorrectServer(lease.Server.AsSlice()),
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)))
}

// rebind broadcasts a REBINDING request to any server.
func (c *Client) rebind(ctx context.Context, lease *Lease) (*Lease, error) {
	cl, err := c.rawClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return c.extend(ctx, cl, lease, nclient4.DefaultServers,
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
}

// extend sends the RENEWING/REBINDING request: ciaddr is the leased
// address, no server identifier and no requested address (RFC 2131 4.3.2).
func (c *Client) extend(ctx context.Context, cl *nclient4.Client, lease *Lease, to *net.UDPAddr, match nclient4.Matcher) (*Lease, error) {
	req := c.message(dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(lease.Address.Addr().AsSlice()))
	resp, err := cl.SendAndRead(ctx, to, req, match)
	if err != nil {
		return nil, fmt.Errorf("REQUEST to %v: %w", to.IP, noAnswer(err))
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		return nil, &nclient4.ErrNak{Offer: lease.ack, Nak: resp}
	}
	next, err := leaseFromACK(c.cfg.Interface, resp, time.Now())
	if err != nil {
		return nil, err
	}
	return next, nil
}

// release tells the server we are done with the address (best effort).
func (c *Client) release(lease *Lease) {
	var conn net.PacketConn
	err := nsdo.DoPath(c.cfg.Netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: lease.Address.Addr().AsSlice(), Port: nclient4.ClientPort})
		return err
	})
	if err != nil {
		c.log.Warn("dhcp: release skipped", "error", err)
		return
	}
	defer conn.Close()
	msg := c.message(dhcpv4.MessageTypeRelease,
		dhcpv4.WithClientIP(lease.Address.Addr().AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(lease.Server.AsSlice())))
	to := &net.UDPAddr{IP: lease.Server.AsSlice(), Port: nclient4.ServerPort}
	if _, err := conn.WriteTo(msg.ToBytes(), to); err != nil {
		c.log.Warn("dhcp: release failed", "error", err)
		return
	}
	c.log.Info(fmt.Sprintf("dhcp: released %s %s", c.cfg.Interface, lease.Address.Addr()))
}

// noAnswer makes nclient4's timeout readable.
func noAnswer(err error) error {
	if errors.Is(err, nclient4.ErrNoResponse) {
		return fmt.Errorf("no answer from any DHCP server: %w", err)
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func sleepUntil(ctx context.Context, at time.Time) bool { return sleep(ctx, time.Until(at)) }
