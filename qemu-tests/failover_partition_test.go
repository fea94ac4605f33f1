package qemutests

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"magestack/init/clusterconf"
	"magestack/init/stackfile"
	"magestack/qemu-tests/qemu"
)

// TestFailoverLossyLANThenPartition: one pair rig (dh1's LAN NIC on an
// impairable cable) serves, in order:
//   - a minute of 20% loss and 50 ms delay on dh1's LAN path (both
//     directions): no failover anywhere, the website keeps answering;
//   - both paths between the hosts cut while the witness sees both: exactly
//     one host ends up running every role, the other none, and the VIP never
//     answers from both;
//   - the paths restored: the cluster settles with one owner per instance.
func TestFailoverLossyLANThenPartition(t *testing.T) {
	qemu.Require(t)
	stack := strings.Replace(pairStackYAML, "cluster: {suspect: 1s, dead: 3s}", lossyClusterTiming, 1)
	if stack == pairStackYAML {
		t.Fatal("pairStackYAML no longer has the cluster line this scenario widens")
	}
	r := startPairRigWith(t, pairRigOptions{Stack: stack, Cabled: []string{"dh1"}})
	start := time.Now()
	r.prober.waitOK(t, start, pairMAC["dh1"], 3*time.Minute)
	insts := pairInstances(t)
	// Let every instance come up before impairing anything.
	settled := waitOneOwnerEach(t, r, insts, 10*time.Minute)
	t.Logf("before the impairments: %s", settled)

	t.Run("lossy LAN: no failover", func(t *testing.T) { lossyLANMinute(t, r, stack) })
	t.Run("partition: one owner", func(t *testing.T) { partitionPair(t, r, insts) })
}

// lossyClusterTiming is the lossy-LAN scenario's cluster timing, wider
// than pairStackYAML's 3 s on purpose. Under TCG on this shared 2-core
// machine a guest freezes for up to 3.4 s (measured), and the lossy path's
// TCP retransmissions (20% loss, 50 ms delay, 200 ms minimum RTO) delay
// raft's traffic to the witness by a second or more on top: with a 3 s
// dead time (lease 2.4 s, raft follower timeout 0.6 s) a freeze alone
// stops roles, whatever the LAN does. 10 s (lease 8 s, follower timeout
// 2 s) leaves the scenario about the lossy LAN, and it then asserts no
// failover, no stopped instance and a website that keeps answering,
// without exceptions. Real hardware runs the 1 s default.
const lossyClusterTiming = "cluster: {suspect: 3s, dead: 10s}"

// pairInstances lists the instances of the pair stack.
func pairInstances(t *testing.T) []string {
	st, err := stackfile.Parse("pair.yaml", []byte(pairStackYAML))
	if err != nil {
		t.Fatal(err)
	}
	list, err := st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, in := range list {
		out = append(out, in.Name)
	}
	return out
}

// countEvents counts, per pattern, the matches in text.
func countEvents(text string, patterns map[string]*regexp.Regexp) map[string]int {
	out := map[string]int{}
	for k, re := range patterns {
		out[k] = len(re.FindAllStringIndex(text, -1))
	}
	return out
}

// clusterEvents are the log lines the lossy minute counts, per member.
var clusterEvents = map[string]*regexp.Regexp{
	"failovers":      regexp.MustCompile(`failover: moving instances`),
	"stops":          regexp.MustCompile(`failover: stopping instance`),
	"elections":      regexp.MustCompile(`heartbeat timeout reached, starting election|entering candidate state`),
	"stepdowns":      regexp.MustCompile(`failed to contact quorum of nodes, stepping down`),
	"lan suspect":    regexp.MustCompile(`heartbeat: path suspect.*path=lan`),
	"lan dead":       regexp.MustCompile(`heartbeat: path dead.*path=lan`),
	"peer suspect":   regexp.MustCompile(`heartbeat: peer suspect`),
	"peer dead":      regexp.MustCompile(`heartbeat: peer dead`),
	"raft conn fail": regexp.MustCompile(`failed to (appendEntries|heartbeat) to`),
}

