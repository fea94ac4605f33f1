package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/qemu-tests/vipprobe"
)

var ft0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func fat(ms int) time.Time { return ft0.Add(time.Duration(ms) * time.Millisecond) }

func TestLineLogStampsCompleteLines(t *testing.T) {
	clock := fat(0)
	l := &lineLog{now: func() time.Time { return clock }}
	l.Write([]byte("first\r\nsec"))
	clock = fat(100)
	l.Write([]byte("ond\nthird"))
	got := l.Lines()
	if len(got) != 2 {
		t.Fatalf("lines = %+v, want 2 complete lines", got)
	}
	if got[0].Text != "first" || !got[0].At.Equal(fat(0)) {
		t.Errorf("line 1 = %+v", got[0])
	}
	// A line is stamped when its end arrived.
	if got[1].Text != "second" || !got[1].At.Equal(fat(100)) {
		t.Errorf("line 2 = %+v", got[1])
	}
}

func TestLineLogFollowReadsGrowingText(t *testing.T) {
	var mu sync.Mutex
	text := "a\n"
	l := newLineLog()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		l.follow(ctx, func() string { mu.Lock(); defer mu.Unlock(); return text }, time.Millisecond)
		close(done)
	}()
	mu.Lock()
	text += "b\nc"
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for len(l.Lines()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if got := l.String(); got != "a\nb\n" {
		t.Fatalf("followed %q, want a and b (c is incomplete)", got)
	}
}

func TestHostTimesPerBoot(t *testing.T) {
	lines := []stampedLine{
		{At: fat(0), Text: "SeaBIOS (version 1.16.2-debian-1.16.2-1)"},
		{At: fat(1500), Text: "[   1000 ms] a"}, // 500 ms late
		{At: fat(2100), Text: "[   2000 ms] b"}, // 100 ms late: boot 1 began at 100 ms
		{At: fat(3000), Text: "magestack: stack ready uptime_ms=2500"},
		{At: fat(3300), Text: "[   3000 ms] c"},
		// The watchdog reset the guest: a new boot, its own clock.
		{At: fat(9000), Text: "SeaBIOS (version 1.16.2-debian-1.16.2-1)"},
		{At: fat(12050), Text: "[   2000 ms] d"}, // boot 2 began at 10050 ms
		{At: fat(13100), Text: "[   3000 ms] e"},
	}
	want := []int{0, 1100, 2100, 3000, 3100, 9000, 12050, 13050}
	for i, got := range hostTimes(lines) {
		if !got.Equal(fat(want[i])) {
			t.Errorf("line %d (%s) at %v, want %d ms", i, lines[i].Text, got.Sub(ft0), want[i])
		}
	}
	// Without a banner, an uptime going back also starts a boot.
	noBanner := []stampedLine{{At: fat(5000), Text: "[   4000 ms] x"}, {At: fat(6000), Text: "[    500 ms] y"}}
	if got := hostTimes(noBanner); !got[0].Equal(fat(5000)) || !got[1].Equal(fat(6000)) {
		t.Errorf("uptime going back: %v %v", got[0].Sub(ft0), got[1].Sub(ft0))
	}
	if n := resets(lines, fat(-1), fat(20000)); n != 1 {
		t.Errorf("resets = %d, want 1 (the first boot is not one)", n)
	}
	if n := resets(lines, fat(9000), fat(20000)); n != 0 {
		t.Errorf("resets after the reset = %d, want 0", n)
	}
	if _, ok := guestMS("[   12 ms]x"); ok {
		t.Error("a prefix without the space after it parsed")
	}
	if v, ok := guestMS("[  27852 ms] WARN failover: moving instances"); !ok || v != 27852 {
		t.Errorf("guestMS = %d %v", v, ok)
	}
}

