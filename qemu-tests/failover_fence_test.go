package qemutests

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// noWitnessStackYAML is the pair of pairStackYAML without a witness: raft
// has two voters, so losing either host leaves no majority. %s is each
// host's extra fields (its fence device, or nothing).
const noWitnessStackYAML = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:aa:01:01", address: 192.0.2.11/24, pair: dh2, pairlink: {mac: "52:54:00:aa:02:01", address: 10.99.0.1/30}%s}
  - {name: dh2, mac: "52:54:00:aa:01:02", address: 192.0.2.12/24, pair: dh1, pairlink: {mac: "52:54:00:aa:02:02", address: 10.99.0.2/30}%s}
public: {vip: 192.0.2.50/24}
cluster: {suspect: 1s, dead: 3s}
`

// fenceMonitorIP is the rig bridge's own address, where each host's QEMU
// listens for QMP: the hosts' "BMC network".
const fenceMonitorIP = "192.0.2.1"

var fenceMonitorPort = map[string]int{"dh1": 4441, "dh2": 4442}

func fenceMonitor(host string) string {
	return fmt.Sprintf("%s:%d", fenceMonitorIP, fenceMonitorPort[host])
}

// TestFailoverNoWitnessQMPFence: a pair without a witness whose hosts fence
// each other through QEMU's QMP monitor. dh1 (holding lb and the VIP) is
// cut off from every network but keeps running: dh2 must power it off
// through its monitor, see it off, and only then take over; the website
// answers from dh2.
func TestFailoverNoWitnessQMPFence(t *testing.T) {
	qemu.Require(t)
	stack := fmt.Sprintf(noWitnessStackYAML,
		fmt.Sprintf(`, fence: {type: qmp, address: "%s"}`, fenceMonitor("dh1")),
		fmt.Sprintf(`, fence: {type: qmp, address: "%s"}`, fenceMonitor("dh2")))
	r := startPairRigWith(t, pairRigOptions{
		Stack:     stack,
		NoWitness: true,
		Setup: func(n *qemu.Net) {
			if out, err := n.Run("ip", "addr", "add", fenceMonitorIP+"/24", "dev", qemu.BridgeName); err != nil {
				t.Fatalf("bridge address for the QMP monitors: %v %s", err, out)
			}
		},
		QEMUArgs: func(host string) []string {
			return []string{"-qmp", "tcp:" + fenceMonitor(host) + ",server=on,wait=off"}
		},
	})
	start := time.Now()
	r.prober.waitOK(t, start, pairMAC["dh1"], 2*time.Minute)

	// dh1 loses both paths to dh2 (and the LAN's clients) but runs on: the
	// case where taking over without a fence would make two owners.
	cut := time.Now()
	for _, nic := range []string{"net0", "net1"} {
		if err := r.vms["dh1"].SetLink(nic, false); err != nil {
			t.Fatal(err)
		}
	}
	// dh1 served the website, so it has the first shot at fencing and
	// dh2 waits before fencing it (dh1, cut off, cannot reach dh2's).
	if _, err := r.vms["dh2"].Expect(2*time.Minute, `failover: peer is dead; giving it the first shot at fencing.*peer=dh1`); err != nil {
		t.Errorf("dh2 did not wait for dh1's first shot: %v", err)
	}
	if _, err := r.vms["dh2"].Expect(2*time.Minute, `failover: fencing peer before taking over.*peer=dh1`); err != nil {
		t.Fatalf("dh2 did not fence dh1: %v", err)
	}
	if _, err := r.vms["dh2"].Expect(time.Minute, `failover: peer confirmed off; continuing as the only voter.*peer=dh1`); err != nil {
		t.Fatalf("dh2 did not see dh1 off: %v", err)
	}
	// The fence really powered dh1 off: its QEMU is gone.
	if _, err := r.vms["dh1"].Wait(30 * time.Second); err != nil {
		t.Fatalf("dh2 reported dh1 off but dh1's QEMU runs on: %v", err)
	}
	back := r.prober.waitOK(t, cut, pairMAC["dh2"], 3*time.Minute)
	t.Logf("website answered from dh2 %v after dh1 was cut off; dh2's decisions:\n%s", back.Sub(cut), failoverLines(r.vms["dh2"]))
	if !regexp.MustCompile(`failover: moving instances.*from=dh1 to=dh2`).MatchString(r.vms["dh2"].Console()) {
		t.Error("dh2 did not log the move of dh1's instances")
	}
	time.Sleep(qemu.Scale(3 * time.Second))
	if got := r.prober.macs(back.Add(-time.Nanosecond)); len(got) != 1 || got[0] != pairMAC["dh2"] {
		t.Errorf("after the takeover the VIP answered from %v, want only dh2 %s", got, pairMAC["dh2"])
	}
	if err := r.vms["dh2"].SendConsole("magestack status; echo @@rc=$?@@\n"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{`cluster: this host leader, leader \S+, voters dh2, in majority: true`, `(?m)^lb1\s+dh2\s+\d+`, `@@rc=0@@`} {
		if _, err := r.vms["dh2"].Expect(time.Minute, p); err != nil {
			t.Errorf("magestack status on dh2: %v", err)
		}
	}
}

// TestFailoverNoWitnessNoFenceForce: a pair with neither witness nor fence
// devices. Losing dh1 must not make dh2 take over on its own (it cannot
// know dh1 is off); the console says so and names the manual path. The
// operator's `magestack failover --force` on dh2 then takes over, after
// saying what it risks: for db1's replicated volume, the moment up to which
// dh2's copy has every write.
func TestFailoverNoWitnessNoFenceForce(t *testing.T) {
	qemu.Require(t)
	r := startPairRigWith(t, pairRigOptions{Stack: fmt.Sprintf(noWitnessStackYAML, "", ""), NoWitness: true, DataDisks: true})
	start := time.Now()
	r.prober.waitOK(t, start, pairMAC["dh1"], 2*time.Minute)

	lost := time.Now()
	r.vms["dh1"].Kill()
	if _, err := r.vms["dh2"].Expect(2*time.Minute, "failover: peer is dead, no witness and no fence device: run `magestack failover --force`"); err != nil {
		t.Fatalf("dh2's console does not say why it does not take over: %v", err)
	}
	if err := r.vms["dh2"].ExpectNot(30*time.Second, `failover: moving instances|failover: starting instance`); err != nil {
		t.Errorf("dh2 took over without a fence or an operator: %v", err)
	}
	if got := r.prober.macs(lost); len(got) != 0 {
		t.Errorf("the website answered (from %v) after dh1 was lost, before anyone took over", got)
	}

	forced := time.Now()
	if err := r.vms["dh2"].SendConsole("magestack failover --force; echo @@rc=$?@@\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.vms["dh2"].Expect(time.Minute, `If the peer is in fact running, both serve the same roles`); err != nil {
		t.Errorf("failover --force did not say what it risks: %v", err)
	}
	if m, err := r.vms["dh2"].Expect(time.Minute, `db1: starts from this host's copy, which has every write up to (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC`); err != nil {
		t.Errorf("failover --force did not say up to when db1's copy is complete: %v", err)
	} else {
		t.Logf("failover --force: db1 has every write up to %s UTC; dh1 was lost at %s", m[1], lost.UTC().Format(time.TimeOnly))
	}
	if m, err := r.vms["dh2"].Expect(3*time.Minute, `@@rc=(\d+)@@`); err != nil || m[1] != "0" {
		t.Fatalf("magestack failover --force: %v %v", m, err)
	}
	back := r.prober.waitOK(t, forced, pairMAC["dh2"], 3*time.Minute)
	t.Logf("website answered from dh2 %v after failover --force (%v after dh1 was lost); dh2's decisions:\n%s",
		back.Sub(forced), back.Sub(lost), failoverLines(r.vms["dh2"]))
	if !regexp.MustCompile(`failover: moving instances.*from=dh1 to=dh2`).MatchString(r.vms["dh2"].Console()) {
		t.Error("dh2 did not log the move of dh1's instances")
	}
	// acc1 was Primary on dh2 when dh1 was lost: its writes froze until
	// the cluster could record dh1's copy as outdated, which the forced
	// takeover allows.
	if _, err := r.vms["dh2"].Expect(time.Minute, `volume: frozen writes resumed: the peer's copy is recorded outdated volume=acc1`); err != nil {
		t.Errorf("dh2 did not resume acc1's frozen writes after the forced takeover: %v", err)
	}
	out := consoleRunUntil(t, r.vms["dh2"], "magestack volumes", `(?m)^db1\s+\S+\s+\S+\s+Primary\s+UpToDate`, 2*time.Minute)
	t.Logf("dh2 volumes after the forced takeover:\n%s", out)

	// dh1 is repaired and boots again. dh2, the only voter since the
	// forced takeover, adds it back once its heartbeats are steady, and it
	// returns as a standby: the pair can fail over again. The website
	// keeps answering from dh2 meanwhile.
	returned := time.Now()
	r.restart(t, "dh1")
	if _, err := r.vms["dh2"].Expect(5*time.Minute, `cluster: a returning member is a voter again member=dh1`); err != nil {
		t.Fatalf("dh2 did not add dh1 back as a voter: %v", err)
	}
	t.Logf("dh1 a voter again %v after its restart", time.Since(returned).Round(time.Second))
	out = consoleRunUntil(t, r.vms["dh1"], "magestack status", `cluster: this host follower, .*in majority: true`, 2*time.Minute)
	if !strings.Contains(out, "this host runs no instance: standby") {
		t.Errorf("dh1 after rejoining is not a standby:\n%s", out)
	}
	if got := r.prober.macs(returned); len(got) != 1 || got[0] != pairMAC["dh2"] {
		t.Errorf("while dh1 returned the website answered from %v; want dh2 %s only", got, pairMAC["dh2"])
	}
	answered, _, gap := r.prober.window(returned, time.Now())
	t.Logf("while dh1 returned: %d answers, longest gap %v", answered, gap.Round(time.Millisecond))
	if gap > qemu.Scale(10*time.Second) {
		t.Errorf("the website stopped answering for %v while dh1 rejoined", gap)
	}
	t.Logf("dh2 volumes with dh1 back:\n%s", consoleRun(t, r.vms["dh2"], "magestack volumes"))
}

// failoverLines is what a VM's console said about peers, fencing and
// failover, for the test log.
func failoverLines(vm *qemu.VM) string {
	var out []string
	for _, l := range strings.Split(vm.Console(), "\n") {
		if strings.Contains(l, "failover:") || strings.Contains(l, "heartbeat: peer") || strings.Contains(l, "vip: holding") {
			out = append(out, "  "+strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