// pairMemberLogs is each member's log so far: the hosts' consoles and the
// witness's output.
func pairMemberLogs(r *pairRig) map[string]string {
	return map[string]string{"dh1": r.vms["dh1"].Console(), "dh2": r.vms["dh2"].Console(), "witness": r.witness.String()}
}

func lossyLANMinute(t *testing.T, r *pairRig, stack string) {
	c := r.cables["dh1"]
	before := pairMemberLogs(r)
	from := time.Now()
	if err := c.Impair(qemu.Impairment{Loss: 0.2, Delay: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	toVM0, fromVM0 := c.Stats()
	// The figure is "a minute" of real time, whatever the machine's load.
	time.Sleep(time.Minute)
	toVM1, fromVM1 := c.Stats()
	if err := c.Impair(qemu.Impairment{}); err != nil {
		t.Fatal(err)
	}
	to := time.Now()
	lost := func(a, b qemu.CableStats) string {
		n := (b.Passed - a.Passed) + (b.Lost - a.Lost) + (b.Overflowed - a.Overflowed)
		return fmt.Sprintf("%d frames, %d lost (%.1f%%), %d overflowed", n, b.Lost-a.Lost,
			float64(b.Lost-a.Lost)*100/float64(max(n, 1)), b.Overflowed-a.Overflowed)
	}
	t.Logf("dh1's LAN cable during the minute: to dh1 %s; from dh1 %s", lost(toVM0, toVM1), lost(fromVM0, fromVM1))
	if toVM1.Lost == toVM0.Lost || fromVM1.Lost == fromVM0.Lost {
		t.Errorf("the cable lost nothing: the impairment did not act")
	}

	// Decided from what the members' logs and the client show, never from
	// the product's own report that it stalled: the stack's timing is
	// wide enough for this machine's freezes (lossyClusterTiming).
	timing := pairTiming(t, stack)
	after := pairMemberLogs(r)
	var maxStall time.Duration
	for _, m := range []string{"dh1", "dh2", "witness"} {
		maxStall = max(maxStall, longestStall(after[m][len(before[m]):]))
	}
	// For whoever reads a failure: the members' own stall reports are
	// context only.
	t.Logf("longest freeze the members reported during the minute: %v (lease %v, dead %v)", maxStall, timing.Lease, timing.Dead)
	for _, m := range []string{"dh1", "dh2", "witness"} {
		counts := countEvents(after[m][len(before[m]):], clusterEvents)
		t.Logf("%s during the lossy minute: %v", m, counts)
		if counts["failovers"] != 0 {
			t.Errorf("%s: %d failovers under a lossy LAN, want 0", m, counts["failovers"])
		}
		if counts["stops"] != 0 {
			t.Errorf("%s: stopped %d instances under a lossy LAN (lost the majority), want 0", m, counts["stops"])
		}
	}

	ok, total, gap, macs := r.prober.answeredBetween(from, to)
	t.Logf("website through the VIP during the minute: %d/%d requests answered, longest gap %v, answered by %v",
		ok, total, gap.Round(time.Millisecond), macs)
	// Requests cross the lossy cable (dh1 holds the VIP): many time out
	// (500 ms client timeout, TCP's first retransmission after 1 s). The
	// website must still answer throughout.
	if ok == 0 || gap > qemu.Scale(20*time.Second) {
		t.Errorf("the website stopped answering under a lossy LAN: %d/%d answered, longest gap %v", ok, total, gap)
	}
	if len(macs) != 1 || macs[0] != pairMAC["dh1"] {
		t.Errorf("the VIP answered from %v during the lossy minute, want only dh1 %s", macs, pairMAC["dh1"])
	}
}

var stallLine = regexp.MustCompile(`this member stalled; .* stall=(\S+)`)

// longestStall is the longest freeze a member's log reports.
func longestStall(log string) time.Duration {
	var longest time.Duration
	for _, m := range stallLine.FindAllStringSubmatch(log, -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			longest = max(longest, d)
		}
	}
	return longest
}

// pairTiming is the cluster timing of a pair stack.
func pairTiming(t *testing.T, stack string) struct{ Lease, Dead time.Duration } {
	st, err := stackfile.Parse("pair.yaml", []byte(stack))
	if err != nil {
		t.Fatal(err)
	}
	m, err := clusterconf.For(st, "dh1")
	if err != nil {
		t.Fatal(err)
	}
	return struct{ Lease, Dead time.Duration }{m.Timing.Lease, st.Cluster.Dead.D()}
}

// answeredBetween summarises the probes between from and to: answered, sent, the
// longest time without an answer, and the MACs that answered in order of
// first answer.
func (p *prober) answeredBetween(from, to time.Time) (ok, total int, longestGap time.Duration, macs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	last := from
	seen := map[string]bool{}
	for _, r := range p.results {
		if r.at.Before(from) || r.at.After(to) {
			continue
		}
		total++
		if !r.ok {
			continue
		}
		ok++
		longestGap = max(longestGap, r.at.Sub(last))
		last = r.at
		if !seen[r.mac] {
			seen[r.mac] = true
			macs = append(macs, r.mac)
		}
	}
	return ok, total, max(longestGap, to.Sub(last)), macs
}

// macRuns lists the MACs that answered since from, one entry per run of
// answers from the same MAC: [A B] is one switch, [A B A] is both answering.
func (p *prober) macRuns(from time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var runs []string
	for _, r := range p.results {
		if r.at.Before(from) || !r.ok {
			continue
		}
		if len(runs) == 0 || runs[len(runs)-1] != r.mac {
			runs = append(runs, r.mac)
		}
	}
	return runs
}

var hostStatusSeq atomic.Int64

// hostStatus is what `magestack status` on a host's console says.
type hostStatus struct {
	leader  string
	up      map[string]string // role instance → unit state, for units not stopped
	owner   map[string]string // instance → owner in the ownership table
	rawTail string
}

var (
	hostStatusLeader = regexp.MustCompile(`cluster: this host \S+, leader (\S+)`)
	hostStatusUnit   = regexp.MustCompile(`(?m)^([a-z]+\d+)\s+(stopped|starting|running|ready|backoff|stopping|failed)\s`)
	hostStatusOwner  = regexp.MustCompile(`(?m)^([a-z]+\d+)\s+(\S+)\s+(\d+)\s+\S+\s+\d\d:\d\d:\d\d`)
)

// status runs `magestack status` on host's console and parses it.
func readHostStatus(t *testing.T, r *pairRig, host string) (hostStatus, error) {
	n := hostStatusSeq.Add(1)
	vm := r.vms[host]
	// The quotes keep the echoed command line from matching the markers.
	if err := vm.SendConsole(fmt.Sprintf("echo @@st-b\"\"egin-%d@@; magestack status; echo @@st-e\"\"nd-%d@@\n", n, n)); err != nil {
		return hostStatus{}, err
	}
	m, err := vm.Expect(2*time.Minute, fmt.Sprintf(`(?s)@@st-begin-%d@@(.*?)@@st-end-%d@@`, n, n))
	if err != nil {
		return hostStatus{}, err
	}
	out := m[1]
	s := hostStatus{up: map[string]string{}, owner: map[string]string{}, rawTail: out}
	if lm := hostStatusLeader.FindStringSubmatch(out); lm != nil {
		s.leader = lm[1]
	}
	for _, um := range hostStatusUnit.FindAllStringSubmatch(out, -1) {
		if um[2] != "stopped" && um[2] != "failed" {
			s.up[um[1]] = um[2]
		}
	}
	for _, om := range hostStatusOwner.FindAllStringSubmatch(out, -1) {
		s.owner[om[1]] = om[2]
	}
	return s, nil
}

// placement describes which host runs which instance.
type placement struct {
	runs   map[string][]string // instance → hosts with its unit up
	owners map[string]string   // instance → owner per dh1's and dh2's tables, "a|b" when they differ
	leader string
}

func (p placement) String() string {
	var parts []string
	for inst, hosts := range p.runs {
		parts = append(parts, fmt.Sprintf("%s@%s(owner %s)", inst, strings.Join(hosts, "+"), p.owners[inst]))
	}
	sort.Strings(parts)
	return fmt.Sprintf("leader %s: %s", p.leader, strings.Join(parts, " "))
}

func observePlacement(t *testing.T, r *pairRig, insts []string) (placement, error) {
	p := placement{runs: map[string][]string{}, owners: map[string]string{}}
	st := map[string]hostStatus{}
	for _, h := range []string{"dh1", "dh2"} {
		s, err := readHostStatus(t, r, h)
		if err != nil {
			return p, err
		}
		st[h] = s
	}
	p.leader = st["dh1"].leader + "|" + st["dh2"].leader
	for _, inst := range insts {
		for _, h := range []string{"dh1", "dh2"} {
			if _, ok := st[h].up[inst]; ok {
				p.runs[inst] = append(p.runs[inst], h)
			}
		}
		if a, b := st["dh1"].owner[inst], st["dh2"].owner[inst]; a == b {
			p.owners[inst] = a
		} else {
			p.owners[inst] = a + "|" + b
		}
	}
	return p, nil
}

// oneOwnerEach: every instance runs on exactly one host, the one both
// hosts' tables name as its owner.
func (p placement) oneOwnerEach(insts []string) bool {
	for _, inst := range insts {
		if len(p.runs[inst]) != 1 || p.owners[inst] != p.runs[inst][0] {
			return false
		}
	}
	return true
}

// waitOneOwnerEach polls both hosts' status until oneOwnerEach holds.
func waitOneOwnerEach(t *testing.T, r *pairRig, insts []string, within time.Duration) placement {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(within))
	var p placement
	var err error
	for time.Now().Before(deadline) {
		if p, err = observePlacement(t, r, insts); err == nil && p.oneOwnerEach(insts) {
			return p
		}
		time.Sleep(5 * time.Second)
	}
	t.Fatalf("within %v the cluster did not settle with one owner per instance: %v (last error %v)", within, p, err)
	return p
}

