package vpn

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"magestack/init/stackfile"
)

// Client is a new operator's VPN client: its keys, address and the
// endpoint it connects to.
type Client struct {
	Name       string
	PrivateKey wgtypes.Key
	Addr       netip.Addr
	ServerKey  wgtypes.Key
	Endpoint   string // host:port
	AllowedIPs []netip.Prefix
}

// NewClient creates keys and an address for a new peer called name.
// endpoint is the public host (or host:port) clients connect to.
func NewClient(stack *stackfile.Stack, cfg Config, name, endpoint string) (Client, error) {
	if name == "" || strings.ContainsAny(name, " \t\n\"'{}:,") {
		return Client{}, fmt.Errorf("vpn add-peer: %q is not a usable peer name", name)
	}
	for _, p := range cfg.Peers {
		if p.Name == name {
			return Client{}, fmt.Errorf("vpn add-peer: peer %q already exists in vpn.peers", name)
		}
	}
	addr, err := cfg.NextFreeAddr()
	if err != nil {
		return Client{}, err
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return Client{}, fmt.Errorf("vpn add-peer: %w", err)
	}
	if endpoint == "" {
		return Client{}, fmt.Errorf("vpn add-peer: no endpoint: give -endpoint or set public.vip or a host address")
	}
	if !strings.Contains(endpoint, ":") || strings.Count(endpoint, ":") > 1 && !strings.HasPrefix(endpoint, "[") {
		endpoint = fmt.Sprintf("%s:%d", endpoint, cfg.Port)
	}
	return Client{
		Name: name, PrivateKey: key, Addr: addr, ServerKey: cfg.PublicKey(), Endpoint: endpoint,
		AllowedIPs: []netip.Prefix{cfg.Subnet, stack.Internal.Masked()},
	}, nil
}

// DefaultEndpoint is the stack's VIP address, else the first host's
// static address; "" when the stack has neither.
func DefaultEndpoint(stack *stackfile.Stack) string {
	if stack.Public.VIP.IsValid() {
		return stack.Public.VIP.Addr().String()
	}
	for _, h := range stack.Hosts {
		if h.Address.IsValid() {
			return h.Address.Addr().String()
		}
	}
	return ""
}

// WGQuick is the client's configuration in wg-quick format.
func (c Client) WGQuick() string {
	allowed := make([]string, len(c.AllowedIPs))
	for i, p := range c.AllowedIPs {
		allowed[i] = p.String()
	}
	return fmt.Sprintf(`# magestack VPN client %s: save as %s.conf, then: wg-quick up ./%s.conf
[Interface]
PrivateKey = %s
Address = %s/32

[Peer]
PublicKey = %s
Endpoint = %s
AllowedIPs = %s
PersistentKeepalive = 25
`, c.Name, c.Name, c.Name, c.PrivateKey, c.Addr, c.ServerKey, c.Endpoint, strings.Join(allowed, ", "))
}

// StackSnippet is the entry to add under vpn.peers in the stack file.
func (c Client) StackSnippet() string {
	return fmt.Sprintf("# add under vpn.peers in the stack file:\n  - {name: %s, key: \"%s\", address: %s}\n",
		c.Name, c.PrivateKey.PublicKey(), c.Addr)
}
