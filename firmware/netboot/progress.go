package netboot

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Steps a booting host goes through, in order.
var stepOrder = []string{"offer", "ack", "tftp", "script", "kernel", "initramfs", "ready"}

// HostProgress is what the live view shows of one booting machine.
type HostProgress struct {
	MAC      string               `json:"mac"`
	Host     string               `json:"host,omitempty"`
	Addr     string               `json:"addr,omitempty"`
	Firmware string               `json:"firmware,omitempty"`
	Steps    map[string]time.Time `json:"steps"`
	Last     string               `json:"last"`
	Error    string               `json:"error,omitempty"`
	Hardware map[string]any       `json:"hardware,omitempty"`

	touched time.Time // last step or update, for evicting the stalest
}

// maxTracked bounds the live view: every DHCP client on the provisioning
// LAN gets an entry (a stranger's too), so a flood of made-up MACs must not
// grow the server without end.
const maxTracked = 1024

// Progress records each host's boot steps and prints them as they happen.
type Progress struct {
	mu    sync.Mutex
	hosts map[string]*HostProgress
	out   io.Writer
	now   func() time.Time
}

// NewProgress writes one line per step to out (nil: quiet).
func NewProgress(out io.Writer) *Progress {
	return &Progress{hosts: map[string]*HostProgress{}, out: out, now: time.Now}
}

// Step records that mac reached step.
func (p *Progress) Step(mac, host, step, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.entryLocked(mac)
	if host != "" {
		h.Host = host
	}
	h.Steps[step] = p.now()
	h.Last = step
	if p.out != nil {
		name := h.Host
		if name == "" {
			name = "unknown"
		}
		fmt.Fprintf(p.out, "%s %-8s %-17s %-10s %s\n", p.now().Format("15:04:05.000"), name, mac, step, detail)
	}
}

// Update changes a host's record under the lock.
func (p *Progress) Update(mac string, fn func(*HostProgress)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn(p.entryLocked(mac))
}

// entryLocked is mac's record, made when missing. At maxTracked records the
// stalest is dropped first, a machine the stack does not name before a
// known host.
func (p *Progress) entryLocked(mac string) *HostProgress {
	h := p.hosts[mac]
	if h == nil {
		if len(p.hosts) >= maxTracked {
			var victim *HostProgress
			for _, c := range p.hosts {
				if victim == nil || dropsBefore(c, victim) {
					victim = c
				}
			}
			delete(p.hosts, victim.MAC)
		}
		h = &HostProgress{MAC: mac, Steps: map[string]time.Time{}}
		p.hosts[mac] = h
	}
	h.touched = p.now()
	return h
}

// Snapshot returns every host's progress, sorted by host then MAC.
func (p *Progress) Snapshot() []HostProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]HostProgress, 0, len(p.hosts))
	for _, h := range p.hosts {
		c := *h
		c.Steps = map[string]time.Time{}
		for k, v := range h.Steps {
			c.Steps[k] = v
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b HostProgress) int {
		if a.Host != b.Host {
			if a.Host < b.Host {
				return -1
			}
			return 1
		}
		if a.MAC < b.MAC {
			return -1
		}
		if a.MAC > b.MAC {
			return 1
		}
		return 0
	})
	return out
}

// WriteTable prints a snapshot as the `netboot status` table.
func WriteTable(w io.Writer, hosts []HostProgress) {
	fmt.Fprintf(w, "%-8s %-17s %-15s %-8s %s\n", "HOST", "MAC", "ADDRESS", "FIRMWARE", "STEPS")
	for _, h := range hosts {
		var steps []string
		for _, s := range stepOrder {
			if _, ok := h.Steps[s]; ok {
				steps = append(steps, s)
			}
		}
		name := h.Host
		if name == "" {
			name = "unknown"
		}
		fmt.Fprintf(w, "%-8s %-17s %-15s %-8s %v\n", name, h.MAC, h.Addr, h.Firmware, steps)
	}
}

// dropsBefore says a is evicted before b: a machine the stack does not name
// before a known host, then the one not heard from for longer.
func dropsBefore(a, b *HostProgress) bool {
	if (a.Host == "") != (b.Host == "") {
		return a.Host == ""
	}
	return a.touched.Before(b.touched)
}
