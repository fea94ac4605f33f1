// Package heartbeat detects a lost peer fast: every member sends a small UDP
// datagram to every other member every interval (100 ms by default) over
// each network path it has (the pair link and the public LAN). A peer is
// suspect when no path has carried its heartbeat for the suspect time, and
// dead after the dead time. Losing one path is reported, never acted on.
package heartbeat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"time"
)

// magic starts every heartbeat datagram.
var magic = [4]byte{'M', 'S', 'H', 'B'}

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

	mu       sync.Mutex
	lastEval time.Time
	seen     map[string]map[string]time.Time // peer → path → last heard
	state    map[string]State                // peer → overall, and peer+"/"+path
	seq      uint64
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
	m := &Monitor{cfg: cfg, log: cfg.Logger, seen: map[string]map[string]time.Time{}, state: map[string]State{}}
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
	for i, conn := range m.conns {
		pkt := encode(m.cfg.ID, m.cfg.Paths[i].Name, seq)
		for _, d := range m.dsts[i] {
			// A down path fails here (no route, unreachable): that is what
			// the receiver notices, so the error needs no handling.
			conn.WriteToUDP(pkt, d.addr)
		}
	}
}

func encode(id, path string, seq uint64) []byte {
	b := make([]byte, 0, 4+1+8+2+len(id)+len(path))
	b = append(b, magic[:]...)
	b = append(b, 1) // version
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, byte(len(id)))
	b = append(b, id...)
	b = append(b, byte(len(path)))
	b = append(b, path...)
	return b
}

// decode parses a heartbeat; anything malformed is an error.
func decode(b []byte) (id, path string, seq uint64, err error) {
	if len(b) < 15 || [4]byte(b[:4]) != magic || b[4] != 1 {
		return "", "", 0, errors.New("not a heartbeat")
	}
	seq = binary.BigEndian.Uint64(b[5:13])
	n := int(b[13])
	if len(b) < 14+n+1 {
		return "", "", 0, errors.New("short heartbeat")
	}
	id = string(b[14 : 14+n])
	rest := b[14+n:]
	pn := int(rest[0])
	if len(rest) != 1+pn {
		return "", "", 0, errors.New("bad heartbeat path")
	}
	return id, string(rest[1:]), seq, nil
}

func (m *Monitor) receive(ctx context.Context, i int) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("heartbeat: receiver panic", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	conn := m.conns[i]
	path := m.cfg.Paths[i]
	buf := make([]byte, 600)
	for {
		n, src, err := conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		id, pname, _, err := decode(buf[:n])
		if err != nil || pname != path.Name {
			continue
		}
		// Only listed peers count, and only from their address on this path.
		if want, ok := m.srcs[i][id]; !ok || !want.Equal(src.IP) {
			continue
		}
		m.mu.Lock()
		if m.seen[id] == nil {
			m.seen[id] = map[string]time.Time{}
		}
		m.seen[id][path.Name] = time.Now()
		m.mu.Unlock()
	}
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
