// Package heartbeat detects a lost peer fast: every member sends a small UDP
// datagram to every other member every interval (100 ms by default) over
// each network path it has (the pair link and the public LAN). A peer is
// suspect when no path has carried its heartbeat for the suspect time, and
// dead after the dead time. Losing one path is reported, never acted on.
//
// Heartbeats are authenticated (HMAC-SHA256 under the stack's heartbeat
// key, see package clusterauth) and carry the sender's incarnation and
// sequence, so a forged or replayed datagram cannot make a dead peer look
// alive; such datagrams are dropped and counted.
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"time"
)

// State is what a member knows of a peer or a path.
type State string

const (
	Alive   State = "alive"
	Suspect State = "suspect"
	Dead    State = "dead"
	// Unknown: never heard from since start.
	Unknown State = "unknown"
)

// Path is one network path: the local address to listen and send on, and
// each peer's address on that path.
type Path struct {
	Name  string            // "pair", "lan"
	Local string            // ip:port to bind
	Peers map[string]string // peer ID → ip:port
}

// Config configures a Monitor.
type Config struct {
	ID       string
	Paths    []Path
	Interval time.Duration // default 100ms
	Suspect  time.Duration // default 300ms
	Dead     time.Duration // default 1s
	// OnChange is told when a peer's overall state or one of its paths
	// changes.
	OnChange func(Change)
	Logger   *slog.Logger
	// Key authenticates heartbeats (the stack's heartbeat key, at least
	// MinKeyLen bytes): required.
	Key []byte
	// MaxSkew is how far a restarted sender's clock may be from this one's
	// for its first heartbeats to count (default DefaultMaxSkew).
	MaxSkew time.Duration
}

// DefaultMaxSkew bounds replays after a restart, and is loose enough for
// hosts whose clocks are not synchronised to the second.
const DefaultMaxSkew = time.Minute

// Drops counts the datagrams a Monitor refused, by why.
type Drops struct {
	Malformed uint64 `json:"malformed"` // not a heartbeat
	Forged    uint64 `json:"forged"`    // failed authentication
	Replayed  uint64 `json:"replayed"`  // an authentic one heard before
	Stale     uint64 `json:"stale"`     // a new incarnation, not fresh
	Stranger  uint64 `json:"stranger"`  // authentic, from an unlisted peer or address or another path
}

// Change is a state transition.
type Change struct {
	Peer     string
	Path     string // "" for the peer's overall state
	From, To State
	At       time.Time
}

// PeerStatus is one peer as seen from here.
type PeerStatus struct {
	Peer     string               `json:"peer"`
	State    State                `json:"state"`
	LastSeen time.Time            `json:"last_seen"`
	Paths    map[string]PathState `json:"paths"`
}

// PathState is one path to a peer.
type PathState struct {
	State    State     `json:"state"`
	LastSeen time.Time `json:"last_seen"`
}

// Monitor sends and receives heartbeats.
type Monitor struct {
	cfg   Config
	log   *slog.Logger
	conns []*net.UDPConn
	dsts  [][]peerAddr
	srcs  []from // per path, resolved once: receive runs per packet
	start time.Time

	// epoch is this incarnation, sent in every heartbeat.
	epoch uint64

	mu       sync.Mutex
	lastEval time.Time
	seen     map[string]map[string]time.Time // peer → path → last heard
	state    map[string]State                // peer → overall, and peer+"/"+path
	seq      uint64
	last     map[string]lastHeard // peer+"/"+path → last accepted
	drops    Drops
	lastWarn time.Time
}

type peerAddr struct {
	id   string
	addr *net.UDPAddr
}

// from is where a path's heartbeats must come from: peer ID → its IP.
type from map[string]net.IP

