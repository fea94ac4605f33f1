package supervise

import (
	"context"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/health"
	"magestack/init/reap"
)

// PID 1's reaper is a Starter as it is.
var _ Starter = (*reap.Reaper)(nil)

// TestWithPID1Reaper runs a unit through the reaper while its orphan-reaping
// loop runs (as in PID 1 and role-init, made a subreaper here so orphans
// come to this process): exit statuses still reach the supervisor.
func TestWithPID1Reaper(t *testing.T) {
	needBusybox(t)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := reap.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	s := newSup(t, Options{Starter: r})
	// The unit leaves an orphan behind each run, which the reaper must take
	// without stealing the unit's own status.
	s.Add(Spec{Name: "parent", Command: sh("busybox setsid busybox sleep 0.1 & exec busybox sleep 1000"),
		Env:     []string{"PATH=/bin"},
		Restart: RestartPolicy{Initial: 20 * time.Millisecond, StableAfter: time.Minute, CrashLoopCount: 100},
		// Ready only once an exec probe passes: its status too must
		// survive the reaper.
		Health: &health.Check{Exec: []string{busybox, "true"}, Interval: 50 * time.Millisecond, Retries: 2}})
	s.Start(context.Background(), "parent")
	for i := 0; i < 3; i++ {
		var st UnitStatus
		waitFor(t, "running", 10*time.Second, func() bool { st = unitStatus(t, s, "parent"); return st.State == StateReady })
		syscall.Kill(st.PID, syscall.SIGKILL)
		waitFor(t, "restart", 10*time.Second, func() bool {
			now := unitStatus(t, s, "parent")
			return now.Restarts == i+1 && now.LastExit != nil
		})
		if st := unitStatus(t, s, "parent"); st.LastExit.Signal != "SIGKILL" {
			t.Fatalf("run %d: last exit %+v, want SIGKILL (status stolen?)", i, st.LastExit)
		}
	}
}
