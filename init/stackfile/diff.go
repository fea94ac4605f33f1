package stackfile

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// InstanceChange is an instance present in both stacks whose settings
// differ.
type InstanceChange struct {
	Old, New Instance
	// Fields lists what changed, sorted: address, cpu, host, image,
	// memcached, memory, pids, redis, settings.<key>, sites, tls, users,
	// volume.
	Fields []string `json:"fields"`
	// Recreate is true when the environment itself must be rebuilt (image,
	// volume, address or host changed). Otherwise cgroup limits are updated
	// in place and, for settings or users, only the role's services are
	// reloaded or restarted.
	Recreate bool `json:"recreate"`
}

// HostChange is a host present in both stacks whose entry differs.
type HostChange struct {
	Name   string   `json:"name"`
	Fields []string `json:"fields"` // address, fence, gateway, mac, pair, pairlink
}

// Changes is what differs between two stacks, at the level the reconcile
// step acts on. A zero Changes means nothing to do.
type Changes struct {
	// Instances to start, to stop, and to update.
	Added   []Instance       `json:"added,omitempty"`
	Removed []Instance       `json:"removed,omitempty"`
	Changed []InstanceChange `json:"changed,omitempty"`
	// AllowAdded and AllowRemoved are public.allow entries, applied to the
	// nftables set incrementally.
	AllowAdded   []netip.Prefix `json:"allowAdded,omitempty"`
	AllowRemoved []netip.Prefix `json:"allowRemoved,omitempty"`
	// Firewall lists changed fields that the generated ruleset depends on
	// (besides the allow-list); non-empty means regenerate and apply it.
	Firewall []string `json:"firewall,omitempty"`
	// VPN peers to add, remove, or update (key or address changed).
	PeersAdded   []VPNPeer `json:"peersAdded,omitempty"`
	PeersRemoved []VPNPeer `json:"peersRemoved,omitempty"`
	PeersChanged []VPNPeer `json:"peersChanged,omitempty"`
	// VPNKey is true when fw's WireGuard private key changed.
	VPNKey bool `json:"vpnKey,omitempty"`
	// Hosts added, removed or changed.
	HostsAdded   []Host       `json:"hostsAdded,omitempty"`
	HostsRemoved []Host       `json:"hostsRemoved,omitempty"`
	HostsChanged []HostChange `json:"hostsChanged,omitempty"`
	// Cluster lists changed cluster.* and witness fields.
	Cluster []string `json:"cluster,omitempty"`
	// Config lists changed config.* fields (source, poll, signedby).
	Config []string `json:"config,omitempty"`
	// Name is true when the stack was renamed.
	Name bool `json:"name,omitempty"`
}

// Empty reports whether there is nothing to apply.
func (c *Changes) Empty() bool {
	return len(c.Added) == 0 && len(c.Removed) == 0 && len(c.Changed) == 0 &&
		len(c.AllowAdded) == 0 && len(c.AllowRemoved) == 0 && len(c.Firewall) == 0 &&
		len(c.PeersAdded) == 0 && len(c.PeersRemoved) == 0 && len(c.PeersChanged) == 0 && !c.VPNKey &&
		len(c.HostsAdded) == 0 && len(c.HostsRemoved) == 0 && len(c.HostsChanged) == 0 &&
		len(c.Cluster) == 0 && len(c.Config) == 0 && !c.Name
}