// New binds every path's socket now, in the caller's network namespace.
func New(cfg Config) (*Monitor, error) {
	if cfg.Interval == 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Suspect == 0 {
		cfg.Suspect = 300 * time.Millisecond
	}
	if cfg.Dead == 0 {
		cfg.Dead = time.Second
	}
	if cfg.Suspect >= cfg.Dead || cfg.Interval >= cfg.Suspect {
		return nil, fmt.Errorf("heartbeat: want interval < suspect < dead, got %v, %v, %v", cfg.Interval, cfg.Suspect, cfg.Dead)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.ID) > 255 {
		return nil, errors.New("heartbeat: member ID longer than 255 bytes")
	}
	if len(cfg.Key) < MinKeyLen {
		return nil, fmt.Errorf("heartbeat: a key of at least %d bytes is required (the stack's heartbeat key)", MinKeyLen)
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	m := &Monitor{cfg: cfg, log: cfg.Logger, seen: map[string]map[string]time.Time{}, state: map[string]State{},
		last: map[string]lastHeard{}, epoch: uint64(time.Now().UnixNano())}
	for _, p := range cfg.Paths {
		laddr, err := net.ResolveUDPAddr("udp", p.Local)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("heartbeat path %s: local %q: %w", p.Name, p.Local, err)
		}
		conn, err := net.ListenUDP("udp", laddr)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("heartbeat path %s: %w", p.Name, err)
		}
		m.conns = append(m.conns, conn)
		var dsts []peerAddr
		srcs := from{}
		for id, a := range p.Peers {
			ua, err := net.ResolveUDPAddr("udp", a)
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("heartbeat path %s: peer %s address %q: %w", p.Name, id, a, err)
			}
			dsts = append(dsts, peerAddr{id, ua})
			srcs[id] = ua.IP
			m.state[id] = Unknown
		}
		m.dsts = append(m.dsts, dsts)
		m.srcs = append(m.srcs, srcs)
	}
	return m, nil
}

// Close releases the sockets.
func (m *Monitor) Close() {
	for _, c := range m.conns {
		c.Close()
	}
}

// Run sends, receives and evaluates until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	m.start = time.Now()
	var wg sync.WaitGroup
	for i := range m.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.receive(ctx, i)
		}()
	}
	tick := time.NewTicker(m.cfg.Interval)
	defer tick.Stop()
	evalTick := time.NewTicker(m.cfg.Interval / 4)
	defer evalTick.Stop()
	for {
		select {
		case <-ctx.Done():
			m.Close()
			wg.Wait()
			return
		case <-tick.C:
			m.send()
		case now := <-evalTick.C:
			m.evaluate(now)
		}
	}
}

func (m *Monitor) send() {
	m.mu.Lock()
	m.seq++
	seq := m.seq
	m.mu.Unlock()
	now := time.Now().UnixNano()
	for i, conn := range m.conns {
		pkt := encode(m.cfg.Key, packet{ID: m.cfg.ID, Path: m.cfg.Paths[i].Name, Epoch: m.epoch, Seq: seq, Time: now})
		for _, d := range m.dsts[i] {
			// A down path fails here (no route, unreachable): that is what
			// the receiver notices, so the error needs no handling.
			conn.WriteToUDP(pkt, d.addr)
		}
	}
}

func (m *Monitor) receive(ctx context.Context, i int) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("heartbeat: receiver panic", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	conn := m.conns[i]
	buf := make([]byte, 600)
	for {
		n, src, err := conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m.accept(i, buf[:n], src.IP, time.Now())
	}
}

