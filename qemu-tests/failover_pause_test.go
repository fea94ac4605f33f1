package qemutests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestFailoverWitnessDownPauseReturn runs on one pair rig, in order:
//  1. the witness crashes and comes back: service does not change;
//  2. the active host (dh1, holding lb and the VIP) is paused for longer
//     than the dead time: dh2 takes over, and once dh1 runs again it does
//     not serve (it steps down, or the watchdog resets it);
//  3. dh1 rejoins as standby (no failback), and `magestack failover --to
//     dh1` moves the roles back on purpose.
func TestFailoverWitnessDownPauseReturn(t *testing.T) {
	qemu.Require(t)
	stack := strings.Replace(pairStackYAML, "cluster: {suspect: 1s, dead: 3s}", "cluster: {suspect: 2s, dead: 6s}", 1)
	if stack == pairStackYAML {
		t.Fatal("pairStackYAML no longer has the cluster line this scenario widens")
	}
	// With the witness down the two hosts are exactly a majority, and on
	// this shared machine a guest stalls for up to 3.4 s (measured): longer
	// than a 3 s dead time, so every stall would cost the pair its raft
	// leader and lease. A 6 s dead time (lease 4.8 s) keeps the scenario
	// about the witness, the pause and the return rather than the host's
	// load; the pause below still lasts well past it.
	r := startPairRigWith(t, pairRigOptions{Stack: stack})
	dh1, dh2 := r.vms["dh1"], r.vms["dh2"]
	mac1, mac2 := pairMAC["dh1"], pairMAC["dh2"]
	r.prober.waitOK(t, time.Now().Add(-time.Hour), mac1, 2*time.Minute)

	top := t
	var restarted *qemu.LockedBuffer // the witness's output after its restart
	ok := t.Run("witness down", func(t *testing.T) {
		out := consoleRun(t, dh1, "magestack status")
		t.Logf("before the witness goes: %s", firstMatch(out, `cluster: this host .*`))
		marks := consoleMarks(r)
		down := time.Now()
		w := killWitness(t)
		for _, h := range []string{"dh1", "dh2"} {
			if _, err := r.vms[h].Expect(time.Minute, `heartbeat: peer dead peer=witness`); err != nil {
				t.Errorf("%s did not notice the witness going: %v", h, err)
			}
		}
		// A while without the witness: past raft's election and lease
		// times and the hosts' dead time.
		time.Sleep(qemu.Scale(20 * time.Second))
		restarted = restartWitness(top, w)
		for _, h := range []string{"dh1", "dh2"} {
			if _, err := r.vms[h].Expect(2*time.Minute, `heartbeat: peer alive peer=witness`); err != nil {
				t.Errorf("%s did not see the witness back: %v", h, err)
			}
		}
		time.Sleep(qemu.Scale(5 * time.Second))
		end := time.Now()
		for h, mark := range marks {
			since := r.vms[h].Console()[mark:]
			for _, bad := range []string{`failover: moving instances.*`, `failover: stopping instance.*`, `failover: starting instance.*`, `vip: released.*`} {
				if m := regexp.MustCompile(bad).FindString(since); m != "" {
					t.Errorf("%s: the witness going away changed the service: %q", h, m)
				}
			}
		}
		if m := regexp.MustCompile(`failover: moving instances.*`).FindString(r.witness.String() + restarted.String()); m != "" {
			t.Errorf("witness: %q", m)
		}
		answered, macs, gap := r.prober.window(down, end)
		t.Logf("witness down %v: %d requests answered, longest gap between answers %v", end.Sub(down).Round(time.Millisecond), answered, gap)
		if answered == 0 || len(macs) != 1 || macs[0] != mac1 {
			t.Errorf("while the witness was down the website answered %d times from %v; want answers from dh1 %s only", answered, macs, mac1)
		}
		if gap > qemu.Scale(10*time.Second) {
			t.Errorf("the website stopped answering for %v while the witness was down", gap)
		}
	})
	if !ok {
		t.FailNow()
	}

	// resumed: dh1 runs again; stepped: it released the VIP (or was reset).
	var resumed, stepped time.Time
	var mark2 int // dh2's console at the pause
	ok = t.Run("active paused", func(t *testing.T) {
		mark := len(dh1.Console())
		mark2 = len(dh2.Console())
		paused := time.Now()
		last1 := r.prober.lastOK(paused, mac1)
		if err := dh1.Stop(); err != nil {
			t.Fatal(err)
		}
		took := r.prober.waitOK(t, paused, mac2, 3*time.Minute)
		t.Logf("dh1 paused: website answered from dh2 %v after the pause (gap since dh1's last answer %v)",
			took.Sub(paused).Round(time.Millisecond), took.Sub(last1).Round(time.Millisecond))
		if _, err := dh2.Expect(time.Minute, `failover: moving instances.*from=dh1 to=dh2|failover: starting instance`); err != nil {
			t.Errorf("dh2: %v", err)
		}
		// Stay paused well past the dead time (6 s) and the takeover.
		if d := time.Until(paused.Add(20 * time.Second)); d > 0 {
			time.Sleep(d)
		}
		resumed = time.Now()
		if err := dh1.Cont(); err != nil {
			t.Fatal(err)
		}
		t.Logf("dh1 resumed after %v paused", resumed.Sub(paused).Round(time.Millisecond))
		// dh1 must stop serving: release the VIP (stepping down), or be
		// reset by its watchdog.
		m, err := dh1.Expect(2*time.Minute, `vip: released.*|Linux version \S+`)
		if err != nil {
			t.Fatalf("dh1 neither stepped down nor was reset after resuming: %v", err)
		}
		stepped = time.Now()
		if strings.HasPrefix(m[0], "Linux version") {
			t.Logf("dh1 was reset (watchdog) %v after resuming", stepped.Sub(resumed).Round(time.Millisecond))
			if _, err := dh1.Expect(10*time.Minute, qemu.ReadyPattern); err != nil {
				t.Fatalf("dh1 after its reset: %v", err)
			}
		} else {
			since := dh1.Console()[mark:]
			t.Logf("dh1 stepped down %v after resuming (host clock; console lines: %q)", stepped.Sub(resumed).Round(time.Millisecond),
				regexp.MustCompile(`failover: (stepping down|stopping instance).*`).FindAllString(since, -1))
			// The VIP goes first, the instances after it: lb1 still ran
			// when the address went (the stop lines themselves may come
			// before the holder's "released": stops start at once).
			if _, err := dh1.Expect(time.Minute, `unit stopped unit=lb1 `); err != nil {
				t.Errorf("dh1 released the VIP but did not stop lb1 after it: %v", err)
			}
		}
		// Let the neighbours' caches and any late announcement show.
		time.Sleep(qemu.Scale(10 * time.Second))
		// dh2 goes on serving: answers keep coming from it, also once dh1's
		// stale instances have been stopped.
		if at, ok := r.prober.answerAfter(time.Now(), mac2, time.Minute); !ok {
			t.Errorf("the website stopped answering from dh2 after dh1 resumed (nothing for a minute)")
		} else {
			t.Logf("dh2 answered %v after dh1 resumed", at.Sub(resumed).Round(time.Millisecond))
		}
		// Until it steps down, a host resumed from a pause may still answer
		// ARP for the VIP: frozen with it, its clocks did not run, so its
		// raft lease looks fresh until it hears the new term (0.5-0.7 s
		// here). Only fencing or a lease the peer outwaits closes that
		// window (issue 14's watchdog and lease item); logged, and bounded
		// as a hang. A gratuitous ARP it sends then (a refresh that was
		// due) is answered by dh2 a second later. From its release on, the
		// VIP is dh2's alone.
		if early := r.prober.macs(resumed); slices.Contains(early, mac1) {
			t.Logf("known window: dh1 answered for the VIP between its resume and its step-down (%v)", stepped.Sub(resumed).Round(time.Millisecond))
		}
		if w := stepped.Sub(resumed); w > qemu.Scale(10*time.Second) {
			t.Errorf("dh1 took %v after resuming to step down or be reset", w)
		}
		if got := r.prober.macs(stepped); len(got) != 1 || got[0] != mac2 {
			t.Errorf("after dh1 released the VIP it answered from %v; want dh2 %s only", got, mac2)
		}
		answered, _, gap := r.prober.window(resumed, time.Now())
		t.Logf("after the resume: %d answers, longest gap %v; the VIP's MAC per request: %s", answered, gap, r.prober.macTrail(resumed))
		// A hang bound (typical gap: 0.1-0.4 s; 1.1 s when dh1's refresh was
		// due): before instances kept their MAC across hosts, one ARP from
		// dh1's stale copies cut dh2's website off for 33-47 s, and before
		// dh2 answered a stale refresh, 26 s.
		if gap > qemu.Scale(20*time.Second) {
			t.Errorf("after dh1 resumed the website did not answer for %v", gap)
			// What dh2 did meanwhile, for whoever chases the outage.
			t.Logf("dh2 since the pause:\n%s", strings.Join(regexp.MustCompile(`(?m)^.*(failover|vip|unit|health|heartbeat: peer).*$`).FindAllString(dh2.Console()[mark2:], -1), "\n"))
			t.Logf("dh2 status:\n%s", consoleRun(t, dh2, "magestack status"))
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("returns as standby, planned move back", func(t *testing.T) {
		// Searched from the pause on: commands typed on dh2 meanwhile moved
		// its console cursor.
		if !consoleShows(dh2, mark2, `heartbeat: peer alive peer=dh1`, 2*time.Minute) {
			t.Fatalf("dh2 never heard dh1 again")
		}
		mark := len(dh1.Console())
		time.Sleep(qemu.Scale(15 * time.Second))
		if m := regexp.MustCompile(`failover: starting instance.*|vip: holding.*`).FindString(dh1.Console()[mark:]); m != "" {
			t.Errorf("dh1 took roles back by itself (failback): %q", m)
		}
		// From dh1's step-down on (before it: the known window above).
		if got := r.prober.macs(stepped); len(got) != 1 || got[0] != mac2 {
			t.Errorf("before the planned move the VIP answered from %v; want dh2 %s only", got, mac2)
		}
		out := consoleRun(t, dh1, "magestack status")
		for _, p := range []string{`cluster: this host (follower|leader), .*in majority: true`, `this host runs no instance: standby`,
			`(?m)^lb1\s+dh2\s+\d+\s+dh1\s`, `(?m)^web1\s+dh2\s+\d+\s+dh1\s`} {
			if !regexp.MustCompile(p).MatchString(out) {
				t.Errorf("magestack status on dh1 after its return lacks %q:\n%s", p, out)
			}
		}

		planned := time.Now()
		out = consoleRunWithin(t, dh1, "magestack failover --to dh1", 3*time.Minute)
		t.Logf("magestack failover --to dh1:\n%s", out)
		back := r.prober.waitOK(t, planned, mac1, 2*time.Minute)
		last2 := r.prober.lastOK(back, mac2)
		t.Logf("planned move back: website answered from dh1 %v after the command; gap since dh2's last answer %v",
			back.Sub(planned).Round(time.Millisecond), back.Sub(last2).Round(time.Millisecond))
		time.Sleep(qemu.Scale(3 * time.Second))
		if got := r.prober.macs(back.Add(-time.Nanosecond)); len(got) != 1 || got[0] != mac1 {
			t.Errorf("after the planned move the VIP answered from %v; want only dh1 %s", got, mac1)
		}
		out = consoleRun(t, dh1, "magestack status")
		for _, p := range []string{`(?m)^lb1\s+dh1\s+\d+\s+dh2\s`, `this host runs .*lb1.* and holds the website's address`} {
			if !regexp.MustCompile(p).MatchString(out) {
				t.Errorf("magestack status on dh1 after the planned move lacks %q:\n%s", p, out)
			}
		}
	})
}

// consoleMarks is where each host's console output ends now.
func consoleMarks(r *pairRig) map[string]int {
	out := map[string]int{}
	for h, vm := range r.vms {
		out[h] = len(vm.Console())
	}
	return out
}

func firstMatch(s, pattern string) string { return regexp.MustCompile(pattern).FindString(s) }

var consoleSeq atomic.Int64

// consoleRun runs cmd in the guest's console shell and returns its output;
// a non-zero exit fails the test.
func consoleRun(t *testing.T, vm *qemu.VM, cmd string) string {
	t.Helper()
	return consoleRunWithin(t, vm, cmd, time.Minute)
}

func consoleRunWithin(t *testing.T, vm *qemu.VM, cmd string, within time.Duration) string {
	t.Helper()
	n := consoleSeq.Add(1)
	// $((n)) keeps the typed line (echoed by the tty) from matching.
	if err := vm.SendConsole(fmt.Sprintf("echo @@b$((%d))@@; %s; echo @@rc$((%d))=$?@@\n", n, cmd, n)); err != nil {
		t.Fatal(err)
	}
	m, err := vm.Expect(within, fmt.Sprintf(`(?s)@@b%d@@(.*?)@@rc%d=(\d+)@@`, n, n))
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if m[2] != "0" {
		t.Fatalf("%s: exit %s:\n%s", cmd, m[2], m[1])
	}
	return m[1]
}

// consoleRunUntil runs cmd in the guest's console shell until its output
// matches pattern, and fails the test if it does not within the bound.
func consoleRunUntil(t *testing.T, vm *qemu.VM, cmd, pattern string, within time.Duration) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(within)
	for {
		out := consoleRun(t, vm, cmd)
		if re.MatchString(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %v; last output:\n%s", cmd, pattern, within, out)
		}
		time.Sleep(time.Second)
	}
}

// witnessProc is a running `magestack witness` found among this test's
// children (startPairRig keeps no handle on it).
type witnessProc struct {
	pid  int
	args []string
}

// killWitness crashes the rig's witness (SIGKILL: no clean leave).
func killWitness(t *testing.T) witnessProc {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// ppid is the second field after the parenthesised command.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 || f[0] == "Z" || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
		if len(args) < 2 || args[1] != "witness" {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("killing the witness (pid %d): %v", pid, err)
		}
		return witnessProc{pid: pid, args: args}
	}
	t.Fatal("no running witness among this test's children")
	return witnessProc{}
}

// restartWitness starts the witness again with the same arguments in its
// namespace, until t ends; it returns the witness's output.
func restartWitness(t *testing.T, w witnessProc) *qemu.LockedBuffer {
	t.Helper()
	name := witnessNetNS(t)
	out := &qemu.LockedBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", name}, w.args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("restarting the witness: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("restarted witness output:\n%s", out.String())
		}
	})
	return out
}

