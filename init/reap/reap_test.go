package reap

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOwnedStatusesSurviveReaping starts many short-lived children through
// Start while the reaper is running flat out, and checks every one still
// reports its own exit code: a reaper stealing a status would turn it into
// the 255 "no status" code.
func TestOwnedStatusesSurviveReaping(t *testing.T) {
	r := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	// One reaper per process is the rule: wait for this one's goroutines
	// to end so they cannot reap the next test's children.
	var bg sync.WaitGroup
	defer bg.Wait()
	defer cancel()
	bg.Add(2)
	go func() { defer bg.Done(); r.Run(ctx) }()
	go func() { // extra pressure: reap passes racing with Start
		defer bg.Done()
		for ctx.Err() == nil {
			r.Reap()
			time.Sleep(100 * time.Microsecond)
		}
	}()

	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		code := i % 7
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, err := r.Start(exec.Command("/bin/sh", "-c", "exit "+strconv.Itoa(code)))
			if err != nil {
				t.Error(err)
				return
			}
			select {
			case ws := <-ch:
				if !ws.Exited() || ws.ExitStatus() != code {
					t.Errorf("child exit %d reported as %#x", code, uint32(ws))
				}
			case <-time.After(30 * time.Second):
				t.Errorf("no status for child exit %d", code)
			}
		}()
	}
	wg.Wait()
}

func TestStartReportsSignal(t *testing.T) {
	r := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ch, err := r.Start(exec.Command("/bin/sh", "-c", "kill -KILL $$"))
	if err != nil {
		t.Fatal(err)
	}
	ws := <-ch
	if !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Fatalf("status %#x, want killed by SIGKILL", uint32(ws))
	}
}

func TestStartError(t *testing.T) {
	r := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	_, err := r.Start(exec.Command("/nonexistent/binary"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/binary") {
		t.Fatalf("err = %v, want one naming the binary", err)
	}
}

// TestOrphansAreReaped makes this test process a child subreaper (what
// PID 1 is by nature), lets a child leave an orphan behind, and checks the
// reaper collects it while the owned child's status still arrives.
func TestOrphansAreReaped(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { <-done }()
	defer cancel()
	go func() { defer close(done); r.Run(ctx) }()

	pidFile := t.TempDir() + "/orphan.pid"
	ch, err := r.Start(exec.Command("/bin/sh", "-c", "sleep 0.2 & echo $! > "+pidFile+"; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	if ws := <-ch; ws.ExitStatus() != 3 {
		t.Fatalf("owned child status %#x, want exit 3", uint32(ws))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); os.IsNotExist(err) {
			return // exited and reaped: no zombie left
		}
		if time.Now().After(deadline) {
			state, ppid, _ := procState(orphan)
			t.Fatalf("orphan %d still present: state %c ppid %d (self %d)", orphan, state, ppid, os.Getpid())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
