// Package clusterconf derives a member's cluster settings from the stack
// file: the raft voters (the hosts of pairs, plus the witness) and the
// heartbeat paths (the pair link, and the public LAN) with each peer's
// address on them.
package clusterconf

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// Ports used by the cluster on every member.
const (
	RaftPort      = 7700
	HeartbeatPort = 7701
)

// WitnessID is the witness's member ID.
const WitnessID = "witness"

// Member is one member's settings.
type Member struct {
	Self    cluster.Config
	Paths   []heartbeat.Path
	Timing  cluster.Timing
	Witness bool // the stack has a witness
}

// lanAddr is a host's address on the public LAN, if fixed in the stack.
func lanAddr(h stackfile.Host) (netip.Addr, bool) {
	if h.Address.IsValid() {
		return h.Address.Addr(), true
	}
	return netip.Addr{}, false
}

// pairAddr is a host's pair-link address, if it has one.
func pairAddr(h stackfile.Host) (netip.Addr, bool) {
	if h.PairLink != nil && h.PairLink.Address.IsValid() {
		return h.PairLink.Address.Addr(), true
	}
	return netip.Addr{}, false
}

// For returns the settings of member self (a host name or "witness").
// Raft runs over the LAN, the one network every member (the witness too)
// shares; the pair link carries heartbeats and replication.
func For(s *stackfile.Stack, self string) (Member, error) {
	var m Member
	var members []cluster.Member
	raftAddr := map[string]string{}
	for _, h := range s.Hosts {
		if h.Pair == "" {
			continue
		}
		a, ok := lanAddr(h)
		if !ok {
			return m, fmt.Errorf("hosts.%s: a paired host needs a fixed address for the cluster", h.Name)
		}
		addr := net.JoinHostPort(a.String(), strconv.Itoa(RaftPort))
		raftAddr[h.Name] = addr
		members = append(members, cluster.Member{ID: h.Name, Addr: addr, Voter: true})
	}
	var witnessIP string
	if s.Witness != "" {
		host, port, err := net.SplitHostPort(s.Witness)
		if err != nil {
			return m, fmt.Errorf("witness %q: %w", s.Witness, err)
		}
		witnessIP = host
		members = append(members, cluster.Member{ID: WitnessID, Addr: net.JoinHostPort(host, port), Voter: true})
		raftAddr[WitnessID] = s.Witness
		m.Witness = true
	}
	bind, ok := raftAddr[self]
	if !ok {
		return m, fmt.Errorf("%s is not a cluster member (only paired hosts and the witness are)", self)
	}
	timing := cluster.DefaultTiming
	if d := s.Cluster.Dead.D(); d > 0 {
		// Raft's follower timeout is a fifth of the dead time so that an
		// election after a leader's loss (one or two timeouts) ends within
		// the lease: hosts keep their roles while the survivors elect.
		timing = cluster.Timing{Heartbeat: d / 5, Lease: d * 4 / 5}
	}
	m.Timing = timing
	m.Self = cluster.Config{ID: self, Bind: bind, Members: members, Timing: timing}

	// Heartbeat paths: the pair link between the two hosts of a pair, and
	// the LAN between every member.
	hb := func(a netip.Addr) string { return net.JoinHostPort(a.String(), strconv.Itoa(HeartbeatPort)) }
	lan := heartbeat.Path{Name: "lan", Peers: map[string]string{}}
	pair := heartbeat.Path{Name: "pair", Peers: map[string]string{}}
	var selfHost *stackfile.Host
	if h, _, ok := s.HostByName(self); ok {
		selfHost = h
	}
	for _, h := range s.Hosts {
		if h.Pair == "" || h.Name == self {
			continue
		}
		if a, ok := lanAddr(h); ok {
			lan.Peers[h.Name] = hb(a)
		}
		if selfHost != nil && selfHost.Pair == h.Name {
			if a, ok := pairAddr(h); ok {
				pair.Peers[h.Name] = hb(a)
			}
		}
	}
	if self != WitnessID && witnessIP != "" {
		lan.Peers[WitnessID] = net.JoinHostPort(witnessIP, strconv.Itoa(HeartbeatPort))
	}
	switch {
	case self == WitnessID:
		lan.Local = net.JoinHostPort(witnessIP, strconv.Itoa(HeartbeatPort))
	case selfHost != nil:
		a, ok := lanAddr(*selfHost)
		if !ok {
			return m, fmt.Errorf("hosts.%s: needs a fixed address for heartbeats", self)
		}
		lan.Local = hb(a)
		if a, ok := pairAddr(*selfHost); ok && len(pair.Peers) > 0 {
			pair.Local = hb(a)
			m.Paths = append(m.Paths, pair)
		}
	}
	m.Paths = append(m.Paths, lan)
	return m, nil
}

// IDs lists the cluster's member IDs: who may prove itself on the
// cluster ports (clusterauth checks a peer's certificate names one).
func (m Member) IDs() []string {
	ids := make([]string, 0, len(m.Self.Members))
	for _, mem := range m.Self.Members {
		ids = append(ids, mem.ID)
	}
	return ids
}
