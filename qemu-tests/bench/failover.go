package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"magestack/qemu-tests/qemu"
	"magestack/qemu-tests/vipprobe"
)

// The failover figures (issue 7): after a host's hardware is lost, how long
// until the peer detects it, decides, holds the VIP, and the website
// answers again, magestack against keepalived's VRRP in the same topology;
// and how many failovers a lossy network causes when no host is lost.
// Figures are reported, never judged.

// Timeline steps, in order.
const (
	stepDetected  = "detected: peer declared dead"
	stepDecided   = "decided: failover started"
	stepCommitted = "ownership committed (raft)"
	stepVIPHeld   = "VIP held (new holder's log)"
	stepVIPSeen   = "VIP moved (client saw the GARP)"
	stepAnswering = "website answering again"
	stepGap       = "client's outage (last→first answer)"
)

var timelineSteps = []string{stepDetected, stepDecided, stepCommitted, stepVIPHeld, stepVIPSeen, stepAnswering, stepGap}

// failoverRun is one hardware loss: each step's time after the loss, or why
// it is missing.
type failoverRun struct {
	lost  time.Time
	after map[string]time.Duration
	why   map[string]string
}

func newFailoverRun(lost time.Time) failoverRun {
	return failoverRun{lost: lost, after: map[string]time.Duration{}, why: map[string]string{}}
}

func (r failoverRun) at(step string, t time.Time) { r.after[step] = t.Sub(r.lost) }

func (r failoverRun) missing(step, why string) {
	if _, ok := r.after[step]; !ok {
		r.why[step] = why
	}
}

// fromProber fills the client's steps: the VIP's MAC becoming the new
// holder's, and the first answer the new holder gave (serves tells).
func (r failoverRun) fromProber(probes []vipprobe.Probe, macs []vipprobe.MACChange, newMAC string, serves func(vipprobe.Probe) bool) {
	if t, ok := vipprobe.FirstMAC(macs, r.lost, newMAC); ok {
		r.at(stepVIPSeen, t)
	} else {
		r.missing(stepVIPSeen, "the client's ARP entry for the VIP never took "+newMAC)
	}
	first, ok := vipprobe.FirstAnswer(probes, r.lost, serves)
	if !ok {
		r.missing(stepAnswering, "no answer from the new holder")
		r.missing(stepGap, "no answer from the new holder")
		return
	}
	r.at(stepAnswering, first.End)
	// The old holder may still answer in the loss's first instant: the
	// outage runs from the last answer of any host to the new holder's.
	if last, ok := vipprobe.LastAnswer(probes, first.End); ok {
		r.after[stepGap] = first.End.Sub(last.End)
	} else {
		r.missing(stepGap, "no answer before the loss")
	}
}

// lossResult is a run under a lossy network with no host lost.
type lossResult struct {
	d                   time.Duration
	lossPct             int
	failovers           int // takeovers started (magestack: moves; keepalived: backup → master)
	vipMoves            int // times the client's ARP entry for the VIP changed hands
	failedReq, totalReq int
	// stepDowns (magestack) counts a host releasing the VIP because it
	// lost contact with the raft majority: no takeover, but an outage.
	stepDowns    int
	hasStepDowns bool
	resets       int // magestack: hosts reset by their watchdog
	note         string
}

// variant is one column of the table.
type variant struct {
	name string
	runs []failoverRun
	errs []string
	loss *lossResult
	lerr string
	// note is printed under the table (e.g. what the lossy cable could do).
	note string
	// disturbed counts what happened while no host was lost (boot and
	// idle): false failovers, VIP releases, host resets.
	disturbed int
}

// step is the median of a step over the runs that have it.
func (v variant) step(name string) figure {
	var vals []float64
	why := ""
	for _, r := range v.runs {
		if d, ok := r.after[name]; ok {
			vals = append(vals, float64(d.Microseconds())/1000)
		} else if why == "" {
			why = r.why[name]
		}
	}
	if len(vals) == 0 {
		switch {
		case why == "-":
			return notApplicable
		case why != "":
			return na("%s", why)
		case len(v.errs) > 0:
			return na("%s", v.errs[0])
		}
		return na("no run")
	}
	return figure{val: median(vals), unit: "ms"}
}

// failoverOptions are the bench's knobs.
type failoverOptions struct {
	kills     int           // hardware losses per keepalived variant and per magestack timing
	lossy     time.Duration // lossy-network run length
	lossPct   int
	timeout   time.Duration // bound on one pair boot
	magestack bool          // boot the QEMU pair (minutes under TCG)
	dead3s    string        // "auto" (when 1 s shows false failovers, VIP releases or resets), "yes", "no"
}

