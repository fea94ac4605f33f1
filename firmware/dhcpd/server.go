package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Mode is how the server answers.
type Mode string

const (
	// ModeFull hands out addresses and boot information.
	ModeFull Mode = "full"
	// ModeProxy hands out boot information only; another server gives
	// addresses (PXE proxyDHCP, port 67 and 4011).
	ModeProxy Mode = "proxy"
)

// ProxyPort is the PXE boot-server port proxyDHCP clients send their
// REQUEST to.
const ProxyPort = 4011

// BootDecider says what a client boots: the boot file name (a TFTP path or
// an http:// URL) and whether to answer it at all. Unknown hosts get false.
type BootDecider func(mac net.HardwareAddr, fw Firmware) (bootfile string, ok bool)

// Event is one step of a client's exchange, for the live view.
type Event struct {
	MAC      string
	Kind     string // offer, ack, nak, proxy-offer, proxy-ack, ignored, release, decline
	Addr     netip.Addr
	Firmware Firmware
	Bootfile string
	Reason   string
}

// Config configures a Server.
type Config struct {
	Mode      Mode
	ServerIP  netip.Addr   // our address on the boot network: server id and TFTP next-server
	Pool      *Pool        // full mode only
	Subnet    netip.Prefix // full mode: the clients' subnet (for the mask)
	Router    netip.Addr   // full mode, optional
	DNS       []netip.Addr // full mode, optional
	LeaseTime time.Duration
	Boot      BootDecider
	OnEvent   func(Event) // optional
	Logger    *slog.Logger
}

// Server answers DHCP requests.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Mode != ModeFull && cfg.Mode != ModeProxy {
		return nil, fmt.Errorf("dhcp mode %q: want %q or %q", cfg.Mode, ModeFull, ModeProxy)
	}
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp server address %v: want an IPv4 address", cfg.ServerIP)
	}
	if cfg.Mode == ModeFull {
		if cfg.Pool == nil {
			return nil, errors.New("full dhcp mode needs an address pool")
		}
		if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() {
			return nil, fmt.Errorf("full dhcp mode needs the clients' IPv4 subnet, got %v", cfg.Subnet)
		}
	}
	if cfg.Boot == nil {
		return nil, errors.New("dhcp server needs a boot decider")
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger}, nil
}

func (s *Server) event(e Event) {
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(e)
	}
}

// Reply computes the answer to req; nil means no answer. It never panics on
// any parsed packet (fuzzed).
func (s *Server) Reply(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, nil
	}
	if len(req.ClientHWAddr) != 6 {
		return nil, fmt.Errorf("client hardware address %v: want a 6-byte MAC", req.ClientHWAddr)
	}
	if s.cfg.Mode == ModeProxy {
		return s.replyProxy(req)
	}
	return s.replyFull(req)
}

// bootFor returns the boot file for a network-boot client, "" for others.
func (s *Server) bootFor(req *dhcpv4.DHCPv4) (fw Firmware, file string, known bool) {
	fw = Classify(req)
	file, known = s.cfg.Boot(req.ClientHWAddr, fw)
	if !IsPXE(req) || fw == FirmwareUnsupported {
		file = ""
	}
	return fw, file, known
}

func (s *Server) replyFull(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	mac := req.ClientHWAddr.String()
	fw, file, known := s.bootFor(req)
	if !known {
		s.event(Event{MAC: mac, Kind: "ignored", Firmware: fw, Reason: "unknown MAC"})
		return nil, nil
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		want, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		addr, err := s.cfg.Pool.Offer(mac, want)
		if err != nil {
			s.event(Event{MAC: mac, Kind: "ignored", Firmware: fw, Reason: err.Error()})
			return nil, err
		}
		resp, err := s.answer(req, dhcpv4.MessageTypeOffer, addr, file)
		if err == nil {
			s.event(Event{MAC: mac, Kind: "offer", Addr: addr, Firmware: fw, Bootfile: file})
		}
		return resp, err
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice())) {
			return nil, nil // the client chose another server
		}
		ip := req.RequestedIPAddress()
		if ip == nil || ip.IsUnspecified() {
			ip = req.ClientIPAddr
		}
		addr, ok := netip.AddrFromSlice(ip.To4())
		if !ok {
			return s.nak(req, fw, "request names no address")
		}
		if err := s.cfg.Pool.Commit(mac, addr, s.cfg.LeaseTime); err != nil {
			return s.nak(req, fw, err.Error())
		}
		resp, err := s.answer(req, dhcpv4.MessageTypeAck, addr, file)
		if err == nil {
			s.event(Event{MAC: mac, Kind: "ack", Addr: addr, Firmware: fw, Bootfile: file})
		}
		return resp, err
	case dhcpv4.MessageTypeRelease:
		s.cfg.Pool.Release(mac)
		s.event(Event{MAC: mac, Kind: "release", Firmware: fw})
		return nil, nil
	case dhcpv4.MessageTypeDecline:
		addr, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		s.cfg.Pool.Decline(mac, addr)
		s.event(Event{MAC: mac, Kind: "decline", Addr: addr, Firmware: fw})
		return nil, nil
	case dhcpv4.MessageTypeInform:
		return s.answer(req, dhcpv4.MessageTypeAck, netip.Addr{}, file)
	}
	return nil, nil
}