// cutPairLAN drops (or, with cut false, passes again) every frame between the
// two hosts' LAN ports on br0; the witness and the client still reach both.
func cutPairLAN(r *pairRig, cut bool) error {
	script := "table bridge ms_partition\ndelete table bridge ms_partition\n"
	if cut {
		script += `table bridge ms_partition {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "tl-dh1" oifname "tl-dh2" drop
    iifname "tl-dh2" oifname "tl-dh1" drop
  }
}
`
	}
	out, err := r.net.Run("sh", "-c", "nft -f - <<'EOF'\n"+script+"EOF\n")
	if err != nil {
		return fmt.Errorf("partition rule: %w: %s", err, out)
	}
	return nil
}

func partitionPair(t *testing.T, r *pairRig, insts []string) {
	before, err := observePlacement(t, r, insts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before the cut: %v", before)

	cutLogs := pairMemberLogs(r)
	cut := time.Now()
	if err := r.vms["dh1"].SetLink("net1", false); err != nil {
		t.Fatal(err)
	}
	if err := cutPairLAN(r, true); err != nil {
		t.Fatal(err)
	}
	for _, h := range [][2]string{{"dh1", "dh2"}, {"dh2", "dh1"}} {
		if _, err := r.vms[h[0]].Expect(time.Minute, `heartbeat: peer dead.*peer=`+h[1]); err != nil {
			t.Errorf("%s did not see %s dead with both paths cut: %v", h[0], h[1], err)
		}
	}
	// Exactly one side keeps or takes every instance; the other runs none.
	deadline := time.Now().Add(qemu.Scale(10 * time.Minute))
	var p placement
	winner := ""
	for time.Now().Before(deadline) {
		if p, err = observePlacement(t, r, insts); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"dh1", "dh2"} {
			all := true
			for _, inst := range insts {
				all = all && len(p.runs[inst]) == 1 && p.runs[inst][0] == h
			}
			if all {
				winner = h
			}
		}
		if winner != "" {
			break
		}
		time.Sleep(5 * time.Second)
	}
	settledAt := time.Now()
	if winner == "" {
		t.Errorf("with both paths cut, no single host runs every instance within 10 min: %v", p)
	} else {
		t.Logf("partition: %s runs every instance %v after the cut: %v", winner, settledAt.Sub(cut).Round(time.Second), p)
	}
	// Hold the partition a while: nothing flaps back.
	time.Sleep(qemu.Scale(20 * time.Second))
	if later, err := observePlacement(t, r, insts); err != nil {
		t.Error(err)
	} else if winner != "" {
		for _, inst := range insts {
			if hosts := later.runs[inst]; len(hosts) != 1 || hosts[0] != winner {
				t.Errorf("20 s into the settled partition %s runs on %v, want only %s", inst, hosts, winner)
			}
		}
	}
	runs := r.prober.macRuns(cut)
	t.Logf("VIP answers since the cut, by MAC run: %v", runs)
	if len(runs) > 2 || (winner != "" && len(runs) > 0 && runs[len(runs)-1] != pairMAC[winner]) {
		t.Errorf("the VIP answered from %v since the cut: both hosts answered, or not the winner %s last", runs, winner)
	}
	now := pairMemberLogs(r)
	for _, m := range []string{"dh1", "dh2", "witness"} {
		counts := countEvents(now[m][len(cutLogs[m]):], clusterEvents)
		t.Logf("%s during the partition: %v", m, counts)
		if loser := map[string]string{"dh1": "dh2", "dh2": "dh1"}[winner]; m == loser && before.runsAny(loser, insts) && counts["stops"] == 0 {
			t.Errorf("the loser %s never logged stopping its instances", loser)
		}
	}

	// Restore both paths: the cluster settles with one owner per instance.
	restored := time.Now()
	if err := cutPairLAN(r, false); err != nil {
		t.Fatal(err)
	}
	if err := r.vms["dh1"].SetLink("net1", true); err != nil {
		t.Fatal(err)
	}
	final := waitOneOwnerEach(t, r, insts, 10*time.Minute)
	t.Logf("restored: settled %v after the paths came back: %v", time.Since(restored).Round(time.Second), final)
	r.prober.waitOK(t, restored, "", 3*time.Minute)
	lbHost := final.runs["lb1"][0]
	runs = r.prober.macRuns(restored)
	t.Logf("VIP answers since the restore, by MAC run: %v (lb1 on %s)", runs, lbHost)
	if len(runs) > 2 || runs[len(runs)-1] != pairMAC[lbHost] {
		t.Errorf("after the restore the VIP answered from %v: flapping, or not from lb1's host %s last", runs, lbHost)
	}
	// No failback: the returning side stays standby, unless a host was
	// declared dead after the restore (this loaded machine stalls VMs for
	// seconds) and a real takeover followed.
	if winner != "" {
		after := pairMemberLogs(r)
		deadAgain := false
		for _, m := range []string{"dh1", "dh2", "witness"} {
			counts := countEvents(after[m][len(now[m]):], clusterEvents)
			t.Logf("%s since the restore: %v", m, counts)
			deadAgain = deadAgain || counts["peer dead"] > 0
		}
		for _, inst := range insts {
			if h := final.runs[inst][0]; h != winner && !deadAgain {
				t.Errorf("after the restore %s went back to %s with no host declared dead: failback", inst, h)
			}
		}
	}
}

func (p placement) runsAny(host string, insts []string) bool {
	for _, inst := range insts {
		for _, h := range p.runs[inst] {
			if h == host {
				return true
			}
		}
	}
	return false
}
