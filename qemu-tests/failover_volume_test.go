package qemutests

import (
	"regexp"
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
}