func runFailover(ctx context.Context, w io.Writer, o failoverOptions) error {
	build, err := qemu.BuildDir()
	if err != nil {
		return err
	}
	work := filepath.Join(build, "bench", "failover")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	lossy := "no lossy-network run"
	if o.lossy > 0 {
		lossy = fmt.Sprintf("lossy network for %v: %d%% loss on each host's LAN port (magestack: and %v delay)", o.lossy, o.lossPct, msLossDelay)
	}
	fmt.Fprintf(w, "\nfailover after hardware loss: magestack pair + witness (QEMU TCG, %d loss(es) per timing) against keepalived VRRP (namespaces, %d losses per advert_int), median; %s\n",
		o.kills, keepalivedKills(o), lossy)

	var cols []variant
	if o.magestack {
		ms1 := runMagestackVariant(ctx, w, work, "1s", o)
		cols = append(cols, ms1)
		if o.dead3s == "yes" || (o.dead3s == "auto" && falseFailovers(ms1)) {
			cols = append(cols, runMagestackVariant(ctx, w, work, "3s", o))
		}
	} else {
		cols = append(cols, variant{name: "magestack", errs: []string{"not run (-failover-qemu=false)"}})
	}
	for _, advert := range []string{"1", "0.1"} {
		cols = append(cols, runKeepalivedVariant(ctx, w, work, advert, o))
	}
	printFailoverTable(w, cols)
	fmt.Fprintf(w, "logs: %s\n", work)
	return nil
}

// falseFailovers tells whether a magestack run failed over, released the
// VIP or reset a host with no host lost (while idle or under loss): then
// the 3 s dead time is worth a run.
func falseFailovers(v variant) bool {
	return v.disturbed > 0 || v.loss != nil && (v.loss.failovers > 0 || v.loss.stepDowns > 0 || v.loss.resets > 0)
}

// keepalivedKills: a keepalived loss costs seconds, and where the loss
// falls between two adverts moves its detection by up to one interval, so
// it gets at least five.
func keepalivedKills(o failoverOptions) int { return max(o.kills, 5) }

func runKeepalivedVariant(ctx context.Context, w io.Writer, work, advert string, o failoverOptions) variant {
	v := variant{name: "keepalived " + advert + "s"}
	dir := filepath.Join(work, "keepalived-"+advert)
	os.RemoveAll(dir) // the bench's own logs of an earlier run
	if err := os.MkdirAll(dir, 0o755); err != nil {
		v.errs = append(v.errs, err.Error())
		return v
	}
	tag := "k" + strings.ReplaceAll(advert, ".", "")
	for i := 1; i <= keepalivedKills(o); i++ {
		run, err := runKeepalivedKill(ctx, fmt.Sprintf("%s-%d", tag, i), advert, dir)
		if err != nil {
			fmt.Fprintf(w, "keepalived advert_int %s loss %d: %v\n", advert, i, firstLine(err))
			v.errs = append(v.errs, firstLine(err))
			continue
		}
		fmt.Fprintf(w, "keepalived advert_int %s loss %d: %s\n", advert, i, run.summary())
		v.runs = append(v.runs, run)
	}
	if o.lossy > 0 {
		res, err := runKeepalivedLossy(ctx, tag+"-loss", advert, dir, o.lossy, o.lossPct)
		if err != nil {
			v.lerr = firstLine(err)
			fmt.Fprintf(w, "keepalived advert_int %s lossy: %v\n", advert, v.lerr)
		} else {
			v.loss = &res
			fmt.Fprintf(w, "keepalived advert_int %s lossy %v: %s\n", advert, o.lossy, res.summary())
		}
	}
	return v
}

func (r failoverRun) summary() string {
	var parts []string
	for _, s := range timelineSteps {
		if d, ok := r.after[s]; ok {
			name, _, _ := strings.Cut(s, " (")
			name, _, _ = strings.Cut(name, ":")
			parts = append(parts, fmt.Sprintf("%s %d ms", name, d.Milliseconds()))
		}
	}
	for _, s := range timelineSteps {
		if why := r.why[s]; why != "" && why != "-" {
			parts = append(parts, "missing "+s+": "+why)
			break
		}
	}
	return strings.Join(parts, ", ")
}

func (l lossResult) summary() string {
	s := fmt.Sprintf("%d failovers, VIP changed hands %d times, %d/%d requests failed", l.failovers, l.vipMoves, l.failedReq, l.totalReq)
	if l.hasStepDowns {
		s += fmt.Sprintf(", VIP released %d times (majority lost), %d host resets", l.stepDowns, l.resets)
	}
	if l.note != "" {
		s += " (" + l.note + ")"
	}
	return s
}