func TestFirstAfterAndCount(t *testing.T) {
	lines := []stampedLine{
		{At: fat(1010), Text: "[   1000 ms] heartbeat: peer dead peer=dh1 was=suspect"}, // before the loss
		{At: fat(5010), Text: "[   5000 ms] heartbeat: peer suspect peer=dh1 was=alive"},
		{At: fat(5800), Text: "[   5700 ms] heartbeat: peer dead peer=dh1 was=suspect"},
		{At: fat(5900), Text: "[   5890 ms] heartbeat: peer dead peer=dh10 was=suspect"},
	}
	re := peerDeadRE("dh1")
	e, ok := firstAfter(lines, fat(4000), re)
	if !ok || !e.At.Equal(fat(5710)) || !strings.Contains(e.Line, "5700 ms") {
		t.Fatalf("firstAfter = %+v %v, want the 5700 ms line at 5710 ms", e, ok)
	}
	if n := countBetween(lines, fat(0), fat(10000), re); n != 2 {
		t.Errorf("count dh1 = %d, want 2 (dh10 is another peer)", n)
	}
	if n := countBetween(lines, fat(1010), fat(10000), re); n != 1 {
		t.Errorf("count after the first = %d, want 1: (from, to]", n)
	}
	a := event{At: fat(5)}
	b := event{At: fat(3)}
	if got, ok := earliest(a, true, b, true); !ok || got != b {
		t.Errorf("earliest = %v", got)
	}
	if got, ok := earliest(a, true, b, false); !ok || got != a {
		t.Errorf("earliest with one = %v", got)
	}
	if _, ok := earliest(a, false, b, false); ok {
		t.Error("earliest of none found one")
	}
}

func TestMagestackTimeline(t *testing.T) {
	lost := fat(10000)
	surv := []stampedLine{
		{At: fat(1020), Text: "[   1000 ms] failover: starting instance instance=web1"}, // boot, before the loss
		{At: fat(9020), Text: "[   9000 ms] heartbeat: peer alive peer=dh1 was=unknown"},
		// Restarting one of its own (it lost the majority a moment): not
		// the commit, which follows the decision.
		{At: fat(10300), Text: "[  10280 ms] failover: starting instance instance=mail1"},
		{At: fat(10720), Text: "[  10700 ms] heartbeat: peer dead peer=dh1 was=suspect"},
		{At: fat(10800), Text: "[  10750 ms] WARN failover: moving instances from=dh1 to=dh2 instances=4"},
		{At: fat(11500), Text: "[  11450 ms] failover: starting instance instance=fw1"},
		{At: fat(12900), Text: "[  12880 ms] vip: holding addr=192.0.2.50/24 link=eth0"},
	}
	witness := []stampedLine{
		{At: fat(10650), Text: `time=2026-11-25T12:00:10.650Z level=INFO msg="heartbeat: peer dead" peer=dh10 was=suspect`},
		{At: fat(10690), Text: `time=2026-11-25T12:00:10.690Z level=INFO msg="heartbeat: peer dead" peer=dh1 was=suspect`},
	}
	newMAC := msLANMAC["dh2"]
	probes := []vipprobe.Probe{
		{Start: fat(9900), End: fat(9905), OK: true, MAC: msLANMAC["dh1"]},
		{Start: fat(10000), End: fat(11000), Err: "timeout"},
		{Start: fat(12950), End: fat(13010), OK: true, MAC: newMAC},
	}
	macs := []vipprobe.MACChange{{At: fat(100), MAC: msLANMAC["dh1"]}, {At: fat(12905), MAC: newMAC}}
	run := msTimeline(lost, "dh1", "dh2", surv, witness, probes, macs)
	// The witness (slog text, stamped on arrival) heard it first.
	want := map[string]time.Duration{
		stepDetected:  690 * time.Millisecond,
		stepDecided:   770 * time.Millisecond,
		stepCommitted: 1470 * time.Millisecond,
		stepVIPHeld:   2900 * time.Millisecond,
		stepVIPSeen:   2905 * time.Millisecond,
		stepAnswering: 3010 * time.Millisecond,
		stepGap:       3105 * time.Millisecond,
	}
	for step, d := range want {
		if got, ok := run.after[step]; !ok || got != d {
			t.Errorf("%s = %v (%v, why %q), want %v", step, got, ok, run.why[step], d)
		}
	}

	// Nothing after the loss: every step says why.
	empty := msTimeline(lost, "dh1", "dh2", surv[:2], nil, probes[:2], macs[:1])
	for _, s := range timelineSteps {
		if _, ok := empty.after[s]; ok || empty.why[s] == "" {
			t.Errorf("%s: found %v or no reason %q", s, empty.after[s], empty.why[s])
		}
	}
}