// witnessNetNS finds the rig's witness namespace (named "<net>-witness").
func witnessNetNS(t *testing.T) string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprintf("-%d-", os.Getpid())
	for _, e := range entries {
		if strings.Contains(e.Name(), suffix) && strings.HasSuffix(e.Name(), "-witness") && strings.HasPrefix(e.Name(), "ms-pair-") {
			return e.Name()
		}
	}
	t.Fatal("no witness namespace")
	return ""
}

// lastOK is the last answered request from mac before t (t itself if none).
func (p *prober) lastOK(before time.Time, mac string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	last := before
	for _, r := range p.results {
		if r.at.Before(before) && r.ok && r.mac == mac {
			last = r.at
		}
	}
	return last
}

// window counts answered requests in [from, to], lists the MACs that
// answered and the longest time without an answer.
func (p *prober) window(from, to time.Time) (answered int, macs []string, gap time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	prev := from
	for _, r := range p.results {
		if r.at.Before(from) || r.at.After(to) || !r.ok {
			continue
		}
		answered++
		if !seen[r.mac] {
			seen[r.mac] = true
			macs = append(macs, r.mac)
		}
		gap = max(gap, r.at.Sub(prev))
		prev = r.at
	}
	gap = max(gap, to.Sub(prev))
	return answered, macs, gap
}

// macTrail sums up, after since, which MAC the VIP had per request and
// whether it was answered: "52:..:02 ok×12, 52:..:01 failed×3, ...".
func (p *prober) macTrail(since time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	last, n := "", 0
	flush := func() {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s×%d", last, n))
		}
	}
	for _, r := range p.results {
		if !r.at.After(since) {
			continue
		}
		key := r.mac + " failed"
		if r.ok {
			key = r.mac + " ok"
		}
		if key != last {
			flush()
			last, n = key, 0
		}
		n++
	}
	flush()
	return strings.Join(parts, ", ")
}

// answerAfter waits up to within (scaled) for an answered request after
// since from mac, without failing the test.
func (p *prober) answerAfter(since time.Time, mac string, within time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(qemu.Scale(within))
	for {
		p.mu.Lock()
		for _, r := range p.results {
			if r.at.After(since) && r.ok && r.mac == mac {
				p.mu.Unlock()
				return r.at, true
			}
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consoleShows waits up to within (scaled) for pattern in vm's console
// output from offset from on, whatever Expect consumed meanwhile.
func consoleShows(vm *qemu.VM, from int, pattern string, within time.Duration) bool {
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(qemu.Scale(within))
	for {
		if re.MatchString(vm.Console()[from:]) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}
