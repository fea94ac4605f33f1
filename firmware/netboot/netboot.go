// Package netboot is `magestack netboot`: the boot server datacentre staff
// run on a provisioning host. It answers DHCP (full or proxy), serves iPXE
// over TFTP to PXE ROMs, and serves each host's iPXE script, the kernel,
// the initramfs and the stack file over HTTP. Hosts are recognised by MAC
// from the stack file; unknown machines get nothing unless discovery is on.
package netboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"

	"magestack/firmware/dhcpd"
	"magestack/firmware/tftpd"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

// Options configure the boot server.
type Options struct {
	Interface string // the provisioning network interface
	StackFile string // the stack file hosts are looked up in
	ImageDir  string // holds vmlinuz and initramfs.img
	// RoleImageDir holds the role images and their manifest.json (`make
	// images`: build/images), served under /images/ and named on every
	// host's command line (imagestore.CmdlineKey). Without a readable
	// manifest there, role images are not served, or New fails when
	// RequireRoleImages is set.
	RoleImageDir      string
	RequireRoleImages bool
	BootDir           string     // holds undionly.kpxe and ipxe.efi (Debian's ipxe package)
	Mode              dhcpd.Mode // full or proxy
	// Address overrides the server address (default: the interface's first
	// IPv4 address).
	Address netip.Addr
	// PoolFirst and PoolLast bound the full-mode address pool (default: the
	// upper half of the interface's subnet).
	PoolFirst, PoolLast netip.Addr
	Router              netip.Addr
	HTTPPort            int
	// Discover boots unknown machines into a discovery image that reports
	// their hardware; off by default (unknown MACs get nothing).
	Discover bool
	// ExtraCmdline is appended to every host's kernel command line.
	ExtraCmdline string
	// SecretFile is the stack secret (magestack secrets init) handed to
	// known hosts as an initrd of their own; "" hands none, and only a
	// one-host stack's host then makes its own.
	SecretFile string
	// Out receives the live view, one line per step (nil: none).
	Out    io.Writer
	Logger *slog.Logger
}

// Server is a configured boot server.
type Server struct {
	opts      Options
	log       *slog.Logger
	stack     *stackfile.Stack
	stackYAML []byte
	secret    stacksecret.Secret // zero: none handed out
	serverIP  netip.Addr
	subnet    netip.Prefix
	baseURL   string
	imagesURL string // "" when role images are not served
	progress  *Progress
	dhcp      *dhcpd.Server

	// nl is a netlink handle opened in the namespace New ran in, so lookups
	// from server goroutines (on any OS thread) see the right interfaces.
	nl *netlink.Handle

	mu     sync.Mutex
	ipToMA map[string]string
}

// New validates the options: the interface must exist and have an IPv4
// address, the stack file must validate, and every file to serve must exist.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Mode == "" {
		opts.Mode = dhcpd.ModeFull
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 8080
	}
	if opts.BootDir == "" {
		opts.BootDir = "/usr/lib/ipxe"
	}
	s := &Server{opts: opts, log: opts.Logger, progress: NewProgress(opts.Out), ipToMA: map[string]string{}}

	data, err := os.ReadFile(opts.StackFile)
	if err != nil {
		return nil, fmt.Errorf("--stack: %w", err)
	}
	if s.stack, err = stackfile.Parse(opts.StackFile, data); err != nil {
		return nil, fmt.Errorf("--stack: the stack file does not validate:\n%w", err)
	}
	s.stackYAML = data
	if opts.SecretFile != "" {
		if s.secret, err = stacksecret.Load(opts.SecretFile); err != nil {
			return nil, fmt.Errorf("--secret: %w", err)
		}
	}
	for _, f := range imageFiles {
		if err := regularFile(filepath.Join(opts.ImageDir, f)); err != nil {
			return nil, fmt.Errorf("--image: %w (run `make image` first)", err)
		}
	}
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		if err := regularFile(filepath.Join(opts.BootDir, f)); err != nil {
			return nil, fmt.Errorf("--bootfiles: %w (install Debian's ipxe package)", err)
		}
	}
	if err := s.resolveAddress(); err != nil {
		return nil, err
	}
	s.baseURL = "http://" + net.JoinHostPort(s.serverIP.String(), strconv.Itoa(opts.HTTPPort))
	if err := s.checkRoleImages(); err != nil {
		if opts.RequireRoleImages {
			return nil, fmt.Errorf("--images: %w (run `make images` first)", err)
		}
		s.log.Warn("netboot: role images not served: hosts need their MAGESTACK-IMAGES disk or cache", "err", err)
	} else if opts.RoleImageDir != "" {
		s.imagesURL = s.baseURL + "/images"
	}

	cfg := dhcpd.Config{Mode: opts.Mode, ServerIP: s.serverIP, Subnet: s.subnet, Router: opts.Router,
		Boot: s.decide, OnEvent: s.onDHCP, Logger: opts.Logger}
	if opts.Mode == dhcpd.ModeFull {
		first, last := opts.PoolFirst, opts.PoolLast
		if !first.IsValid() || !last.IsValid() {
			first, last = defaultPool(s.subnet)
		}
		if cfg.Pool, err = dhcpd.NewPool(first, last, reservations(s.stack, s.subnet)); err != nil {
			return nil, fmt.Errorf("--range: %w", err)
		}
	}
	if s.dhcp, err = dhcpd.New(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

func regularFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}