// Diff computes what changes from old to new. Both must be valid stacks
// (as Parse returns them). old may be nil: everything in new is added.
func Diff(old, new *Stack) (Changes, error) {
	var c Changes
	if old == nil {
		old = &Stack{}
	}
	oldInsts, err := old.Instances()
	if err != nil {
		return c, fmt.Errorf("old stack: %w", err)
	}
	newInsts, err := new.Instances()
	if err != nil {
		return c, fmt.Errorf("new stack: %w", err)
	}
	c.Name = old.Name != new.Name

	// Instances, keyed by name; start order is kept for Added and reverse
	// start order for Removed, the order they should be acted on.
	oldBy := map[string]Instance{}
	for _, in := range oldInsts {
		oldBy[in.Name] = in
	}
	newBy := map[string]bool{}
	for _, in := range newInsts {
		newBy[in.Name] = true
		prev, ok := oldBy[in.Name]
		if !ok {
			c.Added = append(c.Added, in)
			continue
		}
		if ch := instanceChange(old, new, prev, in); len(ch.Fields) > 0 {
			c.Changed = append(c.Changed, ch)
		}
	}
	for i := len(oldInsts) - 1; i >= 0; i-- {
		if !newBy[oldInsts[i].Name] {
			c.Removed = append(c.Removed, oldInsts[i])
		}
	}

	// The public allow-list.
	oldAllow, newAllow := setOf(old.Public.Allow), setOf(new.Public.Allow)
	for _, p := range new.Public.Allow {
		if !oldAllow[p] {
			c.AllowAdded = append(c.AllowAdded, p)
		}
	}
	for _, p := range old.Public.Allow {
		if !newAllow[p] {
			c.AllowRemoved = append(c.AllowRemoved, p)
		}
	}

	// Inputs of the ruleset other than the allow-list.
	fw := func(path string, differ bool) {
		if differ {
			c.Firewall = append(c.Firewall, path)
		}
	}
	fw("internal", old.Internal != new.Internal)
	fw("pairnet", old.PairNet != new.PairNet)
	fw("public.vip", old.Public.VIP != new.Public.VIP)
	fw("public.ratelimit", old.Public.RateLimit != new.Public.RateLimit)
	fw("vpn.port", old.VPN.Port != new.VPN.Port)
	fw("vpn.subnet", old.VPN.Subnet != new.VPN.Subnet)
	fw("witness", old.Witness != new.Witness)
	fw("roles.db cache ports", !slices.Equal(old.CachePorts(), new.CachePorts()))
	fw("instances", len(c.Added) > 0 || len(c.Removed) > 0 || slices.ContainsFunc(c.Changed, func(ch InstanceChange) bool {
		return slices.Contains(ch.Fields, "address") || slices.Contains(ch.Fields, "host")
	}))
	fw("hosts", !slices.EqualFunc(old.Hosts, new.Hosts, func(a, b Host) bool {
		return a.Name == b.Name && a.Address == b.Address && linkAddr(a) == linkAddr(b)
	}))

	// VPN peers, by name.
	oldPeers := map[string]VPNPeer{}
	for _, p := range old.VPN.Peers {
		oldPeers[p.Name] = p
	}
	newPeers := map[string]bool{}
	for _, p := range new.VPN.Peers {
		newPeers[p.Name] = true
		prev, ok := oldPeers[p.Name]
		switch {
		case !ok:
			c.PeersAdded = append(c.PeersAdded, p)
		case prev != p:
			c.PeersChanged = append(c.PeersChanged, p)
		}
	}
	for _, p := range old.VPN.Peers {
		if !newPeers[p.Name] {
			c.PeersRemoved = append(c.PeersRemoved, p)
		}
	}
	c.VPNKey = old.VPN.PrivateKey != new.VPN.PrivateKey

	// Hosts, by name.
	oldHosts := map[string]Host{}
	for _, h := range old.Hosts {
		oldHosts[h.Name] = h
	}
	newHosts := map[string]bool{}
	for _, h := range new.Hosts {
		newHosts[h.Name] = true
		prev, ok := oldHosts[h.Name]
		if !ok {
			c.HostsAdded = append(c.HostsAdded, h)
			continue
		}
		if f := hostFields(prev, h); len(f) > 0 {
			c.HostsChanged = append(c.HostsChanged, HostChange{Name: h.Name, Fields: f})
		}
	}
	for _, h := range old.Hosts {
		if !newHosts[h.Name] {
			c.HostsRemoved = append(c.HostsRemoved, h)
		}
	}

	field := func(list *[]string, path string, differ bool) {
		if differ {
			*list = append(*list, path)
		}
	}
	field(&c.Cluster, "cluster.heartbeat", old.Cluster.Heartbeat != new.Cluster.Heartbeat)
	field(&c.Cluster, "cluster.suspect", old.Cluster.Suspect != new.Cluster.Suspect)
	field(&c.Cluster, "cluster.dead", old.Cluster.Dead != new.Cluster.Dead)
	field(&c.Cluster, "cluster.holddown", old.Cluster.HoldDown != new.Cluster.HoldDown)
	field(&c.Cluster, "witness", old.Witness != new.Witness)
	field(&c.Config, "config.source", old.Config.Source != new.Config.Source)
	field(&c.Config, "config.poll", old.Config.Poll != new.Config.Poll)
	field(&c.Config, "config.signedby", !slices.Equal(old.Config.SignedBy, new.Config.SignedBy))
	return c, nil
}

func linkAddr(h Host) netip.Prefix {
	if h.PairLink == nil {
		return netip.Prefix{}
	}
	return h.PairLink.Address
}

func setOf(ps []netip.Prefix) map[netip.Prefix]bool {
	m := make(map[netip.Prefix]bool, len(ps))
	for _, p := range ps {
		m[p] = true
	}
	return m
}

func hostFields(a, b Host) []string {
	var f []string
	add := func(name string, differ bool) {
		if differ {
			f = append(f, name)
		}
	}
	add("address", a.Address != b.Address)
	add("fence", !ptrEqual(a.Fence, b.Fence))
	add("gateway", a.Gateway != b.Gateway)
	add("mac", !strings.EqualFold(a.MAC, b.MAC))
	add("pair", a.Pair != b.Pair)
	add("pairlink", !ptrEqual(a.PairLink, b.PairLink))
	return f
}

