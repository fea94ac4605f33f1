package stackfile

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"magestack/init/configsource"
)

// Role count limits. Only web scales out; every other role is a singleton
// of the stack for now (its pair peer holds the standby, not a second
// instance).
const (
	MaxWebCount  = 150
	MaxRoleCount = 1
)

// FenceTypes are the fence devices a host may declare.
var fenceTypes = []string{"ipmi", "qmp", "redfish"}

var (
	labelRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	userRE    = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	settingRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// validator collects every semantic problem of a stack.
type validator struct {
	s    *Stack
	errs []*FieldError
}

func (v *validator) errf(path, format string, args ...any) {
	e := &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
	if v.s.src != nil {
		e.File = v.s.src.file
		p := v.s.src.at(path)
		e.Line, e.Col = p.Line, p.Column
	}
	v.errs = append(v.errs, e)
}

// Validate checks the stack's semantics (after defaults). It reports every
// problem, each naming the field and, for a parsed stack, file, line and
// column.
func (s *Stack) Validate() error {
	v := &validator{s: s}
	v.stack()
	v.hosts()
	v.subnets()
	v.public()
	v.vpn()
	v.witness()
	v.cluster()
	v.config()
	v.roles()
	v.users()
	v.sites()
	if len(v.errs) == 0 {
		v.internalFits()
	}
	return joinErrors(v.errs)
}

// internalFits checks that the internal subnet holds every host's bridge
// address and every instance's fixed address.
func (v *validator) internalFits() {
	s := v.s
	need, last := len(s.Hosts), "" // highest offset used, by whom
	if len(s.Hosts) > 0 {
		last = "host " + s.Hosts[len(s.Hosts)-1].Name
	}
	for _, role := range roleNames {
		if c := s.Roles[role].Count; c > 0 && roleOffset[role]+c-1 > need {
			need, last = roleOffset[role]+c-1, fmt.Sprintf("%s%d", role, c)
		}
	}
	hostBits := bits.Len(uint(need + 1)) // the all-ones address is broadcast
	if avail := s.Internal.Addr().BitLen() - s.Internal.Bits(); avail < hostBits {
		v.errf("internal", "%s is too small: %s needs address offset %d; use a /%d or larger", s.Internal, last, need, s.Internal.Addr().BitLen()-hostBits)
		return
	}
	if _, err := s.Instances(); err != nil {
		v.errf("internal", "%v", err)
	}
}

func (v *validator) stack() {
	switch {
	case v.s.Name == "":
		v.errf("stack", "the stack's name is required (stack: shop1)")
	case !labelRE.MatchString(v.s.Name):
		v.errf("stack", "%q is not a valid name: lower-case letters, digits and '-', at most 63", v.s.Name)
	}
}

// normMAC parses a MAC address and returns its canonical form.
func normMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("invalid MAC %q: want six hex bytes like 52:54:00:12:34:56", s)
	}
	return hw.String(), nil
}