func (s *Server) resolveAddress() error {
	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	s.nl = nl
	link, err := nl.LinkByName(s.opts.Interface)
	if err != nil {
		return fmt.Errorf("--interface %q: %w", s.opts.Interface, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("--interface %q: listing addresses: %w", s.opts.Interface, err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if s.opts.Address.IsValid() && ip != s.opts.Address {
			continue
		}
		s.serverIP = ip
		s.subnet = netip.PrefixFrom(ip, ones).Masked()
		return nil
	}
	if s.opts.Address.IsValid() {
		return fmt.Errorf("--address %s is not on interface %s", s.opts.Address, s.opts.Interface)
	}
	return fmt.Errorf("--interface %q has no IPv4 address: give it one or choose the provisioning interface", s.opts.Interface)
}

// defaultPool is the upper half of the subnet, minus broadcast.
func defaultPool(p netip.Prefix) (netip.Addr, netip.Addr) {
	base := p.Masked().Addr().As4()
	size := uint32(1) << (32 - p.Bits())
	start := be(base) + size/2
	end := be(base) + size - 2
	return fromBE(start), fromBE(end)
}

func be(a [4]byte) uint32 {
	return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
}
func fromBE(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// decide is the DHCP boot policy: PXE ROMs chainload iPXE over TFTP, iPXE
// fetches the host's script over HTTP.
func (s *Server) decide(mac net.HardwareAddr, fw dhcpd.Firmware) (string, bool) {
	_, _, known := lookupMAC(s.stack, mac)
	if !known && !s.opts.Discover {
		return "", false
	}
	switch fw {
	case dhcpd.FirmwareBIOS:
		return "undionly.kpxe", true
	case dhcpd.FirmwareUEFI:
		return "ipxe.efi", true
	case dhcpd.FirmwareIPXE:
		return s.baseURL + "/boot/" + mac.String() + ".ipxe", true
	}
	return "", true
}

// scriptFor renders mac's boot script: its host's boot, or discovery.
func (s *Server) scriptFor(mac net.HardwareAddr) (script, host string, ok bool) {
	h, _, known := lookupMAC(s.stack, mac)
	if known {
		args := BootArgs(s.stack, h, s.baseURL, s.imagesURL, s.opts.ExtraCmdline)
		secretURL := ""
		if s.secret.Valid() {
			secretURL = s.baseURL + "/secret/" + macFile(mac)
		}
		return Script(h.Name+" ("+mac.String()+")", s.baseURL, args, secretURL), h.Name, true
	}
	if !s.opts.Discover {
		return "", "", false
	}
	args := "console=ttyS0 quiet panic=-1 magestack.discover=" + s.baseURL + "/report " + s.opts.ExtraCmdline
	return Script("discovery of "+mac.String(), s.baseURL, args, ""), "", true
}

func (s *Server) onDHCP(e dhcpd.Event) {
	host := ""
	if hw, err := net.ParseMAC(e.MAC); err == nil {
		if h, _, ok := lookupMAC(s.stack, hw); ok {
			host = h.Name
		}
	}
	switch e.Kind {
	case "offer", "ack", "proxy-offer", "proxy-ack":
		step := map[string]string{"proxy-offer": "offer", "proxy-ack": "ack"}[e.Kind]
		if step == "" {
			step = e.Kind
		}
		s.progress.Update(e.MAC, func(h *HostProgress) {
			h.Firmware = e.Firmware.String()
			if e.Addr.IsValid() {
				h.Addr = e.Addr.String()
			}
		})
		if e.Addr.IsValid() {
			s.mu.Lock()
			s.ipToMA[e.Addr.String()] = e.MAC
			s.mu.Unlock()
		}
		s.progress.Step(e.MAC, host, step, fmt.Sprintf("%s %s %s", e.Firmware, e.Addr, e.Bootfile))
	case "ignored":
		s.log.Info("netboot: not answering", "mac", e.MAC, "firmware", e.Firmware, "why", e.Reason)
	case "nak":
		s.progress.Step(e.MAC, host, "nak", e.Reason)
	}
}

// macForIP maps a client address to its MAC: from our own leases, else the
// kernel's neighbour table (proxy mode, where another server leased it).
func (s *Server) macForIP(ip string) string {
	s.mu.Lock()
	mac, ok := s.ipToMA[ip]
	s.mu.Unlock()
	if ok {
		return mac
	}
	link, err := s.nl.LinkByName(s.opts.Interface)
	if err != nil {
		return ""
	}
	neighs, _ := s.nl.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	for _, n := range neighs {
		if n.IP.String() == ip && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// Progress returns the live view.
func (s *Server) Progress() *Progress { return s.progress }

// BaseURL is where the HTTP side is reachable.
func (s *Server) BaseURL() string { return s.baseURL }

// ImagesURL is where role images are served ("" when they are not).
func (s *Server) ImagesURL() string { return s.imagesURL }

// Run serves DHCP, TFTP and HTTP until ctx ends or one of them fails.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	dhcpConn, err := server4.NewIPv4UDPConn(s.opts.Interface, &net.UDPAddr{Port: dhcpv4.ServerPort})
	if err != nil {
		return fmt.Errorf("dhcp on %s: %w", s.opts.Interface, err)
	}
	conns := []net.PacketConn{dhcpConn}
	if s.opts.Mode == dhcpd.ModeProxy {
		pc, err := server4.NewIPv4UDPConn(s.opts.Interface, &net.UDPAddr{Port: dhcpd.ProxyPort})
		if err != nil {
			dhcpConn.Close()
			return fmt.Errorf("proxyDHCP port %d on %s: %w", dhcpd.ProxyPort, s.opts.Interface, err)
		}
		conns = append(conns, pc)
	}
	tftpConn, err := net.ListenPacket("udp4", net.JoinHostPort(s.serverIP.String(), "69"))
	if err != nil {
		return fmt.Errorf("tftp on %s:69: %w", s.serverIP, err)
	}
	bootFiles := map[string]string{}
	for _, f := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"} {
		if p := filepath.Join(s.opts.BootDir, f); regularFile(p) == nil {
			bootFiles[f] = p
		}
	}
	tftpSrv, err := tftpd.New(bootFiles, s.log, func(remote net.IP, file string, err error) {
		if err != nil || remote == nil {
			return
		}
		if mac := s.macForIP(remote.String()); mac != "" {
			s.progress.Step(mac, "", "tftp", file)
		}
	})
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp4", net.JoinHostPort(s.serverIP.String(), strconv.Itoa(s.opts.HTTPPort)))
	if err != nil {
		return fmt.Errorf("http on %s:%d: %w", s.serverIP, s.opts.HTTPPort, err)
	}
	httpSrv := newHTTPServer(s.routes(), s.log)

	s.log.Info("netboot: serving", "interface", s.opts.Interface, "mode", s.opts.Mode, "address", s.serverIP,
		"http", s.baseURL, "hosts", len(s.stack.Hosts), "discover", s.opts.Discover)

	errc := make(chan error, len(conns)+2)
	var wg sync.WaitGroup
	run := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					errc <- fmt.Errorf("%s: panic: %v", name, r)
				}
			}()
			if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	for _, c := range conns {
		run("dhcp", func() error { return s.dhcp.Serve(ctx, c) })
	}
	run("tftp", func() error { return tftpSrv.Serve(ctx, tftpConn) })
	run("http", func() error { return httpSrv.Serve(httpLn) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		cancel()
	}
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	httpSrv.Shutdown(shutdownCtx)
	wg.Wait()
	return runErr
}