func TestKeepalivedTimeline(t *testing.T) {
	lost := fat(1000)
	h2 := []stampedLine{
		{At: fat(500), Text: "Wed Nov 25 23:53:50 2026: (VI_1) Entering BACKUP STATE"},
		{At: fat(4600), Text: "Wed Nov 25 23:53:54 2026: (VI_1) Entering MASTER STATE"},
		{At: fat(4601), Text: "Wed Nov 25 23:53:54 2026: (VI_1) Sending/queueing gratuitous ARPs on eth0 for 192.0.2.50"},
		{At: fat(4602), Text: "Wed Nov 25 23:53:54 2026: Sending gratuitous ARP on eth0 for 192.0.2.50"},
	}
	probes := []vipprobe.Probe{{Start: fat(950), End: fat(955), OK: true, Body: "h1"}, {Start: fat(4610), End: fat(4630), OK: true, Body: "h2"}}
	macs := []vipprobe.MACChange{{At: fat(10), MAC: klHosts[0].mac}, {At: fat(4605), MAC: klHosts[1].mac}}
	run := klTimeline(lost, h2, probes, macs)
	for step, d := range map[string]time.Duration{stepDetected: 3600 * time.Millisecond, stepDecided: 3600 * time.Millisecond,
		stepVIPHeld: 3602 * time.Millisecond, stepVIPSeen: 3605 * time.Millisecond, stepAnswering: 3630 * time.Millisecond, stepGap: 3675 * time.Millisecond} {
		if got := run.after[step]; got != d {
			t.Errorf("%s = %v, want %v", step, got, d)
		}
	}
	if _, ok := run.after[stepCommitted]; ok || run.why[stepCommitted] != "-" {
		t.Errorf("VRRP has no commit step: %v %q", run.after[stepCommitted], run.why[stepCommitted])
	}
}

func TestKeepalivedConf(t *testing.T) {
	v2 := keepalivedConf("h1", 150, "1")
	if strings.Contains(v2, "vrrp_version") || !strings.Contains(v2, "advert_int 1\n") || !strings.Contains(v2, "priority 150") {
		t.Errorf("advert_int 1 uses keepalived's default VRRPv2:\n%s", v2)
	}
	if v3 := keepalivedConf("h2", 100, "0.1"); !strings.Contains(v3, "vrrp_version 3") || !strings.Contains(v3, "advert_int 0.1") {
		t.Errorf("sub-second adverts need VRRPv3:\n%s", v3)
	}
}