func ptrEqual[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// instanceChange compares one instance's effective settings in two stacks.
func instanceChange(old, new *Stack, a, b Instance) InstanceChange {
	ra, rb := old.Roles[a.Role], new.Roles[b.Role]
	ch := InstanceChange{Old: a, New: b}
	add := func(name string, differ, recreate bool) {
		if differ {
			ch.Fields = append(ch.Fields, name)
			ch.Recreate = ch.Recreate || recreate
		}
	}
	add("address", a.Addr != b.Addr, true)
	add("cpu", ra.CPUWeight != rb.CPUWeight, false)
	add("host", a.Host != b.Host, true)
	add("image", ra.Image != rb.Image, true)
	add("memory", ra.Memory != rb.Memory, false)
	add("pids", ra.Pids != rb.Pids, false)
	keys := slices.Sorted(maps.Keys(ra.Settings))
	for _, k := range slices.Sorted(maps.Keys(rb.Settings)) {
		if _, ok := ra.Settings[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		va, oka := ra.Settings[k]
		vb, okb := rb.Settings[k]
		add("settings."+k, va != vb || oka != okb, false)
	}
	if a.Role == "acc" {
		add("users", !slices.EqualFunc(old.Users, new.Users, func(x, y User) bool {
			return x.Name == y.Name && x.Admin == y.Admin && slices.Equal(x.Keys, y.Keys)
		}), false)
	}
	add("volume", ra.Volume != rb.Volume, true)
	switch a.Role {
	case "db":
		add("redis", !slices.Equal(ra.Redis, rb.Redis), false)
		add("memcached", !slices.Equal(ra.Memcached, rb.Memcached), false)
	case "lb":
		add("sites", !sitesEqual(old.Sites, new.Sites), false)
		add("tls", !ptrEqual(old.Public.TLS, new.Public.TLS), false)
	case "web":
		add("sites", !sitesEqual(old.Sites, new.Sites), false)
		// web reads the caches' names, ports and passwords from a rendered
		// file (a memory limit alone changes nothing there).
		add("caches", !slices.Equal(cacheEndpoints(old), cacheEndpoints(new)), false)
	}
	slices.Sort(ch.Fields)
	return ch
}

// cacheEndpoints names db's caches as web sees them: kind, name and port.
func cacheEndpoints(s *Stack) []string {
	var out []string
	for _, c := range s.RedisInstances() {
		out = append(out, fmt.Sprintf("redis %s %d", c.Name, c.Port))
	}
	for _, c := range s.MemcachedInstances() {
		out = append(out, fmt.Sprintf("memcached %s %d", c.Name, c.Port))
	}
	return out
}

func sitesEqual(a, b []Site) bool {
	return slices.EqualFunc(a, b, func(x, y Site) bool {
		return x.Group == y.Group && x.Name == y.Name && slices.Equal(x.Domains, y.Domains) && slices.Equal(x.MaintenanceAllow, y.MaintenanceAllow)
	})
}

// String summarises the changes, one line each, for operators.
func (c *Changes) String() string {
	if c.Empty() {
		return "no changes\n"
	}
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	if c.Name {
		line("~ stack renamed")
	}
	for _, in := range c.Removed {
		line("- instance %s (%s on %s)", in.Name, in.Addr, in.Host)
	}
	for _, in := range c.Added {
		line("+ instance %s (%s on %s)", in.Name, in.Addr, in.Host)
	}
	for _, ch := range c.Changed {
		how := "update in place"
		if ch.Recreate {
			how = "recreate"
		}
		line("~ instance %s: %s (%s)", ch.New.Name, strings.Join(ch.Fields, ", "), how)
	}
	for _, p := range c.AllowRemoved {
		line("- allow %s", p)
	}
	for _, p := range c.AllowAdded {
		line("+ allow %s", p)
	}
	if len(c.Firewall) > 0 {
		line("~ firewall ruleset: %s", strings.Join(c.Firewall, ", "))
	}
	for _, p := range c.PeersRemoved {
		line("- vpn peer %s", p.Name)
	}
	for _, p := range c.PeersAdded {
		line("+ vpn peer %s", p.Name)
	}
	for _, p := range c.PeersChanged {
		line("~ vpn peer %s", p.Name)
	}
	if c.VPNKey {
		line("~ vpn private key")
	}
	for _, h := range c.HostsRemoved {
		line("- host %s", h.Name)
	}
	for _, h := range c.HostsAdded {
		line("+ host %s", h.Name)
	}
	for _, h := range c.HostsChanged {
		line("~ host %s: %s", h.Name, strings.Join(h.Fields, ", "))
	}
	if len(c.Cluster) > 0 {
		line("~ cluster: %s", strings.Join(c.Cluster, ", "))
	}
	if len(c.Config) > 0 {
		line("~ config: %s", strings.Join(c.Config, ", "))
	}
	return b.String()
}
