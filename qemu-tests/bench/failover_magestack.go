package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	"magestack/init/stacksecret"
	"magestack/qemu-tests/qemu"
	"magestack/qemu-tests/vipprobe"
)

// The magestack pair, as in qemu-tests/failover_test.go: two hosts with a
// pair link and a witness on the LAN; the witness's machine also serves the
// stack file. dead is the cluster's dead time: "1s" is the default timing
// (suspect 300 ms, dead 1 s), "3s" what the QEMU tests use under TCG.
func pairStack(dead string) string {
	s := `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:aa:01:01", address: 192.0.2.11/24, pair: dh2, pairlink: {mac: "52:54:00:aa:02:01", address: 10.99.0.1/30}}
  - {name: dh2, mac: "52:54:00:aa:01:02", address: 192.0.2.12/24, pair: dh1, pairlink: {mac: "52:54:00:aa:02:02", address: 10.99.0.2/30}}
public: {vip: 192.0.2.50/24}
witness: 192.0.2.5:7700
`
	if dead == "3s" {
		s += "cluster: {suspect: 1s, dead: 3s}\n"
	}
	return s
}

var (
	msHosts   = []string{"dh1", "dh2"}
	msLANMAC  = map[string]string{"dh1": "52:54:00:aa:01:01", "dh2": "52:54:00:aa:01:02"}
	msPairMAC = map[string]string{"dh1": "52:54:00:aa:02:01", "dh2": "52:54:00:aa:02:02"}
	msAddr    = map[string]string{"dh1": "192.0.2.11", "dh2": "192.0.2.12"}
)

const msVIP = "192.0.2.50"

// msLossDelay is the lossy run's delay on the LAN, the netem figure.
const msLossDelay = 50 * time.Millisecond

// magestack's lines for the timeline: on a console `msg key=value`, from
// the witness (slog's text handler) `msg="msg" key=value`.
func peerDeadRE(peer string) *regexp.Regexp {
	return regexp.MustCompile(`heartbeat: peer dead"? peer=` + regexp.QuoteMeta(peer) + `\b`)
}

func movingRE(from string) *regexp.Regexp {
	return regexp.MustCompile(`failover: moving instances"? from=` + regexp.QuoteMeta(from) + `\b`)
}

var (
	anyMovingRE   = regexp.MustCompile(`failover: moving instances`)
	startingRE    = regexp.MustCompile(`failover: starting instance`)
	vipHoldingRE  = regexp.MustCompile(`vip: holding`)
	anyPeerDeadRE = regexp.MustCompile(`heartbeat: peer dead"? peer=dh`)
	vipReleasedRE = regexp.MustCompile(`vip: released`)
)

// msRig is the booted pair, on the harness's test network: the hosts' LAN
// NICs are plugged into qemu.Cables (loss and delay, like netem), the pair
// link is a plain bridge.
type msRig struct {
	tb      *benchTB
	net     *qemu.Net
	cables  map[string]*qemu.Cable
	im      qemu.Image
	dir     string
	dead    string
	vms     map[string]*qemu.VM
	cons    map[string]*lineLog
	stopCon map[string]context.CancelFunc
	witness *lineLog
	prober  *vipprobe.Prober
	closeP  func()
	boots   int
}

