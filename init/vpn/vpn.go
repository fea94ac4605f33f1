// Package vpn terminates the stack's management VPN: a WireGuard interface
// (ms-vpn) on the host that runs fw, configured through wgctrl from the
// stack file's vpn section. The firewall (package firewall) opens the
// management ports to the VPN subnet; this package only brings the tunnel
// up and writes client configurations for operators.
//
// The host's private key comes from the stack file (vpn.privatekey) or is
// derived from the stack secret (init/stacksecret), so every host of the
// stack presents the same public key: clients keep their configuration
// across reboots and failovers, and no key is kept in Git.
//
// Adding an operator, on the host that runs fw:
//
//	magestack vpn add-peer alice > alice.conf
//
// prints a wg-quick client configuration (a fresh key pair for alice, the
// next free address of vpn.subnet, the host's public key, the endpoint
// public.vip:vpn.port, AllowedIPs = vpn.subnet + internal) followed by the
// stack-file line to add under vpn.peers. Commit that line; once the
// stack file is applied, `wg-quick up ./alice.conf` on the operator's
// machine opens the management ports (acc SSH, monitor portal, db admin,
// lb stats) and nothing else. The private key is printed once and not
// stored on the host; -endpoint overrides the address clients dial.
package vpn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

// Iface is the host's WireGuard interface.
const Iface = "ms-vpn"

// Config is the resolved VPN configuration of the host.
type Config struct {
	Iface      string
	Port       int
	Subnet     netip.Prefix
	HostAddr   netip.Addr // the host's address inside Subnet (the first one)
	PrivateKey wgtypes.Key
	Peers      []Peer
}

// Peer is one operator's client.
type Peer struct {
	Name      string
	PublicKey wgtypes.Key
	Addr      netip.Addr
}

// FromStack resolves the stack's vpn section: keys parsed, peer addresses
// assigned in list order after the host's, the private key from
// vpn.privatekey or else derived from the stack secret. Errors name the
// field.
func FromStack(stack *stackfile.Stack, secret stacksecret.Secret) (Config, error) {
	v := stack.VPN
	cfg := Config{Iface: Iface, Port: int(v.Port), Subnet: v.Subnet.Masked()}
	if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 30 {
		return Config{}, fmt.Errorf("vpn.subnet: %s must be an IPv4 subnet of at least 4 addresses", v.Subnet)
	}
	if v.Port == 0 {
		return Config{}, errors.New("vpn.port: must be in 1..65535")
	}
	cfg.HostAddr = cfg.Subnet.Addr().Next()
	var err error
	if v.PrivateKey != "" {
		if cfg.PrivateKey, err = wgtypes.ParseKey(v.PrivateKey); err != nil {
			return Config{}, fmt.Errorf("vpn.privatekey: %w", err)
		}
	} else if cfg.PrivateKey, err = DerivedKey(secret); err != nil {
		return Config{}, err
	}
	used := map[netip.Addr]string{cfg.HostAddr: "the host"}
	names := map[string]bool{}
	next := cfg.HostAddr.Next()
	for i, p := range v.Peers {
		field := fmt.Sprintf("vpn.peers[%d]", i)
		if p.Name == "" {
			return Config{}, fmt.Errorf("%s.name: empty", field)
		}
		if names[p.Name] {
			return Config{}, fmt.Errorf("%s.name: %q listed twice", field, p.Name)
		}
		names[p.Name] = true
		key, err := wgtypes.ParseKey(p.Key)
		if err != nil {
			return Config{}, fmt.Errorf("%s.key (%s): %w", field, p.Name, err)
		}
		addr := p.Address
		if !addr.IsValid() {
			for used[next] != "" {
				next = next.Next()
			}
			addr = next
		}
		if !cfg.Subnet.Contains(addr) || addr == lastAddr(cfg.Subnet) {
			return Config{}, fmt.Errorf("%s.address (%s): %s is not a host address in vpn.subnet %s", field, p.Name, addr, cfg.Subnet)
		}
		if who := used[addr]; who != "" {
			return Config{}, fmt.Errorf("%s.address (%s): %s already used by %s", field, p.Name, addr, who)
		}
		used[addr] = p.Name
		cfg.Peers = append(cfg.Peers, Peer{Name: p.Name, PublicKey: key, Addr: addr})
	}
	return cfg, nil
}