func (v *validator) hosts() {
	s := v.s
	if len(s.Hosts) == 0 {
		v.errf("hosts", "at least one host is required")
		return
	}
	if len(s.Hosts) > MaxHosts {
		v.errf("hosts", "%d hosts, at most %d are supported", len(s.Hosts), MaxHosts)
	}
	names := map[string]string{} // name -> path of first use
	macs := map[string]string{}
	addrs := map[netip.Addr]string{}
	for i, h := range s.Hosts {
		p := fmt.Sprintf("hosts[%d]", i)
		switch {
		case h.Name == "":
			v.errf(p+".name", "a host needs a name")
		case !labelRE.MatchString(h.Name):
			v.errf(p+".name", "%q is not a valid host name: lower-case letters, digits and '-', at most 63", h.Name)
		case names[h.Name] != "":
			v.errf(p+".name", "host %q is already defined at %s", h.Name, names[h.Name])
		default:
			names[h.Name] = p
		}
		checkMAC := func(path, mac string) {
			if mac == "" {
				v.errf(path, "a MAC address is required")
				return
			}
			m, err := normMAC(mac)
			if err != nil {
				v.errf(path, "%v", err)
				return
			}
			if prev, ok := macs[m]; ok {
				v.errf(path, "MAC %s is already used by %s", m, prev)
				return
			}
			macs[m] = path
		}
		checkAddr := func(path string, a netip.Addr) {
			if prev, ok := addrs[a]; ok {
				v.errf(path, "address %s is already used by %s", a, prev)
				return
			}
			addrs[a] = path
		}
		checkMAC(p+".mac", h.MAC)
		if h.Address.IsValid() {
			a := h.Address.Addr()
			if a == h.Address.Masked().Addr() && h.Address.Bits() < a.BitLen()-1 {
				v.errf(p+".address", "%s is the network address of its subnet, not a host address", h.Address)
			} else {
				checkAddr(p+".address", a)
			}
		}
		if h.Gateway.IsValid() {
			switch {
			case !h.Address.IsValid():
				v.errf(p+".gateway", "a gateway needs a static address (address: is empty, so the host uses DHCP)")
			case !h.Address.Contains(h.Gateway):
				v.errf(p+".gateway", "%s is outside the host's subnet %s", h.Gateway, h.Address.Masked())
			case h.Gateway == h.Address.Addr():
				v.errf(p+".gateway", "%s is the host's own address", h.Gateway)
			}
		}
		if h.PairLink != nil {
			checkMAC(p+".pairlink.mac", h.PairLink.MAC)
			switch {
			case !h.PairLink.Address.IsValid():
				v.errf(p+".pairlink.address", "the pair link needs an address with prefix length")
			case s.PairNet.IsValid() && !s.PairNet.Contains(h.PairLink.Address.Addr()):
				v.errf(p+".pairlink.address", "%s is outside pairnet %s", h.PairLink.Address.Addr(), s.PairNet)
			default:
				checkAddr(p+".pairlink.address", h.PairLink.Address.Addr())
			}
		}
		if h.Fence != nil {
			if !slices.Contains(fenceTypes, h.Fence.Type) {
				if h.Fence.Type == "" {
					v.errf(p+".fence.type", "a fence needs a type (%s)", strings.Join(fenceTypes, ", "))
				} else {
					v.errf(p+".fence.type", "unknown fence type %q%s", h.Fence.Type, hint(h.Fence.Type, fenceTypes))
				}
			}
			if h.Fence.Address == "" {
				v.errf(p+".fence.address", "a fence needs the device's address")
			}
		}
	}
	for i, h := range s.Hosts {
		if h.Pair == "" {
			continue
		}
		p := fmt.Sprintf("hosts[%d].pair", i)
		peer, _, ok := s.HostByName(h.Pair)
		switch {
		case h.Pair == h.Name:
			v.errf(p, "host %q cannot pair with itself", h.Name)
		case !ok:
			v.errf(p, "no host named %q%s", h.Pair, hint(h.Pair, hostNames(s)))
		case peer.Pair == "":
			v.errf(p, "peer %q does not pair back (give it pair: %s)", h.Pair, h.Name)
		case peer.Pair != h.Name:
			v.errf(p, "peer %q pairs with %q, not back with %q", h.Pair, peer.Pair, h.Name)
		}
	}
}

func hostNames(s *Stack) []string {
	out := make([]string, len(s.Hosts))
	for i, h := range s.Hosts {
		out[i] = h.Name
	}
	return out
}

// namedPrefix is a subnet with the field it came from.
type namedPrefix struct {
	path string
	p    netip.Prefix
}

