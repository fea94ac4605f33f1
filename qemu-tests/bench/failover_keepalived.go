package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"magestack/qemu-tests/vipprobe"
)

// The keepalived reference: the same topology as the magestack pair, in
// namespaces on this host. Two "hosts" run keepalived's VRRP for the VIP
// and a small HTTP server answering its name; a client requests the VIP.
const (
	klVIP   = "192.0.2.50"
	klPrio1 = 150 // h1 is the master while it lives
	klPrio2 = 100
)

var klHosts = []struct{ name, cidr, mac string }{
	{"h1", "192.0.2.11/24", "52:54:00:bb:01:01"},
	{"h2", "192.0.2.12/24", "52:54:00:bb:01:02"},
}

// keepalived's own lines for the timeline and for counting false failovers.
var (
	klMasterRE = regexp.MustCompile(`Entering MASTER STATE`)
	klGARPRE   = regexp.MustCompile(`Sending gratuitous ARP`)
)

// keepalivedConf is one host's configuration. VRRPv2 has whole-second
// advertisement intervals, so sub-second intervals use VRRPv3.
func keepalivedConf(host string, prio int, advert string) string {
	version := ""
	if advert != "1" {
		version = "  vrrp_version 3\n"
	}
	return fmt.Sprintf(`global_defs {
  router_id %s
%s}
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int %s
  virtual_ipaddress {
    %s/24 dev eth0
  }
}
`, host, version, prio, advert, klVIP)
}

// klRig is one keepalived pair with its client.
type klRig struct {
	lab    *lab
	ns     map[string]string // host → namespace
	ports  map[string]string // host → switch port
	procs  map[string]*exec.Cmd
	logs   map[string]*lineLog
	prober *vipprobe.Prober
	closeP func()
}

func startKeepalivedRig(ctx context.Context, name, advert, dir string) (*klRig, error) {
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		return nil, fmt.Errorf("keepalived is not installed (Debian package keepalived)")
	}
	l, err := newLab(name)
	if err != nil {
		return nil, err
	}
	r := &klRig{lab: l, ns: map[string]string{}, ports: map[string]string{}, procs: map[string]*exec.Cmd{}, logs: map[string]*lineLog{}}
	fail := func(err error) (*klRig, error) { r.close(); return nil, err }
	for i, h := range klHosts {
		ns, port, err := l.addMachine("br0", h.name, h.cidr, h.mac)
		if err != nil {
			return fail(err)
		}
		r.ns[h.name], r.ports[h.name] = ns, port
		host := h.name
		if err := l.serve(ns, ":80", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, host+"\n") })); err != nil {
			return fail(err)
		}
		conf := filepath.Join(dir, h.name+".conf")
		if err := os.WriteFile(conf, []byte(keepalivedConf(h.name, []int{klPrio1, klPrio2}[i], advert)), 0o644); err != nil {
			return fail(err)
		}
		log := newLineLog()
		// Pid files per rig: keepalived refuses to start while an earlier
		// rig's files name a process that is not yet reaped.
		run := filepath.Join(dir, name+"-run")
		if err := os.MkdirAll(run, 0o755); err != nil {
			return fail(err)
		}
		cmd := exec.Command(bin, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp", "--dont-respawn",
			"-f", conf, "-p", filepath.Join(run, h.name+".pid"), "-r", filepath.Join(run, h.name+"-vrrp.pid"))
		cmd.Stdout, cmd.Stderr = log, log
		if err := l.start(ns, cmd); err != nil {
			return fail(err)
		}
		r.procs[h.name], r.logs[h.name] = cmd, log
	}
	cns, _, err := l.addMachine("br0", "client", "192.0.2.100/24", "")
	if err != nil {
		return fail(err)
	}
	p, closeP, err := startVIPProbe(cns, klVIP)
	if err != nil {
		return fail(err)
	}
	r.prober, r.closeP = p, closeP
	// h1 wins the first election after keepalived's startup wait.
	wait, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := p.WaitAnswer(wait, time.Now(), func(p vipprobe.Probe) bool { return p.Body == "h1" }); err != nil {
		for h, l := range r.logs {
			os.WriteFile(filepath.Join(dir, name+"-"+h+".log"), []byte(l.String()), 0o644)
		}
		writeProbeLog(filepath.Join(dir, name+"-client.log"), time.Now(), p.Probes(), p.MACChanges())
		return fail(fmt.Errorf("keepalived pair never served from h1 (logs: %s): %w", filepath.Join(dir, name+"-*.log"), err))
	}
	return r, nil
}