func TestFailoverTable(t *testing.T) {
	r1 := newFailoverRun(ft0)
	r1.at(stepDetected, fat(800))
	r1.at(stepAnswering, fat(2400))
	r1.missing(stepVIPSeen, "the client's ARP entry for the VIP never took x")
	r2 := newFailoverRun(ft0)
	r2.at(stepDetected, fat(1000))
	r2.at(stepAnswering, fat(2000))
	r3 := newFailoverRun(ft0)
	r3.at(stepDetected, fat(600))
	ms := variant{name: "magestack dead 1s", runs: []failoverRun{r1, r2, r3}, loss: &lossResult{failovers: 0, totalReq: 100, failedReq: 25},
		note: "1 false failover(s) while booting and idle, no host lost"}
	k := newFailoverRun(ft0)
	k.at(stepDetected, fat(3600))
	k.at(stepAnswering, fat(3600))
	k.missing(stepCommitted, "-")
	kl := variant{name: "keepalived 1s", runs: []failoverRun{k}, loss: &lossResult{failovers: 3, vipMoves: 3}}
	broken := variant{name: "keepalived 0.1s", errs: []string{"keepalived is not installed"}, lerr: "keepalived is not installed"}
	var out bytes.Buffer
	printFailoverTable(&out, []variant{ms, kl, broken})
	s := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^figure.*magestack dead 1s\s+keepalived 1s\s+keepalived 0.1s\s+1s/k1s\s+1s/k0.1s\s+target$`),
		// Median of 800, 1000, 600; ratio 800/3600.
		regexp.MustCompile(`(?m)^detected: peer declared dead\s+800 ms\s+3600 ms\s+n/a \[\d\]\s+0.22\s+-\s+<= 1 s$`),
		// Median of the two runs that have it.
		regexp.MustCompile(`(?m)^website answering again\s+2200 ms\s+3600 ms\s+n/a \[\d\]\s+0.61\s+-`),
		regexp.MustCompile(`(?m)^ownership committed \(raft\)\s+n/a \[\d\]\s+-\s+n/a`),
		regexp.MustCompile(`(?m)^VIP moved \(client saw the GARP\)\s+n/a \[\d\]`),
		regexp.MustCompile(`(?m)^false failovers, lossy network\s+0\s+3\s+n/a \[\d\]\s+0.00\s+-\s+0$`),
		regexp.MustCompile(`(?m)^client requests failed, lossy \(%\)\s+25\s+0\s+`),
		regexp.MustCompile(`\] n/a: the client's ARP entry for the VIP never took x`),
		regexp.MustCompile(`\] n/a: keepalived is not installed`),
		regexp.MustCompile(`magestack dead 1s: 1 false failover\(s\) while booting and idle`),
	} {
		if !want.MatchString(s) {
			t.Errorf("table lacks %s:\n%s", want, s)
		}
	}
	for _, tt := range []struct {
		v    variant
		want bool
	}{
		{variant{disturbed: 1}, true},
		{variant{loss: &lossResult{}}, false},
		{variant{loss: &lossResult{failovers: 1}}, true},
		{variant{loss: &lossResult{stepDowns: 1}}, true},
		{variant{loss: &lossResult{resets: 1}}, true},
		{variant{}, false},
	} {
		if got := falseFailovers(tt.v); got != tt.want {
			t.Errorf("falseFailovers(%+v) = %v", tt.v, got)
		}
	}
}

func TestBenchTBTurnsFatalIntoErrorAndCleansUpInReverse(t *testing.T) {
	b := &benchTB{name: "rig"}
	var order []int
	err := b.do(func() {
		b.Cleanup(func() { order = append(order, 1) })
		b.Cleanup(func() { order = append(order, 2) })
		b.Fatalf("netns %s: %v", "x", "exists")
		order = append(order, 99) // never reached
	})
	if err == nil || err.Error() != "rig: netns x: exists" {
		t.Fatalf("do = %v", err)
	}
	if err := b.do(func() { var m map[string]int; m["x"] = 1 }); err == nil || !strings.Contains(err.Error(), "harness call failed") {
		t.Fatalf("a panic in the harness: %v", err)
	}
	b.close()
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Fatalf("cleanups ran %v, want [2 1]", order)
	}
}

// TestKeepalivedRigsInARow runs two keepalived losses one after the other
// (advert_int 0.1, so seconds), as the bench does: each finds h1 serving,
// and after h1's loss h2 serves with a complete timeline.
func TestKeepalivedRigsInARow(t *testing.T) {
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skip("keepalived is not installed (Debian package keepalived)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	dir := t.TempDir()
	for i := 1; i <= 2; i++ {
		run, err := runKeepalivedKill(context.Background(), fmt.Sprintf("kt-%d", i), "0.1", dir)
		if err != nil {
			t.Fatalf("loss %d: %v", i, err)
		}
		for _, s := range []string{stepDetected, stepVIPHeld, stepVIPSeen, stepAnswering} {
			if _, ok := run.after[s]; !ok {
				t.Errorf("loss %d: %s missing: %s", i, s, run.why[s])
			}
		}
	}
}
