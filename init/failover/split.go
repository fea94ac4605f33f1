package failover

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
)

// A pair is split when its two hosts no longer hear each other (pair link
// and LAN path both cut between them) while the leader, typically the
// witness, still hears both. Left alone each host would go on running its
// own share, in majority through the witness, with the shares cut off from
// each other (the overlay and replication ride the cut paths). The leader
// therefore asks every paired host what its heartbeats say of its peer, and
// when one says dead while the leader hears both, it moves everything to one
// side: the host holding the lb instance (the VIP) keeps its share and takes
// the other's, so the website does not move. The move is the usual release,
// lease wait, assign: the loser, still in majority through the witness,
// applies the release and stops.

// PairView is what a host's heartbeats say of its pair peer
// (GET /v1/pair on RPCPort).
type PairView struct {
	Host  string          `json:"host"`
	Peer  string          `json:"peer"`
	State heartbeat.State `json:"state"`
}

// pairViewEvery is how often the leader asks each host for its view; a
// view older than three rounds no longer counts.
const pairViewEvery = 500 * time.Millisecond

// splitState is the leader's record of the hosts' views (zero value ready).
type splitState struct {
	mu    sync.Mutex
	views map[string]seenView // host → its latest view
	// fetch asks a host for its view; nil asks over HTTP (tests replace it).
	fetch func(ctx context.Context, host string) (PairView, error)
}

type seenView struct {
	PairView
	at time.Time
}

// pairView is this host's view of its pair peer.
func (c *Controller) pairView() PairView {
	peer := c.pairOf(c.cfg.Self)
	v := PairView{Host: c.cfg.Self, Peer: peer, State: heartbeat.Unknown}
	if peer != "" {
		v.State = c.cfg.Peer(peer)
	}
	return v
}

func (c *Controller) servePairView(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, c.pairView())
}

// fetchPairView asks host over the cluster RPC at its stack address; only
// host itself may answer.
func (c *Controller) fetchPairView(ctx context.Context, host string) (PairView, error) {
	h, _, ok := c.cfg.Stack.HostByName(host)
	if !ok || !h.Address.IsValid() {
		return PairView{}, fmt.Errorf("pair view of %s: no fixed address in the stack", host)
	}
	var v PairView
	if err := c.callRPC(ctx, http.MethodGet, host, h.Address.Addr().String(), "/v1/pair", nil, &v); err != nil {
		return PairView{}, fmt.Errorf("pair view of %s: %w", host, err)
	}
	if v.Host != host {
		return PairView{}, fmt.Errorf("pair view of %s: answered by %q", host, v.Host)
	}
	return v, nil
}

// pollPairViews keeps, while this member leads, every paired host's view
// fresh; one loop per host so that an unreachable host delays no other.
func (c *Controller) pollPairViews(ctx context.Context) {
	fetch := c.split.fetch
	if fetch == nil {
		fetch = c.fetchPairView
	}
	var wg sync.WaitGroup
	for _, h := range c.cfg.Stack.Hosts {
		if h.Pair == "" || h.Name == c.cfg.Self {
			continue
		}
		wg.Add(1)
		go func(host string) {
			defer wg.Done()
			t := time.NewTicker(pairViewEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if !c.cfg.Cluster.IsLeader() {
					continue
				}
				fctx, cancel := context.WithTimeout(ctx, 2*pairViewEvery)
				v, err := fetch(fctx, host)
				cancel()
				if err != nil {
					continue // an unreachable host's view just ages out
				}
				c.split.mu.Lock()
				if c.split.views == nil {
					c.split.views = map[string]seenView{}
				}
				c.split.views[host] = seenView{PairView: v, at: time.Now()}
				c.split.mu.Unlock()
			}
		}(h.Name)
	}
	wg.Wait()
}

// saysDead reports whether host's fresh view calls peer dead.
func (c *Controller) saysDead(host, peer string, now time.Time) bool {
	c.split.mu.Lock()
	defer c.split.mu.Unlock()
	v, ok := c.split.views[host]
	return ok && v.Peer == peer && v.State == heartbeat.Dead && now.Sub(v.at) < 3*pairViewEvery
}

// resolveSplits moves a split pair's instances to one side (leader only,
// after the dead-host moves of lead). byHost is the owned instances per host.
func (c *Controller) resolveSplits(ctx context.Context, byHost map[string][]cluster.Ownership, now time.Time) {
	for _, h := range c.cfg.Stack.Hosts {
		a, b := h.Name, h.Pair
		if b == "" || a > b || a == c.cfg.Self || b == c.cfg.Self {
			// Each pair once; a leader that is one of the pair sees the
			// other dead itself and lead moves it.
			continue
		}
		if !c.alive(a) || !c.alive(b) || !(c.saysDead(a, b, now) || c.saysDead(b, a, now)) {
			continue
		}
		winner, loser := splitWinner(a, b, byHost)
		list := byHost[loser]
		if len(list) == 0 {
			continue
		}
		if c.inHoldDown(loser, now) {
			c.warnOnce(loser, "failover: pair split again within the hold-down; not moving (flapping?)", "host", loser, "holddown", c.cfg.HoldDown)
			continue
		}
		c.log.Warn("failover: pair split: its hosts do not hear each other while the cluster hears both; one side takes everything",
			"keeps", winner, "loses", loser)
		c.move(ctx, loser, winner, list, now)
	}
}

// splitWinner picks the side that keeps running: the holder of the lb
// instance (the VIP stays put), else the host with more instances, else
// the first by name.
func splitWinner(a, b string, byHost map[string][]cluster.Ownership) (winner, loser string) {
	holdsLB := func(h string) bool {
		return slices.ContainsFunc(byHost[h], func(o cluster.Ownership) bool { return roleOf(o.Instance) == "lb" })
	}
	switch {
	case holdsLB(a) != holdsLB(b):
		if holdsLB(b) {
			return b, a
		}
	case len(byHost[a]) != len(byHost[b]):
		if len(byHost[b]) > len(byHost[a]) {
			return b, a
		}
	}
	return a, b
}