func (r *klRig) close() {
	if r.closeP != nil {
		r.closeP()
	}
	r.lab.close()
}

// loseH1 is hardware loss of the master: its keepalived dies and its link
// goes, at once.
func (r *klRig) loseH1() (time.Time, error) {
	lost := time.Now()
	var wg sync.WaitGroup
	var linkErr error
	wg.Add(1)
	go func() { defer wg.Done(); linkErr = ip("-n", r.ns["h1"], "link", "del", "eth0") }()
	killGroup(r.procs["h1"])
	wg.Wait()
	return lost, linkErr
}

// runKeepalivedKill measures one failover after h1's loss.
func runKeepalivedKill(ctx context.Context, name, advert, dir string) (failoverRun, error) {
	r, err := startKeepalivedRig(ctx, name, advert, dir)
	if err != nil {
		return failoverRun{}, err
	}
	defer r.close()
	time.Sleep(2 * time.Second) // a steady state before the loss
	lost, err := r.loseH1()
	if err != nil {
		return failoverRun{}, err
	}
	wait, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, werr := r.prober.WaitAnswer(wait, lost, func(p vipprobe.Probe) bool { return p.Body == "h2" })
	time.Sleep(time.Second) // late log lines
	r.closeP()
	r.closeP = nil
	run := klTimeline(lost, r.logs["h2"].Lines(), r.prober.Probes(), r.prober.MACChanges())
	writeProbeLog(filepath.Join(dir, name+"-client.log"), lost, r.prober.Probes(), r.prober.MACChanges())
	os.WriteFile(filepath.Join(dir, name+"-h2.log"), []byte(r.logs["h2"].String()), 0o644)
	if werr != nil {
		run.missing(stepAnswering, firstLine(werr))
	}
	return run, nil
}

// klTimeline reads one keepalived failover from h2's log and the prober.
func klTimeline(lost time.Time, h2 []stampedLine, probes []vipprobe.Probe, macs []vipprobe.MACChange) failoverRun {
	run := newFailoverRun(lost)
	// VRRP detects and decides in one step: the backup's master-down timer
	// runs out and it becomes master; there is no vote to commit.
	if e, ok := firstAfter(h2, lost, klMasterRE); ok {
		run.at(stepDetected, e.At)
		run.at(stepDecided, e.At)
	} else {
		run.missing(stepDetected, "h2 never logged `Entering MASTER STATE`")
		run.missing(stepDecided, "h2 never logged `Entering MASTER STATE`")
	}
	run.missing(stepCommitted, "-")
	if e, ok := firstAfter(h2, lost, klGARPRE); ok {
		run.at(stepVIPHeld, e.At)
	} else {
		run.missing(stepVIPHeld, "h2 never logged `Sending gratuitous ARP`")
	}
	run.fromProber(probes, macs, klHosts[1].mac, func(p vipprobe.Probe) bool { return p.Body == "h2" })
	return run
}

// runKeepalivedLossy runs the pair for d with lossPct of the frames through
// each host's switch port dropped, and counts the failovers no loss of a
// host justified.
func runKeepalivedLossy(ctx context.Context, name, advert, dir string, d time.Duration, lossPct int) (lossResult, error) {
	r, err := startKeepalivedRig(ctx, name, advert, dir)
	if err != nil {
		return lossResult{}, err
	}
	defer r.close()
	from := time.Now()
	for _, h := range klHosts {
		if err := r.lab.sw.Impair(r.ports[h.name], lossPct); err != nil {
			return lossResult{}, err
		}
	}
	select {
	case <-ctx.Done():
		return lossResult{}, ctx.Err()
	case <-time.After(d):
	}
	to := time.Now()
	for _, h := range klHosts {
		r.lab.sw.Impair(r.ports[h.name], 0)
	}
	time.Sleep(500 * time.Millisecond)
	res := lossResult{d: d, lossPct: lossPct, note: fmt.Sprintf("%d%% drop each way on both hosts' switch ports (nftables bridge rule via qemu.Net.Impair; no delay: the host has no netem)", lossPct)}
	// Every time the backup takes the master state, it claims the VIP
	// while the live master still holds it.
	res.failovers = countBetween(r.logs["h2"].Lines(), from, to, klMasterRE)
	res.vipMoves = vipprobe.Moves(r.prober.MACChanges(), from, to)
	res.failedReq, res.totalReq = vipprobe.Failed(r.prober.Probes(), from, to)
	return res, nil
}
