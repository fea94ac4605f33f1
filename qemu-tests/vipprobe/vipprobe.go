// Package vipprobe watches a floating website address (VIP) from a client's
// network namespace, the way a visitor sees a failover: it requests the
// website at a fixed rate (each request on its own, so one hanging on a lost
// host does not delay the next) and records which MAC address the client's
// kernel has for the VIP, which changes when a gratuitous ARP from the new
// holder arrives. The analysis functions are pure, for the benchmark's and
// tests' timelines.
package vipprobe

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
)

// Probe is one request.
type Probe struct {
	Start, End time.Time
	OK         bool   // status 200
	Body       string // first 200 bytes, trimmed
	MAC        string // the VIP's neighbour MAC when the answer came ("" unknown)
	Err        string
}

// MACChange is the client's neighbour entry for the VIP taking a new MAC.
type MACChange struct {
	At  time.Time
	MAC string
}

// Config configures a Prober.
type Config struct {
	NS      netns.NsHandle // the client's namespace (not closed by the prober)
	URL     string         // e.g. http://192.0.2.50/
	VIP     netip.Addr
	Every   time.Duration // default 50ms
	Timeout time.Duration // per request, default 1s
	// NeighPoll is how often the neighbour table is read; default 5ms.
	NeighPoll time.Duration
}

// Prober runs until Stop.
type Prober struct {
	cfg    Config
	client *http.Client
	nl     *netlink.Handle
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	probes  []Probe
	changes []MACChange
	mac     string
}

// Start begins probing.
func Start(cfg Config) (*Prober, error) {
	if cfg.Every == 0 {
		cfg.Every = 50 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second
	}
	if cfg.NeighPoll == 0 {
		cfg.NeighPoll = 5 * time.Millisecond
	}
	if !cfg.VIP.Is4() {
		return nil, fmt.Errorf("vipprobe: VIP %v is not IPv4", cfg.VIP)
	}
	nl, err := netlink.NewHandleAt(cfg.NS)
	if err != nil {
		return nil, fmt.Errorf("vipprobe: netlink in the client namespace: %w", err)
	}
	p := &Prober{cfg: cfg, nl: nl, client: &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{
		DialContext: nsdo.DialContext(cfg.NS), DisableKeepAlives: true}}}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(2)
	go p.watchNeigh(ctx)
	go p.probeLoop(ctx)
	return p, nil
}

// Stop ends probing and waits for requests in flight.
func (p *Prober) Stop() {
	p.cancel()
	p.wg.Wait()
	p.nl.Close()
}

func (p *Prober) probeLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			r := p.probe(ctx)
			if ctx.Err() == nil { // a request cut by Stop says nothing
				p.mu.Lock()
				p.probes = append(p.probes, r)
				p.mu.Unlock()
			}
		}()
	}
}

func (p *Prober) probe(ctx context.Context) Probe {
	r := Probe{Start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.cfg.URL, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = p.client.Do(req); err == nil {
			// An answer counts once its body arrived: headers sent just
			// before a host is lost are no answer.
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 200))
			resp.Body.Close()
			r.OK = resp.StatusCode == http.StatusOK && rerr == nil
			r.Body = strings.TrimSpace(string(b))
			switch {
			case rerr != nil:
				r.Err = "reading the body: " + rerr.Error()
			case !r.OK:
				r.Err = resp.Status
			}
		}
	}
	if err != nil {
		r.Err = err.Error()
	}
	r.End = time.Now()
	p.mu.Lock()
	r.MAC = p.mac
	p.mu.Unlock()
	return r
}

// watchNeigh polls rather than subscribes: a poll every few ms is precise
// enough and sees the entry even when it changed before the watch began.
func (p *Prober) watchNeigh(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.NeighPoll)
	defer t.Stop()
	for {
		if mac := p.neighMAC(); mac != "" {
			p.mu.Lock()
			if mac != p.mac {
				p.mac = mac
				p.changes = append(p.changes, MACChange{At: time.Now(), MAC: mac})
			}
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// neighMAC is the VIP's MAC in the client's ARP table, "" when it has none
// (incomplete or failed entries carry no address).
func (p *Prober) neighMAC() string {
	neighs, err := p.nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return ""
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP.To4()); ok && a == p.cfg.VIP && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// Probes returns the finished requests, ordered by start.
func (p *Prober) Probes() []Probe {
	p.mu.Lock()
	out := slices.Clone(p.probes)
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Probe) int { return a.Start.Compare(b.Start) })
	return out
}

// MACChanges returns the VIP's MAC history as the client saw it.
func (p *Prober) MACChanges() []MACChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.changes)
}

// MAC is the VIP's current neighbour MAC ("" before the first).
func (p *Prober) MAC() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mac
}

// WaitAnswer waits until a request started after since was answered and
// match accepts it, or ctx ends.
func (p *Prober) WaitAnswer(ctx context.Context, since time.Time, match func(Probe) bool) (Probe, error) {
	for {
		if r, ok := FirstAnswer(p.Probes(), since, match); ok {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return Probe{}, fmt.Errorf("no answer from the website through %s since %s: %w", p.cfg.URL, since.Format("15:04:05.000"), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// FirstAnswer is the answered request that ended first among those started
// after since that match accepts (nil accepts any).
func FirstAnswer(probes []Probe, since time.Time, match func(Probe) bool) (Probe, bool) {
	var best Probe
	found := false
	for _, r := range probes {
		if !r.OK || !r.Start.After(since) || (match != nil && !match(r)) {
			continue
		}
		if !found || r.End.Before(best.End) {
			best, found = r, true
		}
	}
	return best, found
}

// LastAnswer is the answered request that ended last before until.
func LastAnswer(probes []Probe, until time.Time) (Probe, bool) {
	var best Probe
	found := false
	for _, r := range probes {
		if r.OK && r.End.Before(until) && (!found || r.End.After(best.End)) {
			best, found = r, true
		}
	}
	return best, found
}

// FirstMAC is when the VIP first took mac after since.
func FirstMAC(changes []MACChange, since time.Time, mac string) (time.Time, bool) {
	for _, c := range changes {
		if c.At.After(since) && c.MAC == mac {
			return c.At, true
		}
	}
	return time.Time{}, false
}

// Moves counts the VIP's MAC changes within (from, to]: each one is the
// address announced by another machine.
func Moves(changes []MACChange, from, to time.Time) int {
	n := 0
	for _, c := range changes {
		if c.At.After(from) && !c.At.After(to) {
			n++
		}
	}
	// The first entry ever learned is not a move.
	if len(changes) > 0 && changes[0].At.After(from) && !changes[0].At.After(to) {
		n--
	}
	return n
}

// Failed counts requests started within [from, to) that got no answer.
func Failed(probes []Probe, from, to time.Time) (failed, total int) {
	for _, r := range probes {
		if r.Start.Before(from) || !r.Start.Before(to) {
			continue
		}
		total++
		if !r.OK {
			failed++
		}
	}
	return failed, total
}

// Steady reports whether every request started within [from, to) was
// answered, and there was at least one.
func Steady(probes []Probe, from, to time.Time) bool {
	failed, total := Failed(probes, from, to)
	return total > 0 && failed == 0
}

// WaitSteady waits until the requests of the last d (those finished by
// now) were all answered, or ctx ends.
func (p *Prober) WaitSteady(ctx context.Context, d time.Duration) error {
	for {
		// Requests started within the last timeout may still be running.
		to := time.Now().Add(-p.cfg.Timeout)
		if Steady(p.Probes(), to.Add(-d), to) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the website through %s did not answer every request for %v: %w", p.cfg.URL, d, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
