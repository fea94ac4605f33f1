// Package stackfile defines the declarative stack file: the one YAML document
// that describes a whole magestack stack (hosts, addresses, VPN, roles), and
// the derived facts every other package reads from it (role instances, their
// fixed internal addresses and their placement on hosts).
package stackfile

//go:generate go run ./internal/gendoc -dir . -out ../../docs/stackfile.md

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"gopkg.in/yaml.v3"
)

// Stack is the whole stack file. Field names in yaml tags are the file's keys.
type Stack struct {
	// Name of the stack, a DNS label. Required.
	Name string `yaml:"stack"`
	// Hosts are the dedicated hosts, at least one. Required.
	Hosts []Host `yaml:"hosts"`
	// Public describes the public side: the website's floating address and
	// client allow-lists.
	Public Public `yaml:"public"`
	// Internal is the stack's internal subnet; every role instance gets a
	// fixed address from it (hosts' bridges .1-.19, fw .20, lb .30, db .40,
	// mail .50, acc .60, monitor .70, web .100 up). Default 172.16.0.0/24.
	Internal netip.Prefix `yaml:"internal"`
	// PairNet is the subnet of the hosts' dedicated pair links (heartbeats,
	// replication). Optional.
	PairNet netip.Prefix `yaml:"pairnet,omitempty"`
	// VPN is the WireGuard management VPN terminating on fw.
	VPN VPN `yaml:"vpn"`
	// Witness is host:port of the tie-breaker voter (IPv6 in brackets);
	// empty for none.
	Witness string `yaml:"witness,omitempty"`
	// Cluster tunes failure detection.
	Cluster Cluster `yaml:"cluster,omitempty"`
	// Config says where hosts fetch later revisions of this file from.
	Config ConfigSource `yaml:"config,omitempty"`
	// Roles maps role name (fw, lb, web, db, mail, acc, monitor) to its
	// settings. Omitted roles get defaults (see Role defaults).
	Roles map[string]Role `yaml:"roles"`
	// Users are the people who may log in to the acc role.
	Users []User `yaml:"users,omitempty"`
	// Sites are the websites the web instances serve; empty: one default
	// site answering every host name.
	Sites []Site `yaml:"sites,omitempty"`

	src *source // where the stack was parsed from; nil when built in code
}

// Host is one dedicated host.
type Host struct {
	// Name is the host's name, a DNS label. Required.
	Name string `yaml:"name"`
	// MAC is the hardware address of the host's boot NIC; it is how a
	// booting host finds itself in the file. Required.
	MAC string `yaml:"mac"`
	// Address is the host's public address with prefix length; empty means
	// DHCP.
	Address netip.Prefix `yaml:"address,omitempty"`
	// Gateway is the default gateway when Address is static.
	Gateway netip.Addr `yaml:"gateway,omitempty"`
	// Pair names this host's pair peer.
	Pair string `yaml:"pair,omitempty"`
	// PairLink is the host's address on the dedicated pair link, with the
	// interface (by MAC) that carries it. Optional.
	PairLink *PairLink `yaml:"pairlink,omitempty"`
	// Fence is how the peer powers this host off before taking over.
	Fence *Fence `yaml:"fence,omitempty"`
}

// PairLink is a host's side of the dedicated pair link.
type PairLink struct {
	// MAC of the NIC cabled to the pair peer. Required.
	MAC string `yaml:"mac"`
	// Address on the pair link with prefix length; inside pairnet when
	// that is set. Required.
	Address netip.Prefix `yaml:"address"`
}

// Fence is a host's fence device.
type Fence struct {
	// Type is one of "redfish", "ipmi", "qmp". Required.
	Type string `yaml:"type"`
	// Address of the fence device: a Redfish base URL, an IPMI host[:port],
	// or a QMP socket path or host:port. Required.
	Address string `yaml:"address"`
	// User logs in to the fence device.
	User string `yaml:"user,omitempty"`
	// Password of User on the fence device.
	Password string `yaml:"password,omitempty"`
}

// Public is the public side of the stack.
type Public struct {
	// VIP is the floating website address, with prefix length. It must lie
	// inside the public subnet of every host with a static address.
	VIP netip.Prefix `yaml:"vip,omitempty"`
	// Allow lists client addresses or prefixes that bypass the public rate
	// limits (kept as an nftables set, updated incrementally).
	Allow []netip.Prefix `yaml:"allow,omitempty"`
	// RateLimit is the per-source new-connection limit on the public ports,
	// per second. 0 means the default (100); -1 disables it.
	RateLimit int `yaml:"ratelimit,omitempty"`
	// TLS is the certificate lb serves on 443; empty: a self-signed one
	// generated on the host.
	TLS *TLS `yaml:"tls,omitempty"`
}