// accept takes one datagram received on path i from src: an authentic,
// fresh heartbeat of a listed peer from its address on this path counts;
// anything else is dropped and counted.
func (m *Monitor) accept(i int, b []byte, src net.IP, now time.Time) {
	path := m.cfg.Paths[i].Name
	p, err := decode(m.cfg.Key, b)
	if err == nil && p.Path != path {
		err = fmt.Errorf("heartbeat for path %q on path %q", p.Path, path)
	}
	if err == nil {
		// Only listed peers count, and only from their address on this path.
		if want, ok := m.srcs[i][p.ID]; !ok || !want.Equal(src) {
			err = fmt.Errorf("heartbeat of %q from %s: not a listed peer at that address", p.ID, src)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		key := p.ID + "/" + path
		last, heard := m.last[key]
		if err = fresh(p, last, heard, now, m.cfg.MaxSkew); err == nil {
			m.last[key] = lastHeard{epoch: p.Epoch, seq: p.Seq}
			if m.seen[p.ID] == nil {
				m.seen[p.ID] = map[string]time.Time{}
			}
			m.seen[p.ID][path] = now
			return
		}
	}
	m.countDrop(err)
	if now.Sub(m.lastWarn) >= 10*time.Second {
		m.lastWarn = now
		m.log.Warn("heartbeat: dropped a datagram", "path", path, "from", src.String(), "err", err, "drops", m.drops)
	}
}

// countDrop counts a refused datagram by why (m.mu held).
func (m *Monitor) countDrop(err error) {
	switch {
	case errors.Is(err, errMalformed):
		m.drops.Malformed++
	case errors.Is(err, errForged):
		m.drops.Forged++
	case errors.Is(err, errReplayed):
		m.drops.Replayed++
	case errors.Is(err, errStale):
		m.drops.Stale++
	default:
		m.drops.Stranger++
	}
}

// Drops returns how many datagrams were refused so far, by why.
func (m *Monitor) Drops() Drops {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.drops
}

func (m *Monitor) classify(age time.Duration, heard bool) State {
	switch {
	case !heard:
		return Unknown
	case age >= m.cfg.Dead:
		return Dead
	case age >= m.cfg.Suspect:
		return Suspect
	}
	return Alive
}

func (m *Monitor) evaluate(now time.Time) {
	var changes []Change
	m.mu.Lock()
	// When this member itself stalled (a paused VM, a starved CPU), its
	// peers' silence is its own: shift what it heard by the stall instead
	// of declaring everyone dead the moment it runs again.
	if !m.lastEval.IsZero() {
		if gap := now.Sub(m.lastEval); gap > m.cfg.Suspect/2 {
			stall := gap - m.cfg.Interval/4
			for _, paths := range m.seen {
				for p, t := range paths {
					paths[p] = t.Add(stall)
				}
			}
			m.start = m.start.Add(stall)
			m.log.Warn("heartbeat: this member stalled; peers' silence during it is not counted", "stall", stall.Round(time.Millisecond))
		}
	}
	m.lastEval = now
	peers := map[string]bool{}
	for _, d := range m.dsts {
		for _, p := range d {
			peers[p.id] = true
		}
	}
	for peer := range peers {
		var newest time.Time
		for _, p := range m.cfg.Paths {
			if _, ok := p.Peers[peer]; !ok {
				continue
			}
			t, heard := m.seen[peer][p.Name]
			st := m.classify(now.Sub(t), heard)
			if !heard && now.Sub(m.start) >= m.cfg.Dead {
				st = Dead // never heard since start, for a whole dead time
			}
			key := peer + "/" + p.Name
			if old := m.state[key]; old != st {
				if old == "" {
					old = Unknown
				}
				m.state[key] = st
				changes = append(changes, Change{Peer: peer, Path: p.Name, From: old, To: st, At: now})
			}
			if t.After(newest) {
				newest = t
			}
		}
		st := m.classify(now.Sub(newest), !newest.IsZero())
		if newest.IsZero() && now.Sub(m.start) >= m.cfg.Dead {
			st = Dead
		}
		if old := m.state[peer]; old != st {
			m.state[peer] = st
			changes = append(changes, Change{Peer: peer, From: old, To: st, At: now})
		}
	}
	m.mu.Unlock()
	for _, c := range changes {
		if c.Path == "" {
			m.log.Info("heartbeat: peer "+string(c.To), "peer", c.Peer, "was", c.From)
		} else if c.To != Alive || c.From != Unknown {
			m.log.Info("heartbeat: path "+string(c.To), "peer", c.Peer, "path", c.Path, "was", c.From)
		}
		if m.cfg.OnChange != nil {
			m.cfg.OnChange(c)
		}
	}
}

// Peer returns a peer's current state.
func (m *Monitor) Peer(id string) State {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.state[id]; ok {
		return s
	}
	return Unknown
}

// Status lists every peer, sorted.
func (m *Monitor) Status() []PeerStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PeerStatus
	ids := map[string]bool{}
	for _, d := range m.dsts {
		for _, p := range d {
			ids[p.id] = true
		}
	}
	for id := range ids {
		ps := PeerStatus{Peer: id, State: m.state[id], Paths: map[string]PathState{}}
		for _, p := range m.cfg.Paths {
			if _, ok := p.Peers[id]; !ok {
				continue
			}
			t := m.seen[id][p.Name]
			ps.Paths[p.Name] = PathState{State: m.state[id+"/"+p.Name], LastSeen: t}
			if t.After(ps.LastSeen) {
				ps.LastSeen = t
			}
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int {
		if a.Peer < b.Peer {
			return -1
		}
		return 1
	})
	return out
}