func startMagestackRig(ctx context.Context, dead, dir string, timeout time.Duration) (*msRig, error) {
	im, err := qemu.ImagePaths()
	if err != nil {
		return nil, err
	}
	if err := im.Check(); err != nil {
		return nil, err
	}
	// Both hosts boot with one stack secret, as netboot hands it out.
	secret, err := stacksecret.New()
	if err != nil {
		return nil, err
	}
	if im, err = im.WithStackSecret(dir, secret.Marshal("pair")); err != nil {
		return nil, err
	}
	r := &msRig{tb: &benchTB{name: "magestack pair dead " + dead}, cables: map[string]*qemu.Cable{}, im: im, dir: dir, dead: dead,
		vms: map[string]*qemu.VM{}, cons: map[string]*lineLog{}, stopCon: map[string]context.CancelFunc{}, witness: newLineLog()}
	fail := func(err error) (*msRig, error) { r.close(); return nil, err }
	stackDir := filepath.Join(dir, "stack")
	if err := os.MkdirAll(stackDir, 0o755); err != nil {
		return fail(err)
	}
	stackPath := filepath.Join(stackDir, "stack.yaml")
	if err := os.WriteFile(stackPath, []byte(pairStack(dead)), 0o644); err != nil {
		return fail(err)
	}
	wlog, err := os.Create(filepath.Join(dir, "witness.log"))
	if err != nil {
		return fail(err)
	}
	var wns, cns *qemu.Namespace
	err = r.tb.do(func() {
		r.net = qemu.NewNet(r.tb, "fo"+dead)
		r.net.AddBridge("br1")
		for _, h := range msHosts {
			r.cables[h] = r.net.AddCable("tl-" + h)
			r.net.AddTapTo("br1", "tp-"+h)
		}
		wns = r.net.AddClient("witness", "192.0.2.5/24")
		cns = r.net.AddClient("client", "192.0.2.100/24")
	})
	if err != nil {
		return fail(err)
	}
	// The witness gets its cluster credentials, never the secret, made
	// from the same secret with the operator's command (in dir, not the
	// served stackDir).
	secretPath := filepath.Join(dir, "stack.secret")
	if err := secret.Save(secretPath, "pair"); err != nil {
		return fail(err)
	}
	credsPath := filepath.Join(dir, "witness.pem")
	if b, err := exec.Command(im.Binary, "secrets", "member", "witness", "-secret", secretPath, "-o", credsPath, "-force").CombinedOutput(); err != nil {
		return fail(fmt.Errorf("magestack secrets member witness: %v: %s", err, b))
	}
	cmd := exec.Command(im.Binary, "witness", "--stack", stackPath, "--data", "", "--credentials", credsPath)
	cmd.Stdout = io.MultiWriter(r.witness, wlog)
	cmd.Stderr = cmd.Stdout
	if err := wns.Start(cmd); err != nil {
		return fail(err)
	}
	// The witness's machine also serves the stack file to the hosts.
	var ln net.Listener
	if err := wns.Do(func() (err error) { ln, err = net.Listen("tcp", "192.0.2.5:8000"); return err }); err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(stackDir)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	r.tb.Cleanup(func() { srv.Close() })
	for _, h := range msHosts {
		if err := r.boot(h); err != nil {
			return fail(err)
		}
	}
	for _, h := range msHosts {
		if err := r.waitReady(ctx, h, timeout); err != nil {
			return fail(err)
		}
	}
	p, closeP, err := startVIPProbe(cns.Name, msVIP)
	if err != nil {
		return fail(err)
	}
	r.prober, r.closeP = p, closeP
	wait, cancel := context.WithTimeout(ctx, qemu.Scale(3*time.Minute))
	defer cancel()
	if _, err := p.WaitAnswer(wait, time.Time{}, func(p vipprobe.Probe) bool { return p.MAC != "" }); err != nil {
		return fail(fmt.Errorf("the website never answered through the VIP after both hosts were ready: %w", err))
	}
	return r, nil
}

// boot starts host h's VM (again, after a loss: it rejoins as standby).
func (r *msRig) boot(h string) error {
	r.boots++
	dir := filepath.Join(r.dir, fmt.Sprintf("%s-%d", h, r.boots))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	opts := r.im.Options(fmt.Sprintf("ip=%s::192.0.2.1:255.255.255.0:%s:eth0:off magestack.host=%s magestack.config=http://192.0.2.5:8000/stack.yaml magestack.console=shell",
		msAddr[h], h, h))
	opts.Name = h
	opts.Memory = 1536
	opts.NetNS = r.net.NetNS()
	opts.Watchdog = true
	lan := r.cables[h].NIC(msLANMAC[h])
	lan.ROM = "none"
	opts.NICs = []qemu.NIC{lan, {Tap: "tp-" + h, MAC: msPairMAC[h], ROM: "none"}}
	vm, err := qemu.Launch(opts, dir)
	if err != nil {
		return err
	}
	r.vms[h] = vm
	con := newLineLog()
	cctx, cancel := context.WithCancel(context.Background())
	go con.follow(cctx, vm.Console, 10*time.Millisecond)
	r.cons[h], r.stopCon[h] = con, cancel
	return nil
}

func (r *msRig) waitReady(ctx context.Context, h string, timeout time.Duration) error {
	c, cancel := context.WithTimeout(ctx, qemu.Scale(timeout))
	defer cancel()
	if _, err := r.vms[h].ExpectContext(c, qemu.ReadyPattern); err != nil {
		return fmt.Errorf("%s not ready: %w (console %s)", h, err, r.vms[h].ConsoleLog())
	}
	return nil
}

func (r *msRig) close() {
	if r.closeP != nil {
		r.closeP()
		r.closeP = nil
	}
	for h, vm := range r.vms {
		vm.Kill()
		r.stopCon[h]()
	}
	r.tb.close()
}

// holder is the host whose MAC the client has for the VIP.
func (r *msRig) holder() string {
	mac := r.prober.MAC()
	for h, m := range msLANMAC {
		if m == mac {
			return h
		}
	}
	return ""
}

func other(h string) string {
	if h == "dh1" {
		return "dh2"
	}
	return "dh1"
}