func (v *validator) subnets() {
	s := v.s
	checkMasked := func(path string, p netip.Prefix) bool {
		if !p.IsValid() {
			return false
		}
		if p != p.Masked() {
			v.errf(path, "%s has host bits set; did you mean %s?", p, p.Masked())
			return false
		}
		return true
	}
	// Groups whose subnets must be disjoint. Host addresses and the VIP
	// share the public LAN, so they form one group.
	var groups [][]namedPrefix
	if s.Internal.IsValid() && !s.Internal.Addr().Is4() {
		v.errf("internal", "%s: the internal subnet must be IPv4 for now", s.Internal)
	} else if checkMasked("internal", s.Internal) {
		groups = append(groups, []namedPrefix{{"internal", s.Internal}})
	} else if !s.Internal.IsValid() {
		v.errf("internal", "the internal subnet is required")
	}
	if checkMasked("vpn.subnet", s.VPN.Subnet) {
		groups = append(groups, []namedPrefix{{"vpn.subnet", s.VPN.Subnet}})
	}
	if checkMasked("pairnet", s.PairNet) {
		groups = append(groups, []namedPrefix{{"pairnet", s.PairNet}})
	}
	var public []namedPrefix
	if s.Public.VIP.IsValid() {
		public = append(public, namedPrefix{"public.vip", s.Public.VIP.Masked()})
	}
	for i, h := range s.Hosts {
		if h.Address.IsValid() {
			public = append(public, namedPrefix{fmt.Sprintf("hosts[%d].address", i), h.Address.Masked()})
		}
	}
	groups = append(groups, public)
	for i := range groups {
		for j := range i {
			for _, a := range groups[i] {
				for _, b := range groups[j] {
					if !a.p.Overlaps(b.p) {
						continue
					}
					if !v.s.src.has(a.path) && v.s.src.has(b.path) {
						a, b = b, a // point at the subnet the operator wrote, not a default
					}
					v.errf(a.path, "subnet %s overlaps %s %s", a.p, b.path, b.p)
				}
			}
		}
	}
}

func (v *validator) public() {
	s := v.s
	if vip := s.Public.VIP; vip.IsValid() {
		a := vip.Addr()
		for i, h := range s.Hosts {
			if !h.Address.IsValid() {
				continue // DHCP: the subnet is only known at boot
			}
			switch {
			case h.Address.Addr() == a:
				v.errf("public.vip", "%s is host %s's own address (hosts[%d].address); the VIP must be a separate address", a, h.Name, i)
			case !h.Address.Masked().Contains(a):
				v.errf("public.vip", "%s is outside host %s's public subnet %s", a, h.Name, h.Address.Masked())
			}
		}
	}
	if t := s.Public.TLS; t != nil {
		switch {
		case t.Cert == "" || t.Key == "":
			v.errf("public.tls", "give both cert and key (PEM), or leave tls out for a self-signed certificate")
		default:
			if _, err := tls.X509KeyPair([]byte(t.Cert), []byte(t.Key)); err != nil {
				v.errf("public.tls", "certificate and key are not a usable PEM pair: %v", err)
			}
		}
	}
	seen := map[netip.Prefix]int{}
	for i, p := range s.Public.Allow {
		path := fmt.Sprintf("public.allow[%d]", i)
		if !p.Addr().Is4() {
			v.errf(path, "%s: allow-list entries must be IPv4 for now", p)
			continue
		}
		if p != p.Masked() {
			v.errf(path, "%s has host bits set; did you mean %s?", p, p.Masked())
			continue
		}
		if j, ok := seen[p]; ok {
			v.errf(path, "%s is already listed at public.allow[%d]", p, j)
			continue
		}
		seen[p] = i
	}
	if s.Public.RateLimit < -1 {
		v.errf("public.ratelimit", "must be -1 (off), 0 (default) or a positive number of connections per second, got %d", s.Public.RateLimit)
	}
}

// wgKey checks a WireGuard key: 32 bytes in standard base64.
func wgKey(k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("%q is not a WireGuard key: want 32 bytes in base64, 44 characters (wg genkey | wg pubkey)", k)
	}
	return nil
}

