// Package dhcptest provides what DHCP tests need on a real kernel: a pair
// of network namespaces joined by a veth, and a small DHCPv4 server
// (insomniacslk/dhcp server4) with knobs for short leases, NAKs and silence.
// Only addresses inside the namespaces it creates are used.
package dhcptest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"magestack/init/nsdo"
)

// Pair is two namespaces joined by a veth: ServerIf in Server, ClientIf in Client.
type Pair struct {
	Server, Client     string // namespace paths (/run/netns/...)
	ServerIf, ClientIf string
	ServerAddr         netip.Prefix
}

// Skip skips t unless this process can create network namespaces.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to build the namespace fixture")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("kernel without network namespaces")
	}
}

// NewPair creates the namespaces; the client side is named clientIf (e.g.
// "eth0") and stays without address; the server side gets serverAddr.
// Everything is deleted at test end.
func NewPair(t testing.TB, clientIf string, serverAddr netip.Prefix) *Pair {
	t.Helper()
	Skip(t)
	tag := fmt.Sprintf("%d%04d", os.Getpid()%100000, rand.IntN(10000))
	srv, cli := "msdh-s"+tag, "msdh-c"+tag
	p := &Pair{
		Server: "/run/netns/" + srv, Client: "/run/netns/" + cli,
		ServerIf: "srv0", ClientIf: clientIf, ServerAddr: serverAddr,
	}
	t.Cleanup(func() {
		Run(t, "ip", "netns", "del", srv)
		Run(t, "ip", "netns", "del", cli)
	})
	Must(t, "ip", "netns", "add", srv)
	Must(t, "ip", "netns", "add", cli)
	tmp := "msv" + tag
	Must(t, "ip", "link", "add", tmp, "type", "veth", "peer", "name", "msp"+tag)
	Must(t, "ip", "link", "set", tmp, "netns", srv, "name", p.ServerIf)
	Must(t, "ip", "link", "set", "msp"+tag, "netns", cli, "name", clientIf)
	Must(t, "ip", "-n", srv, "addr", "add", serverAddr.String(), "dev", p.ServerIf)
	Must(t, "ip", "-n", srv, "link", "set", p.ServerIf, "up")
	Must(t, "ip", "-n", srv, "link", "set", "lo", "up")
	return p
}