// TLS is a certificate and its private key, both PEM.
type TLS struct {
	// Cert is the PEM certificate chain, leaf first. Required.
	Cert string `yaml:"cert"`
	// Key is the PEM private key of the leaf certificate. Required.
	Key string `yaml:"key"`
}

// VPN is the management VPN.
type VPN struct {
	// Port is the WireGuard UDP port on the public side. Default 51820.
	Port uint16 `yaml:"port"`
	// Subnet holds the VPN addresses: fw takes the first, peers the next
	// ones. Default 10.8.0.0/24.
	Subnet netip.Prefix `yaml:"subnet"`
	// PrivateKey is fw's WireGuard private key (base64). Empty (the
	// advice: keys do not belong in Git): derived from the stack secret, the
	// same on every host, so clients keep working after a failover.
	PrivateKey string `yaml:"privatekey,omitempty"`
	// Peers are the operators' VPN clients.
	Peers []VPNPeer `yaml:"peers,omitempty"`
}

// VPNPeer is one operator's VPN client.
type VPNPeer struct {
	// Name of the peer, unique in the list. Required.
	Name string `yaml:"name"`
	// Key is the peer's WireGuard public key (base64). Required.
	Key string `yaml:"key"`
	// Address is the peer's address inside the VPN subnet; empty: assigned
	// in order of the peer list.
	Address netip.Addr `yaml:"address,omitempty"`
}

// Cluster tunes pair failure detection.
type Cluster struct {
	// Heartbeat is the interval between heartbeats on each path. Default
	// 100ms.
	Heartbeat Duration `yaml:"heartbeat,omitempty"`
	// Suspect is how long without heartbeats before the peer is suspect;
	// longer than heartbeat. Default 300ms.
	Suspect Duration `yaml:"suspect,omitempty"`
	// Dead is how long without heartbeats before the peer is declared dead;
	// longer than suspect. Default 1s.
	Dead Duration `yaml:"dead,omitempty"`
	// HoldDown is the least time between two failovers. Default 1m.
	HoldDown Duration `yaml:"holddown,omitempty"`
}

// ConfigSource says where the stack file comes from after boot.
type ConfigSource struct {
	// Source is a path, an http(s) URL or git+<url>#<ref>:<path> (see
	// "Config sources" below).
	Source string `yaml:"source,omitempty"`
	// Poll is how often hosts check the source for a new revision; at
	// least 1s. Default 1m.
	Poll Duration `yaml:"poll,omitempty"`
	// SignedBy lists armored OpenPGP public keys; when set, only commits
	// signed by one of them are accepted.
	SignedBy []string `yaml:"signedby,omitempty"`
}

// Role holds the settings of one role.
type Role struct {
	// Count is the number of instances: web 0..150, every other role 0 or
	// 1. Default 1 (also when the role is written without count).
	Count int `yaml:"count"`
	// Image names the role's image; empty: the role's real image, the
	// Debian image named after the role (fw, whose work the host does,
	// runs the built-in image). `busybox` is the built-in test image.
	Image string `yaml:"image,omitempty"`
	// CPUWeight is the cgroup cpu.weight (1..10000); 0: the role's default.
	CPUWeight int `yaml:"cpu,omitempty"`
	// Memory is the cgroup memory.max (at least 16MiB); 0: the role's
	// default.
	Memory Size `yaml:"memory,omitempty"`
	// Pids is the cgroup pids.max; 0: the role's default.
	Pids int `yaml:"pids,omitempty"`
	// Volume is the size of the role's replicated data volume; 0: none.
	Volume Size `yaml:"volume,omitempty"`
	// Hosts restricts where instances may run; empty: any host.
	Hosts []string `yaml:"hosts,omitempty"`
	// Settings are service settings passed to the role's configuration
	// templates (e.g. php memory_limit); a change restarts only this role's
	// services.
	Settings map[string]string `yaml:"settings,omitempty"`
	// Redis lists Redis instances, each its own service (db only).
	Redis []Cache `yaml:"redis,omitempty"`
	// Memcached lists Memcached instances, each its own service (db only).
	Memcached []Cache `yaml:"memcached,omitempty"`
}