func (v *validator) vpn() {
	s := v.s
	if v.s.src.has("vpn.port") && s.VPN.Port == 0 {
		v.errf("vpn.port", "port 0 is not usable: want 1..65535 (omit the key for the default 51820)")
	}
	if s.VPN.PrivateKey != "" {
		if err := wgKey(s.VPN.PrivateKey); err != nil {
			v.errf("vpn.privatekey", "%v", err)
		}
	}
	sub := s.VPN.Subnet
	if sub.IsValid() && (!sub.Addr().Is4() || sub.Bits() > 30) {
		v.errf("vpn.subnet", "%s: the VPN subnet must be IPv4 with at least 4 addresses (a /30 or larger)", sub)
		sub = netip.Prefix{} // peer addresses cannot be checked against it
	}
	names := map[string]int{}
	keys := map[string]int{}
	// Peers without an address get the next free one after fw's (the
	// subnet's first), in list order: the same walk the vpn package does,
	// so an explicit address that an earlier peer was given is caught here.
	used := map[netip.Addr]string{}
	var next netip.Addr
	if sub.IsValid() {
		used[sub.Masked().Addr().Next()] = "fw"
		next = sub.Masked().Addr().Next().Next()
	}
	for i, peer := range s.VPN.Peers {
		p := fmt.Sprintf("vpn.peers[%d]", i)
		if peer.Name == "" {
			v.errf(p+".name", "a VPN peer needs a name")
		} else if j, ok := names[peer.Name]; ok {
			v.errf(p+".name", "peer %q is already defined at vpn.peers[%d]", peer.Name, j)
		} else {
			names[peer.Name] = i
		}
		if peer.Key == "" {
			v.errf(p+".key", "a VPN peer needs its WireGuard public key")
		} else if err := wgKey(peer.Key); err != nil {
			v.errf(p+".key", "%v", err)
		} else if j, ok := keys[peer.Key]; ok {
			v.errf(p+".key", "key already used by vpn.peers[%d]", j)
		} else {
			keys[peer.Key] = i
		}
		if !sub.IsValid() {
			continue
		}
		a, auto := peer.Address, !peer.Address.IsValid()
		if auto {
			for used[next] != "" {
				next = next.Next()
			}
			a = next
		}
		last := lastAddr(sub)
		switch {
		case auto && (!sub.Contains(a) || a == last):
			v.errf(p, "no free address left in vpn.subnet %s for this peer", sub)
		case !sub.Contains(a):
			v.errf(p+".address", "%s is outside vpn.subnet %s", a, sub)
		case a == sub.Masked().Addr() || a == last:
			v.errf(p+".address", "%s is the network or broadcast address of vpn.subnet %s", a, sub)
		case used[a] == "fw":
			v.errf(p+".address", "%s is fw's own VPN address (the subnet's first)", a)
		case used[a] != "":
			v.errf(p+".address", "%s is already used by %s", a, used[a])
		default:
			used[a] = fmt.Sprintf("vpn.peers[%d] (%s)", i, peer.Name)
		}
	}
}

// lastAddr is the highest address of p (the broadcast address for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// checkPort validates a port number given as text.
func checkPort(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q out of range 1..65535", s)
	}
	return nil
}

func (v *validator) witness() {
	w := v.s.Witness
	if w == "" {
		return
	}
	host, port, err := net.SplitHostPort(w)
	switch {
	case err != nil:
		v.errf("witness", "%q is not host:port (like 10.0.0.5:7700)", w)
	case host == "":
		v.errf("witness", "%q has no host", w)
	default:
		// An address, not a name: the hosts' firewalls admit the witness to
		// the cluster ports by address, before any resolver is up.
		if _, err := netip.ParseAddr(host); err != nil {
			v.errf("witness", "%q: the witness is given by IP address (like 10.0.0.5:7700), not by name", w)
		}
		if err := checkPort(port); err != nil {
			v.errf("witness", "%v", err)
		}
	}
}

func (v *validator) cluster() {
	c := v.s.Cluster
	for _, d := range []struct {
		path string
		d    Duration
	}{{"cluster.heartbeat", c.Heartbeat}, {"cluster.suspect", c.Suspect}, {"cluster.dead", c.Dead}, {"cluster.holddown", c.HoldDown}} {
		if d.d < 0 {
			v.errf(d.path, "must be positive, got %s", d.d.D())
		}
	}
	if c.Heartbeat > 0 && c.Suspect > 0 && c.Suspect <= c.Heartbeat {
		v.errf("cluster.suspect", "%s must be longer than the heartbeat interval %s", c.Suspect.D(), c.Heartbeat.D())
	}
	if c.Suspect > 0 && c.Dead > 0 && c.Dead <= c.Suspect {
		v.errf("cluster.dead", "%s must be longer than suspect %s", c.Dead.D(), c.Suspect.D())
	}
}