// logsLines are every log that can hold a failover decision: both
// consoles (the raft leader is a host or the witness) and the witness.
func (r *msRig) allLines() [][]stampedLine {
	out := [][]stampedLine{r.witness.Lines()}
	for _, h := range msHosts {
		out = append(out, r.cons[h].Lines())
	}
	return out
}

// resets counts the hosts' reboots (watchdog resets) within (from, to].
func (r *msRig) resets(from, to time.Time) int {
	n := 0
	for _, h := range msHosts {
		n += resets(r.cons[h].Lines(), from, to)
	}
	return n
}

func (r *msRig) count(from, to time.Time, re *regexp.Regexp) int {
	n := 0
	for _, ls := range r.allLines() {
		n += countBetween(ls, from, to, re)
	}
	return n
}

// kill loses the VIP holder's hardware and reads the timeline.
func (r *msRig) kill(ctx context.Context) (failoverRun, string, error) {
	// Lose a host that serves steadily: a website still recovering from
	// something else would blur the failover's figures.
	steady, cancelSteady := context.WithTimeout(ctx, qemu.Scale(3*time.Minute))
	serr := r.prober.WaitSteady(steady, 5*time.Second)
	cancelSteady()
	if serr != nil {
		return failoverRun{}, "", serr
	}
	lostHost := r.holder()
	if lostHost == "" {
		return failoverRun{}, "", fmt.Errorf("no host holds the VIP (client ARP entry %q)", r.prober.MAC())
	}
	surv := other(lostHost)
	lost := time.Now()
	r.vms[lostHost].Kill()
	wait, cancel := context.WithTimeout(ctx, qemu.Scale(3*time.Minute))
	defer cancel()
	_, werr := r.prober.WaitAnswer(wait, lost, func(p vipprobe.Probe) bool { return p.MAC == msLANMAC[surv] })
	time.Sleep(2 * time.Second) // late console lines
	r.stopCon[lostHost]()
	run := msTimeline(lost, lostHost, surv, r.cons[surv].Lines(), r.witness.Lines(), r.prober.Probes(), r.prober.MACChanges())
	writeProbeLog(filepath.Join(r.dir, fmt.Sprintf("client-loss-%d.log", r.boots)), lost, r.prober.Probes(), r.prober.MACChanges())
	if werr != nil {
		run.missing(stepAnswering, firstLine(werr))
		run.missing(stepGap, firstLine(werr))
	}
	return run, lostHost, nil
}

// msTimeline reads one failover from the survivor's console, the witness's
// log and the client.
func msTimeline(lost time.Time, lostHost, surv string, survLines, witness []stampedLine, probes []vipprobe.Probe, macs []vipprobe.MACChange) failoverRun {
	run := newFailoverRun(lost)
	// Both voters that still live detect the loss; the first counts.
	dead := peerDeadRE(lostHost)
	a, aok := firstAfter(survLines, lost, dead)
	b, bok := firstAfter(witness, lost, dead)
	if e, ok := earliest(a, aok, b, bok); ok {
		run.at(stepDetected, e.At)
	} else {
		run.missing(stepDetected, "no `heartbeat: peer dead peer="+lostHost+"` on "+surv+" or the witness")
	}
	// The raft leader decides: the survivor or the witness.
	mv := movingRE(lostHost)
	a, aok = firstAfter(survLines, lost, mv)
	b, bok = firstAfter(witness, lost, mv)
	if e, ok := earliest(a, aok, b, bok); ok {
		run.at(stepDecided, e.At)
	} else {
		run.missing(stepDecided, "no `failover: moving instances from="+lostHost+"` on "+surv+" or the witness")
	}
	// The survivor starts an instance once the new ownership is committed
	// and applied (after the lease wait that lets the lost host's lease run
	// out). Only starts after the decision count: the survivor may be
	// restarting its own instances for other reasons.
	since := lost
	if d, ok := run.after[stepDecided]; ok {
		since = lost.Add(d)
	}
	if e, ok := firstAfter(survLines, since, startingRE); ok {
		run.at(stepCommitted, e.At)
	} else {
		run.missing(stepCommitted, "no `failover: starting instance` on "+surv)
	}
	if e, ok := firstAfter(survLines, lost, vipHoldingRE); ok {
		run.at(stepVIPHeld, e.At)
	} else {
		run.missing(stepVIPHeld, "no `vip: holding` on "+surv)
	}
	run.fromProber(probes, macs, msLANMAC[surv], func(p vipprobe.Probe) bool { return p.MAC == msLANMAC[surv] })
	return run
}