// lastAddr is the subnet's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		a[i] |= byte(1<<n - 1)
		host -= n
	}
	return netip.AddrFrom4(a)
}

// NextFreeAddr returns the first address of the subnet not taken by the
// host or a configured peer: what `vpn add-peer` hands out.
func (c Config) NextFreeAddr() (netip.Addr, error) {
	used := map[netip.Addr]bool{c.HostAddr: true}
	for _, p := range c.Peers {
		used[p.Addr] = true
	}
	for a := c.HostAddr.Next(); c.Subnet.Contains(a) && a != lastAddr(c.Subnet); a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("vpn.subnet %s is full", c.Subnet)
}

// DerivedKey is fw's WireGuard private key derived from the stack secret.
func DerivedKey(secret stacksecret.Secret) (wgtypes.Key, error) {
	if !secret.Valid() {
		return wgtypes.Key{}, errors.New("vpn key: no stack secret to derive it from (and no vpn.privatekey)")
	}
	k, err := secret.WireGuardKey("vpn")
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("vpn key: %w", err)
	}
	return wgtypes.Key(k), nil
}

// Up creates (or reuses) the WireGuard interface in the namespace at
// netnsFD (-1: the current one), gives it the host's VPN address, brings it
// up and replaces its key, port and peers with cfg. An interface of that
// name that already exists (e.g. a userspace wireguard-go device) is
// configured as it is.
func Up(cfg Config, netnsFD int) error {
	h, err := handle(netnsFD)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(cfg.Iface)
	if err != nil {
		if err := h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Iface}}); err != nil {
			return fmt.Errorf("vpn: create wireguard link %s (is the wireguard module loaded?): %w", cfg.Iface, err)
		}
		if link, err = h.LinkByName(cfg.Iface); err != nil {
			return fmt.Errorf("vpn: %s: %w", cfg.Iface, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.HostAddr.AsSlice(), Mask: net.CIDRMask(cfg.Subnet.Bits(), 32)}}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("vpn: address %s on %s: %w", addr, cfg.Iface, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("vpn: %s up: %w", cfg.Iface, err)
	}
	return configure(cfg, netnsFD)
}

func handle(netnsFD int) (*netlink.Handle, error) {
	if netnsFD < 0 {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(netns.NsHandle(netnsFD), unix.NETLINK_ROUTE)
}

// configure sets key, port and peers through wgctrl. Kernel devices are
// reached over generic netlink, which is per network namespace, so the
// client is opened on a thread inside the target namespace.
func configure(cfg Config, netnsFD int) error {
	port := cfg.Port
	wc := wgtypes.Config{PrivateKey: &cfg.PrivateKey, ListenPort: &port, ReplacePeers: true}
	for _, p := range cfg.Peers {
		wc.Peers = append(wc.Peers, wgtypes.PeerConfig{
			PublicKey:         p.PublicKey,
			ReplaceAllowedIPs: true,
			AllowedIPs:        []net.IPNet{{IP: p.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}},
		})
	}
	do := func() error {
		c, err := wgctrl.New()
		if err != nil {
			return fmt.Errorf("vpn: wgctrl: %w", err)
		}
		defer c.Close()
		if err := c.ConfigureDevice(cfg.Iface, wc); err != nil {
			return fmt.Errorf("vpn: configure %s: %w", cfg.Iface, err)
		}
		return nil
	}
	if netnsFD < 0 {
		return do()
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is left in the namespace and discarded with the
		// goroutine (never unlocked), so no other goroutine inherits it.
		runtime.LockOSThread()
		if err := unix.Setns(netnsFD, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("vpn: setns: %w", err)
			return
		}
		errc <- do()
	}()
	return <-errc
}

// PublicKey is the host's public key (what clients pin).
func (c Config) PublicKey() wgtypes.Key { return c.PrivateKey.PublicKey() }