func (s *Server) nak(req *dhcpv4.DHCPv4, fw Firmware, why string) (*dhcpv4.DHCPv4, error) {
	s.event(Event{MAC: req.ClientHWAddr.String(), Kind: "nak", Firmware: fw, Reason: why})
	return dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithServerIP(net.IP(s.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(s.cfg.ServerIP.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
}

// answer builds an OFFER or ACK for addr (invalid addr: INFORM's ACK).
func (s *Server) answer(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, addr netip.Addr, file string) (*dhcpv4.DHCPv4, error) {
	server := net.IP(s.cfg.ServerIP.AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(s.cfg.Subnet.Bits(), 32))),
	}
	if addr.IsValid() {
		lease := s.cfg.LeaseTime
		mods = append(mods,
			dhcpv4.WithYourIP(net.IP(addr.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lease)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(lease/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(lease*7/8)),
		)
	}
	if s.cfg.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(net.IP(s.cfg.Router.AsSlice()))))
	}
	if len(s.cfg.DNS) > 0 {
		var dns []net.IP
		for _, d := range s.cfg.DNS {
			dns = append(dns, net.IP(d.AsSlice()))
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
	}
	if cid := req.Options.Get(dhcpv4.OptionClientIdentifier); cid != nil {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, cid)))
	}
	mods = append(mods, bootMods(server, file)...)
	return dhcpv4.NewReplyFromRequest(req, mods...)
}

// bootMods adds the boot file: in the header and option 67, and the TFTP
// server in siaddr and option 66. A full-DHCP answer deliberately carries no
// "PXEClient" option 60: UEFI's PXE takes such an offer as a BINL one and
// asks a boot server on port 4011 for the file instead of using it, while
// a plain offer with a boot file is what every PXE ROM boots from directly.
func bootMods(server net.IP, file string) []dhcpv4.Modifier {
	if file == "" {
		return nil
	}
	return []dhcpv4.Modifier{
		func(d *dhcpv4.DHCPv4) { d.BootFileName = file },
		dhcpv4.WithOption(dhcpv4.OptBootFileName(file)),
		dhcpv4.WithOption(dhcpv4.OptTFTPServerName(server.String())),
	}
}

// pxeDiscoveryControl is vendor option 43 sub-option 6 = 8: skip boot-server
// discovery and use the boot file as given (what proxyDHCP clients need).
var pxeDiscoveryControl = []byte{6, 1, 8, 255}

func (s *Server) replyProxy(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	if !IsPXE(req) {
		return nil, nil // not a boot client: the site's DHCP server answers it
	}
	mac := req.ClientHWAddr.String()
	fw, file, known := s.bootFor(req)
	if !known || file == "" {
		s.event(Event{MAC: mac, Kind: "ignored", Firmware: fw, Reason: "unknown MAC or firmware"})
		return nil, nil
	}
	var typ dhcpv4.MessageType
	var kind string
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ, kind = dhcpv4.MessageTypeOffer, "proxy-offer"
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		typ, kind = dhcpv4.MessageTypeAck, "proxy-ack"
	default:
		return nil, nil
	}
	server := net.IP(s.cfg.ServerIP.AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithYourIP(net.IPv4zero),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl)),
	}
	mods = append(mods, bootMods(server, file)...)
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err == nil {
		s.event(Event{MAC: mac, Kind: kind, Firmware: fw, Bootfile: file})
	}
	return resp, err
}

// Serve answers requests read from conn until ctx ends. Replies go to the
// relay, the client's address, or broadcast, as RFC 2131 4.1 says. A
// malformed packet is logged and dropped; the loop keeps serving.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp read: %w", err)
		}
		s.handle(conn, peer, buf[:n])
	}
}

func (s *Server) handle(conn net.PacketConn, peer net.Addr, pkt []byte) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("dhcp: handler panic (packet dropped)", "from", peer, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	req, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		s.log.Warn("dhcp: malformed packet dropped", "from", peer, "len", len(pkt), "err", err)
		return
	}
	resp, err := s.Reply(req)
	if err != nil {
		s.log.Warn("dhcp: no answer", "mac", req.ClientHWAddr, "type", req.MessageType(), "err", err)
	}
	if resp == nil {
		return
	}
	dst := replyAddr(req, resp, peer)
	if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
		s.log.Warn("dhcp: send failed", "to", dst, "err", err)
	}
}

func replyAddr(req, resp *dhcpv4.DHCPv4, peer net.Addr) net.Addr {
	if req.GatewayIPAddr != nil && !req.GatewayIPAddr.IsUnspecified() {
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpv4.ServerPort}
	}
	if up, ok := peer.(*net.UDPAddr); ok && !up.IP.IsUnspecified() && !up.IP.Equal(net.IPv4bcast) &&
		resp.MessageType() != dhcpv4.MessageTypeNak {
		return up // the client has an address (renewal, INFORM, proxy 4011)
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}