// printFailoverTable prints the steps side by side. Ratios are the first
// (magestack) column over each keepalived column.
func printFailoverTable(w io.Writer, cols []variant) {
	var notes []string
	cell := func(f figure) string {
		if f.ok() {
			if f.unit == "" {
				return fmt.Sprintf("%.0f", f.val)
			}
			return f.String()
		}
		if f == notApplicable {
			return "-"
		}
		i := slices.Index(notes, f.na)
		if i < 0 {
			notes = append(notes, f.na)
			i = len(notes) - 1
		}
		return fmt.Sprintf("n/a [%d]", i+1)
	}
	var ms []int
	var kl []int
	for i, c := range cols {
		if strings.HasPrefix(c.name, "keepalived") {
			kl = append(kl, i)
		} else {
			ms = append(ms, i)
		}
	}
	header := fmt.Sprintf("%-38s", "figure (after the loss)")
	for _, c := range cols {
		header += fmt.Sprintf(" %-18s", c.name)
	}
	for _, m := range ms {
		for _, k := range kl {
			header += fmt.Sprintf(" %-9s", ratioName(cols[m].name, cols[k].name))
		}
	}
	fmt.Fprintln(w, header+" target")
	row := func(name string, get func(variant) figure, target string, ratio bool) {
		line := fmt.Sprintf("%-38s", name)
		figs := make([]figure, len(cols))
		for i, c := range cols {
			figs[i] = get(c)
			line += fmt.Sprintf(" %-18s", cell(figs[i]))
		}
		for _, m := range ms {
			for _, k := range kl {
				r := "-"
				if a, b := figs[m], figs[k]; ratio && a.ok() && b.ok() && b.val > 0 {
					r = fmt.Sprintf("%.2f", a.val/b.val)
				}
				line += fmt.Sprintf(" %-9s", r)
			}
		}
		fmt.Fprintln(w, line+" "+target)
	}
	targets := map[string]string{stepDetected: "<= 1 s", stepAnswering: "<= 3 s (keepalived default ~3.6 s)"}
	for _, s := range timelineSteps {
		row(s, func(v variant) figure { return v.step(s) }, targets[s], true)
	}
	lossy := func(get func(lossResult) float64) func(variant) figure {
		return func(v variant) figure {
			switch {
			case v.loss != nil:
				return figure{val: get(*v.loss)}
			case v.lerr != "":
				return na("%s", v.lerr)
			}
			return na("lossy run not made")
		}
	}
	row("false failovers, lossy network", lossy(func(l lossResult) float64 { return float64(l.failovers) }), "0", true)
	row("VIP changed hands, lossy network", lossy(func(l lossResult) float64 { return float64(l.vipMoves) }), "0", true)
	row("VIP released (majority lost), lossy", func(v variant) figure {
		if v.loss != nil && !v.loss.hasStepDowns {
			return notApplicable
		}
		return lossy(func(l lossResult) float64 { return float64(l.stepDowns) })(v)
	}, "0", true)
	row("host resets (watchdog), lossy", func(v variant) figure {
		if v.loss != nil && !v.loss.hasStepDowns {
			return notApplicable
		}
		return lossy(func(l lossResult) float64 { return float64(l.resets) })(v)
	}, "0", true)
	row("client requests failed, lossy (%)", lossy(func(l lossResult) float64 {
		if l.totalReq == 0 {
			return 0
		}
		return 100 * float64(l.failedReq) / float64(l.totalReq)
	}), "- (no ratio: different servers and paths)", false)
	for i, n := range notes {
		fmt.Fprintf(w, "[%d] n/a: %s\n", i+1, n)
	}
	for _, c := range cols {
		if c.note != "" {
			fmt.Fprintf(w, "%s: %s\n", c.name, c.note)
		}
		if c.loss != nil && c.loss.note != "" {
			fmt.Fprintf(w, "%s lossy: %s\n", c.name, c.loss.note)
		}
	}
	fmt.Fprintln(w, "keepalived: VRRP detects and decides in one step (backup's master-down timer → MASTER); it has no commit and no guard against two masters.")
	fmt.Fprintln(w, "client: a request every 50 ms, 1 s timeout each; magestack's roles run the busybox test image in TCG guests (no role-images disk: the HA machinery's figure, not HAProxy's or MariaDB's start), keepalived's website is a Go handler in a namespace.")
}

// ratioName is the column title of magestack/keepalived ratios: "1s/k1s".
func ratioName(m, k string) string {
	m = strings.TrimPrefix(strings.TrimPrefix(m, "magestack"), " dead ")
	k = strings.TrimPrefix(k, "keepalived ")
	if m == "" {
		m = "ms"
	}
	return m + "/k" + k
}

// writeProbeLog keeps the client's view of one run next to the daemons'
// logs: each request and MAC change, in ms from the loss.
func writeProbeLog(path string, lost time.Time, probes []vipprobe.Probe, macs []vipprobe.MACChange) {
	var b strings.Builder
	ms := func(t time.Time) float64 { return float64(t.Sub(lost).Microseconds()) / 1000 }
	for _, c := range macs {
		fmt.Fprintf(&b, "%10.1f mac %s\n", ms(c.At), c.MAC)
	}
	for _, p := range probes {
		res := "ok " + p.Body
		if !p.OK {
			res = "failed " + p.Err
		}
		fmt.Fprintf(&b, "%10.1f request until %.1f mac %s %s\n", ms(p.Start), ms(p.End), p.MAC, res)
	}
	_ = os.WriteFile(path, []byte(b.String()), 0o644)
}