// Must runs a fixture command and fails the test if it fails.
func Must(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run runs a command and returns its output, ignoring failure (cleanup).
func Run(t testing.TB, name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

// Config is what the server hands out.
type Config struct {
	Subnet   netip.Prefix // the server's address with the client subnet, e.g. 10.99.1.1/24
	PoolFrom netip.Addr   // first address handed out
	Lease    time.Duration
	T1, T2   time.Duration // 0: not sent (client derives them)
	Router   netip.Addr
	DNS      []netip.Addr
	Domain   string
	// Routes are sent as option 121 (destination, gateway).
	Routes []dhcpv4.Route
}

// Seen is one request the server received.
type Seen struct {
	Type     dhcpv4.MessageType
	CIAddr   net.IP
	Peer     net.IP // source address of the datagram
	ClientID []byte
	Hostname string
	Params   dhcpv4.OptionCodeList
	At       time.Time
}

// Server is a running test DHCP server.
type Server struct {
	cfg Config
	srv *server4.Server

	// NakRenewals makes the server refuse REQUESTs that renew or rebind
	// (ciaddr set) while it is true.
	NakRenewals atomic.Bool
	// Silent makes the server ignore everything.
	Silent atomic.Bool

	mu     sync.Mutex
	leases map[string]netip.Addr // by MAC
	next   netip.Addr
	seen   []Seen
	done   chan struct{}
}

// Start runs a server on ifname inside namespace ns (path; "" current).
// It stops at test end.
func Start(t testing.TB, ns, ifname string, cfg Config) *Server {
	t.Helper()
	s := &Server{cfg: cfg, leases: map[string]netip.Addr{}, next: cfg.PoolFrom, done: make(chan struct{})}
	err := nsdo.DoPath(ns, func() error {
		var err error
		s.srv, err = server4.NewServer(ifname, &net.UDPAddr{Port: dhcpv4.ServerPort}, s.handle)
		return err
	})
	if err != nil {
		t.Fatalf("start DHCP server on %s: %v", ifname, err)
	}
	go func() {
		defer close(s.done)
		s.srv.Serve()
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and waits for it.
func (s *Server) Close() {
	s.srv.Close()
	<-s.done
}

// Seen returns the requests received so far.
func (s *Server) Seen() []Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Seen(nil), s.seen...)
}

// Lease returns the address handed to mac, if any.
func (s *Server) Lease(mac net.HardwareAddr) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.leases[mac.String()]
	return a, ok
}

func (s *Server) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	if m.OpCode != dhcpv4.OpcodeBootRequest || s.Silent.Load() {
		return
	}
	var peerIP net.IP
	if u, ok := peer.(*net.UDPAddr); ok {
		peerIP = u.IP
	}
	s.mu.Lock()
	s.seen = append(s.seen, Seen{
		Type: m.MessageType(), CIAddr: m.ClientIPAddr, Peer: peerIP,
		ClientID: m.Options.Get(dhcpv4.OptionClientIdentifier), Hostname: m.HostName(),
		Params: m.ParameterRequestList(), At: time.Now(),
	})
	addr, ok := s.leases[m.ClientHWAddr.String()]
	if !ok {
		addr = s.next
		s.next = s.next.Next()
		s.leases[m.ClientHWAddr.String()] = addr
	}
	s.mu.Unlock()

	var reply *dhcpv4.DHCPv4
	var err error
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		reply, err = s.reply(m, dhcpv4.MessageTypeOffer, addr)
	case dhcpv4.MessageTypeRequest:
		renewing := m.ClientIPAddr != nil && !m.ClientIPAddr.IsUnspecified()
		want := m.RequestedIPAddress()
		if renewing {
			want = m.ClientIPAddr
		}
		if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(s.cfg.Subnet.Addr().AsSlice()) {
			return // the client chose another server
		}
		if (renewing && s.NakRenewals.Load()) || !want.Equal(addr.AsSlice()) {
			reply, err = s.reply(m, dhcpv4.MessageTypeNak, netip.Addr{})
		} else {
			reply, err = s.reply(m, dhcpv4.MessageTypeAck, addr)
		}
	default:
		return
	}
	if err != nil {
		return
	}
	conn.WriteTo(reply.ToBytes(), peer)
}

func (s *Server) reply(req *dhcpv4.DHCPv4, t dhcpv4.MessageType, addr netip.Addr) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(t),
		dhcpv4.WithServerIP(s.cfg.Subnet.Addr().AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.Subnet.Addr().AsSlice())),
	}
	if t == dhcpv4.MessageTypeNak {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptMessage("address not yours (test NAK)")))
	} else {
		mods = append(mods,
			dhcpv4.WithYourIP(addr.AsSlice()),
			dhcpv4.WithNetmask(net.CIDRMask(s.cfg.Subnet.Bits(), 32)),
			dhcpv4.WithLeaseTime(uint32(s.cfg.Lease/time.Second)),
		)
		if s.cfg.T1 > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(s.cfg.T1)))
		}
		if s.cfg.T2 > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(s.cfg.T2)))
		}
		if s.cfg.Router.IsValid() {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice())))
		}
		if len(s.cfg.DNS) > 0 {
			var ips []net.IP
			for _, d := range s.cfg.DNS {
				ips = append(ips, d.AsSlice())
			}
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(ips...)))
		}
		if s.cfg.Domain != "" {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(s.cfg.Domain)))
		}
		if len(s.cfg.Routes) > 0 {
			var rs []*dhcpv4.Route
			for i := range s.cfg.Routes {
				rs = append(rs, &s.cfg.Routes[i])
			}
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(rs...)))
		}
	}
	return dhcpv4.NewReplyFromRequest(req, mods...)
}