func (v *validator) config() {
	c := v.s.Config
	if c.Source != "" {
		if _, err := configsource.Parse(c.Source); err != nil {
			v.errf("config.source", "%v", err)
		}
	}
	if c.Poll.D() < time.Second {
		v.errf("config.poll", "%s is too short: at least 1s", c.Poll.D())
	}
	for i, k := range c.SignedBy {
		if err := configsource.CheckKey(k); err != nil {
			v.errf(fmt.Sprintf("config.signedby[%d]", i), "want an ASCII-armored OpenPGP public key (gpg --armor --export KEYID)")
		}
	}
}

func (v *validator) roles() {
	s := v.s
	names := make([]string, 0, len(s.Roles))
	for name := range s.Roles {
		names = append(names, name)
	}
	slices.Sort(names)
	hosts := hostNames(s)
	for _, name := range names {
		r := s.Roles[name]
		p := "roles." + name
		if !IsRole(name) {
			v.errf(p, "unknown role%s", hint(name, roleNames))
			continue
		}
		limit := MaxRoleCount
		if name == "web" {
			limit = MaxWebCount
		}
		switch {
		case r.Count < 0:
			v.errf(p+".count", "must be ≥ 0, got %d", r.Count)
		case r.Count > limit && name == "web":
			v.errf(p+".count", "%d instances, at most %d", r.Count, limit)
		case r.Count > limit:
			v.errf(p+".count", "%s runs at most 1 instance (only web scales), got %d", name, r.Count)
		}
		if r.CPUWeight < 1 || r.CPUWeight > 10000 {
			v.errf(p+".cpu", "cpu weight %d out of range 1..10000", r.CPUWeight)
		}
		if r.Memory != 0 && r.Memory < 16<<20 {
			v.errf(p+".memory", "%s is too little memory for a role: at least 16MiB", r.Memory)
		}
		if r.Pids < 0 {
			v.errf(p+".pids", "must be ≥ 0, got %d", r.Pids)
		}
		seen := map[string]bool{}
		for i, h := range r.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", p, i)
			if _, _, ok := s.HostByName(h); !ok {
				v.errf(hp, "no host named %q%s", h, hint(h, hosts))
			} else if seen[h] {
				v.errf(hp, "host %q listed twice", h)
			}
			seen[h] = true
		}
		v.caches(name, r)
		keys := make([]string, 0, len(r.Settings))
		for k := range r.Settings {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !settingRE.MatchString(k) {
				v.errf(p+".settings."+k, "setting names are letters, digits, '_', '.' and '-'")
			}
		}
	}
}

// systemUsers are the accounts the role images already have (or their
// daemons run as): a stack user of that name would take them over.
var systemUsers = map[string]bool{
	"root": true, "daemon": true, "bin": true, "sys": true, "sync": true, "games": true, "man": true, "lp": true,
	"mail": true, "news": true, "uucp": true, "proxy": true, "www-data": true, "backup": true, "list": true,
	"irc": true, "gnats": true, "nobody": true, "_apt": true, "sshd": true, "messagebus": true, "mysql": true,
	"redis": true, "memcache": true, "postfix": true, "varnish": true, "vcache": true, "haproxy": true,
	"ftp": true, "systemd-network": true, "systemd-resolve": true, "systemd-timesync": true, "nginx": true,
}

