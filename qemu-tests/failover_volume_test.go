package qemutests

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestFailoverOutdatedCopyNotPromoted is DRBD resource-level fencing
// through the cluster: the pair link is cut while dh1 runs db1, so dh1's
// writes freeze until the cluster records dh2's copy as outdated; they go
// on and are acknowledged; then dh1's hardware is lost. dh2 takes db1's
// ownership but must not bring up its older copy as if nothing happened:
// db1 stays down there, and both `magestack status` and `magestack
// volumes` say why.
func TestFailoverOutdatedCopyNotPromoted(t *testing.T) {
	qemu.Require(t)
	r := startPairRigWith(t, pairRigOptions{DataDisks: true})
	start := time.Now()
	r.prober.waitOK(t, start, pairMAC["dh1"], 2*time.Minute)
	consoleRunUntil(t, r.vms["dh1"], "magestack volumes", `(?m)^db1\s.*Primary\s+UpToDate\s+UpToDate\s+Connected`, 2*time.Minute)
	consoleRun(t, r.vms["dh1"], "echo before-cut > /run/magestack/volumes/db1/order-1 && sync")

	// Only the pair link: the LAN (raft, heartbeats) stays.
	if err := r.vms["dh1"].SetLink("net1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.vms["dh1"].Expect(time.Minute, `volume: the peer's copy is outdated \(recorded in the cluster\); writes go on here alone volume=db1 peer=dh2`); err != nil {
		t.Fatalf("dh1 did not fence dh2's copy of db1: %v", err)
	}
	// The write after the cut is acknowledged (sync returns): the freeze
	// ended once the cluster knew.
	consoleRunWithin(t, r.vms["dh1"], "echo after-cut > /run/magestack/volumes/db1/order-2 && sync", time.Minute)
	consoleRunUntil(t, r.vms["dh2"], "magestack volumes", `dh2's copy is outdated`, time.Minute)

	lost := time.Now()
	r.vms["dh1"].Kill()
	// dh2 takes over what it may: the website comes back (lb, web) ...
	back := r.prober.waitOK(t, lost, pairMAC["dh2"], 3*time.Minute)
	t.Logf("website answered from dh2 %v after dh1 was lost", back.Sub(lost))
	// ... but not db1 on its outdated copy.
	if _, err := r.vms["dh2"].Expect(2*time.Minute, `volume db1: this host's copy is outdated`); err != nil {
		t.Fatalf("dh2 did not refuse db1's outdated copy: %v", err)
	}
	time.Sleep(qemu.Scale(5 * time.Second))
	vols := consoleRun(t, r.vms["dh2"], "magestack volumes")
	t.Logf("dh2 volumes:\n%s", vols)
	if !regexp.MustCompile(`(?m)^db1\s.*\bSecondary\b`).MatchString(vols) {
		t.Errorf("db1's outdated copy on dh2 was promoted:\n%s", vols)
	}
	if out := consoleRun(t, r.vms["dh2"], "ls /run/magestack/volumes/db1/ 2>&1; true"); strings.Contains(out, "order-1") {
		t.Errorf("db1's outdated copy is mounted on dh2:\n%s", out)
	}
	status := consoleRun(t, r.vms["dh2"], "magestack status")
	if !strings.Contains(status, "copy is outdated") {
		t.Errorf("magestack status on dh2 does not say why db1 is down:\n%s", status)
	}
	// A planned move onto the outdated copy is refused too.
	if out := consoleRun(t, r.vms["dh2"], "magestack failover --to dh2 2>&1; true"); !strings.Contains(out, "refused") {
		t.Errorf("failover --to dh2 onto an outdated copy:\n%s", out)
	}

	// dh1 is repaired and boots again: its newer copy resyncs dh2's (only
	// the blocks written since the cut), the record goes, and dh2, which
	// owns db1 now, starts it with every acknowledged write.
	r.restart(t, "dh1")
	if _, err := r.vms["dh1"].Expect(10*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatalf("dh1 after the repair: %v", err)
	}
	got := consoleRunUntil(t, r.vms["dh2"], "cat /run/magestack/volumes/db1/order-1 /run/magestack/volumes/db1/order-2 2>&1; true",
		`before-cut\s+after-cut`, 3*time.Minute)
	t.Logf("db1 on dh2 after the resync: %q", strings.TrimSpace(got))
	// One line (the console interleaves log lines between lines).
	js := consoleRun(t, r.vms["dh2"], `magestack volumes -o json | tr -d ' \n' | grep -o '"name":"db1"[^}]*'`)
	field := func(name string) string {
		m := regexp.MustCompile(`"` + name + `":"?([0-9A-Za-z.]+)`).FindStringSubmatch(js)
		if m == nil {
			t.Fatalf("no %s in db1's entry of magestack volumes -o json: %s", name, js)
		}
		return m[1]
	}
	received, _ := strconv.ParseInt(field("received_kib"), 10, 64)
	size, _ := strconv.ParseInt(field("size"), 10, 64)
	t.Logf("db1 resync after the outage: %d KiB received of a %d KiB volume", received, size>>10)
	if received == 0 || received > size>>10/4 {
		t.Errorf("db1 resync received %d KiB: want the changed blocks only, not the volume", received)
	}
	if disk := field("disk"); disk != "UpToDate" || strings.Contains(js, `"outdated"`) {
		t.Errorf("db1 on dh2 after the resync: %s", js)
	}
}