// lossy impairs both hosts' LAN cables for d and counts failovers.
func (r *msRig) lossy(ctx context.Context, d time.Duration, pct int) (lossResult, error) {
	res := lossResult{d: d, lossPct: pct,
		note: fmt.Sprintf("%d%% loss and %v delay each way on both hosts' LAN cables (qemu.Cable, netem-like); the pair link stays clean", pct, msLossDelay)}
	from := time.Now()
	for _, h := range msHosts {
		if err := r.cables[h].Impair(qemu.Impairment{Loss: float64(pct) / 100, Delay: msLossDelay}); err != nil {
			return res, err
		}
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	to := time.Now()
	for _, h := range msHosts {
		r.cables[h].Impair(qemu.Impairment{})
	}
	// A decision made from the loss's last moments lands after it ends.
	time.Sleep(5 * time.Second)
	late := to.Add(5 * time.Second)
	res.failovers = r.count(from, late, anyMovingRE)
	res.vipMoves = vipprobe.Moves(r.prober.MACChanges(), from, late)
	res.failedReq, res.totalReq = vipprobe.Failed(r.prober.Probes(), from, to)
	res.stepDowns, res.hasStepDowns = r.count(from, late, vipReleasedRE), true
	res.resets = r.resets(from, late)
	if n := r.count(from, late, anyPeerDeadRE); n > 0 {
		res.note += fmt.Sprintf("; %d `peer dead` verdicts", n)
	}
	return res, ctx.Err()
}

// runMagestackVariant boots the pair once, measures the idle and lossy
// false failovers, then loses the VIP holder o.kills times (rebooting the
// lost host as the standby in between).
func runMagestackVariant(ctx context.Context, w io.Writer, work, dead string, o failoverOptions) variant {
	v := variant{name: "magestack dead " + dead}
	dir := filepath.Join(work, "magestack-dead"+dead)
	os.RemoveAll(dir) // the bench's own logs of an earlier run
	if err := os.MkdirAll(dir, 0o755); err != nil {
		v.errs = append(v.errs, err.Error())
		return v
	}
	booted := time.Now()
	r, err := startMagestackRig(ctx, dead, dir, o.timeout)
	if err != nil {
		fmt.Fprintf(w, "magestack dead %s: %v\n", dead, firstLine(err))
		v.errs = append(v.errs, firstLine(err))
		return v
	}
	defer r.close()
	fmt.Fprintf(w, "magestack dead %s: pair ready, website through the VIP from %s after %v\n", dead, r.holder(), time.Since(booted).Round(time.Second))
	time.Sleep(5 * time.Second)
	idle := r.count(time.Time{}, time.Now(), anyMovingRE)
	released := r.count(time.Time{}, time.Now(), vipReleasedRE)
	reset := r.resets(time.Time{}, time.Now())
	v.disturbed = idle + released + reset
	if v.disturbed > 0 {
		v.note = fmt.Sprintf("%d false failover(s), %d VIP release(s) (majority lost), %d host reset(s) while booting and idle, no host lost", idle, released, reset)
		fmt.Fprintf(w, "magestack dead %s: %s\n", dead, v.note)
	}
	if o.lossy > 0 {
		steady, cancel := context.WithTimeout(ctx, qemu.Scale(3*time.Minute))
		if err := r.prober.WaitSteady(steady, 5*time.Second); err != nil {
			fmt.Fprintf(w, "magestack dead %s: before the lossy run: %v\n", dead, firstLine(err))
		}
		cancel()
		res, err := r.lossy(ctx, o.lossy, o.lossPct)
		if err != nil {
			v.lerr = firstLine(err)
		} else {
			v.loss = &res
			fmt.Fprintf(w, "magestack dead %s lossy %v: %s\n", dead, o.lossy, res.summary())
		}
		// Settle on whoever serves now.
		wait, cancel := context.WithTimeout(ctx, qemu.Scale(2*time.Minute))
		r.prober.WaitAnswer(wait, time.Now(), func(p vipprobe.Probe) bool { return p.MAC != "" })
		cancel()
	}
	for i := 1; i <= o.kills; i++ {
		run, lostHost, err := r.kill(ctx)
		if err != nil {
			fmt.Fprintf(w, "magestack dead %s loss %d: %v\n", dead, i, firstLine(err))
			v.errs = append(v.errs, firstLine(err))
			break
		}
		fmt.Fprintf(w, "magestack dead %s loss %d (%s): %s\n", dead, i, lostHost, run.summary())
		v.runs = append(v.runs, run)
		if i == o.kills {
			break
		}
		// The lost host returns as the standby; the next loss is the
		// survivor's.
		if err := r.boot(lostHost); err == nil {
			err = r.waitReady(ctx, lostHost, o.timeout)
		}
		if err != nil {
			v.errs = append(v.errs, firstLine(err))
			break
		}
		time.Sleep(10 * time.Second)
	}
	return v
}