func (v *validator) users() {
	seen := map[string]int{}
	uids := map[int]string{}
	for i, u := range v.s.Users {
		p := fmt.Sprintf("users[%d]", i)
		switch {
		case !userRE.MatchString(u.Name):
			v.errf(p+".name", "%q is not a valid user name: lower-case letters, digits, '_' and '-', starting with a letter or '_'", u.Name)
		case systemUsers[u.Name]:
			v.errf(p+".name", "%q is a system account of the role images; choose another name (admins log in as root with admin: true)", u.Name)
		case seen[u.Name] > 0:
			v.errf(p+".name", "user %q is already defined at users[%d]", u.Name, seen[u.Name]-1)
		case uids[u.UID()] != "":
			v.errf(p+".name", "user %q would get the same uid (%d) as %q; rename one of them", u.Name, u.UID(), uids[u.UID()])
		default:
			seen[u.Name] = i + 1
			uids[u.UID()] = u.Name
		}

		for j, k := range u.Keys {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
				v.errf(fmt.Sprintf("%s.keys[%d]", p, j), "not an OpenSSH public key (like \"ssh-ed25519 AAAA... alice@laptop\")")
			}
		}
	}
}

// caches checks a role's Redis and Memcached instances.
func (v *validator) caches(role string, r Role) {
	p := "roles." + role
	if role != "db" {
		if len(r.Redis) > 0 {
			v.errf(p+".redis", "only db runs Redis instances")
		}
		if len(r.Memcached) > 0 {
			v.errf(p+".memcached", "only db runs Memcached instances")
		}
		return
	}
	ports := map[uint16]string{3306: "MariaDB"}
	for _, kind := range []struct {
		key  string
		list []Cache
	}{{"redis", r.Redis}, {"memcached", r.Memcached}} {
		names := map[string]bool{}
		for i, c := range kind.list {
			cp := fmt.Sprintf("%s.%s[%d]", p, kind.key, i)
			switch {
			case !labelRE.MatchString(c.Name):
				v.errf(cp+".name", "%q is not a valid instance name: lower-case letters, digits and '-'", c.Name)
			case names[c.Name]:
				v.errf(cp+".name", "%s instance %q is already defined", kind.key, c.Name)
			}
			names[c.Name] = true
			switch {
			case c.Port == 0:
				v.errf(cp+".port", "port 0 is not usable: want 1..65535")
			case ports[c.Port] != "":
				v.errf(cp+".port", "port %d is already used by %s", c.Port, ports[c.Port])
			default:
				ports[c.Port] = fmt.Sprintf("%s %s", kind.key, c.Name)
			}
			if c.Memory != 0 && c.Memory < 1<<20 {
				v.errf(cp+".memory", "%s is too little: at least 1MiB", c.Memory)
			}
		}
	}
}

var (
	dirRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	domainRE = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

func (v *validator) sites() {
	vhosts := map[string]int{}
	domains := map[string]string{}
	for i, site := range v.s.Sites {
		p := fmt.Sprintf("sites[%d]", i)
		okGroup, okName := dirRE.MatchString(site.Group) && !strings.Contains(site.Group, ".."), dirRE.MatchString(site.Name) && !strings.Contains(site.Name, "..")
		if !okGroup {
			v.errf(p+".group", "%q is not a valid directory name: lower-case letters, digits, '.', '_' and '-'", site.Group)
		}
		if !okName {
			v.errf(p+".name", "%q is not a valid directory name: lower-case letters, digits, '.', '_' and '-'", site.Name)
		}
		if okGroup && okName {
			key := site.Group + "/" + site.Name
			if j, ok := vhosts[key]; ok {
				v.errf(p+".name", "site %s is already defined at sites[%d]", key, j)
			}
			vhosts[key] = i
		}
		if len(site.Domains) == 0 {
			v.errf(p+".domains", "a site needs at least one domain")
		}
		for j, d := range site.Domains {
			dp := fmt.Sprintf("%s.domains[%d]", p, j)
			switch {
			case len(d) > 253 || !domainRE.MatchString(d):
				v.errf(dp, "%q is not a host name (lower case, like shop.example.com or *.example.com)", d)
			case domains[d] != "":
				v.errf(dp, "%s is already served by %s", d, domains[d])
			default:
				domains[d] = fmt.Sprintf("sites[%d] (%s/%s)", i, site.Group, site.Name)
			}
		}
		for j, pfx := range site.MaintenanceAllow {
			if pfx != pfx.Masked() {
				v.errf(fmt.Sprintf("%s.maintenanceallow[%d]", p, j), "%s has host bits set; did you mean %s?", pfx, pfx.Masked())
			}
		}
	}
}