// Cache is one Redis or Memcached instance inside db.
type Cache struct {
	// Name of the instance, unique per kind: its service is redis-<name>
	// or memcached-<name>. Required.
	Name string `yaml:"name"`
	// Port it listens on inside db; default 6379 (Redis) or 11211
	// (Memcached) for the first instance, each next one the next port.
	Port uint16 `yaml:"port,omitempty"`
	// Memory is the instance's memory limit (maxmemory, -m); 0: the
	// service's default.
	Memory Size `yaml:"memory,omitempty"`
}

// Site is one website (a vhost), laid out as
// /microcloud/domains/<group>/domains/<name>/http.
type Site struct {
	// Group is the directory grouping sites of one customer. Required.
	Group string `yaml:"group"`
	// Name is the vhost's directory name. Required.
	Name string `yaml:"name"`
	// Domains are the host names the site answers to, the first being
	// canonical. Required.
	Domains []string `yaml:"domains"`
	// MaintenanceAllow lists client prefixes that still see the live site
	// while the site is in maintenance mode.
	MaintenanceAllow []netip.Prefix `yaml:"maintenanceallow,omitempty"`
}

// User is a person who may log in to acc, with an account of their own
// (home /data/home/<name> on acc's volume).
type User struct {
	// Name is the login name: lower-case letters, digits, '_' and '-';
	// not a system account's name (root, www-data, ...). Required.
	Name string `yaml:"name"`
	// Keys are the user's OpenSSH public keys (authorized_keys lines).
	Keys []string `yaml:"keys"`
	// Admin lets the user's keys log in as root too.
	Admin bool `yaml:"admin,omitempty"`
}

// UID is the user's numeric id in acc: a hash of the name, so it stays the
// same when users are added or reordered and files in a home keep their
// owner. Validation refuses two names that hash to one id.
func (u User) UID() int {
	h := fnv.New32a()
	h.Write([]byte(u.Name))
	return firstUserUID + int(h.Sum32()%userUIDSpan)
}

// The range user ids are hashed into: above Debian's dynamic range for
// local users (1000-59999 is adduser's default; images make none there).
const (
	firstUserUID = 20000
	userUIDSpan  = 40000
)

// Duration is a time.Duration written as "100ms", "1s", "1m".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalText parses Go duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Marshal writes the stack as a stack file (with defaults filled in, as the
// hosts run it); Parse reads it back to an Equal stack.
func (s *Stack) Marshal() ([]byte, error) {
	n, err := encode(reflect.ValueOf(s).Elem())
	if err != nil {
		return nil, fmt.Errorf("encode stack %s: %w", s.Name, err)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("encode stack %s: %w", s.Name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode stack %s: %w", s.Name, err)
	}
	return b.Bytes(), nil
}

// Equal reports whether two stacks describe the same thing, wherever they
// were parsed from.
func Equal(a, b *Stack) bool {
	x, y := *a, *b
	x.src, y.src = nil, nil
	return reflect.DeepEqual(normalized(&x), normalized(&y))
}

// normalized makes empty and nil collections compare equal.
func normalized(s *Stack) *Stack {
	c := *s
	if len(c.Hosts) == 0 {
		c.Hosts = nil
	}
	if len(c.Public.Allow) == 0 {
		c.Public.Allow = nil
	}
	if len(c.VPN.Peers) == 0 {
		c.VPN.Peers = nil
	}
	if len(c.Config.SignedBy) == 0 {
		c.Config.SignedBy = nil
	}
	if len(c.Users) == 0 {
		c.Users = nil
	}
	c.Sites = slices.Clone(c.Sites)
	if len(c.Sites) == 0 {
		c.Sites = nil
	}
	for i := range c.Sites {
		if len(c.Sites[i].Domains) == 0 {
			c.Sites[i].Domains = nil
		}
		if len(c.Sites[i].MaintenanceAllow) == 0 {
			c.Sites[i].MaintenanceAllow = nil
		}
	}
	c.Users = slices.Clone(c.Users)
	for i := range c.Users {
		if len(c.Users[i].Keys) == 0 {
			c.Users[i].Keys = nil
		}
	}
	roles := make(map[string]Role, len(c.Roles))
	for k, r := range c.Roles {
		if len(r.Hosts) == 0 {
			r.Hosts = nil
		}
		if len(r.Settings) == 0 {
			r.Settings = nil
		}
		if len(r.Redis) == 0 {
			r.Redis = nil
		}
		if len(r.Memcached) == 0 {
			r.Memcached = nil
		}
		roles[k] = r
	}
	c.Roles = roles
	return &c
}
