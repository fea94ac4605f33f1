// Package supervisebench measures crash → running-again latency of
// magestack's supervisor against s6-supervise and runit's runsv, all three
// supervising the same program, for `make bench`.
//
// The supervised program is the running binary itself: this package's init
// function turns any binary that imports it into the test program when
// MAGESTACK_SUPERVISEBENCH_CHILD names a file. The program appends
// "<pid> <unix-nanoseconds>" to that file as soon as the Go runtime runs
// package init, then sleeps. The bench SIGKILLs it, notes the time, and
// the latency is the next start's own timestamp minus the kill time, so
// polling adds nothing to the figure.
//
// Fair conditions: each supervisor throttles quick deaths. runsv sleeps a
// second when ./run exits within a second of being started; s6-supervise
// documents a one-second minimum between two starts; magestack restarts at
// once after a run longer than StableAfter and applies its backoff
// (Initial 100 ms doubling) only to quicker exits. So every kill here hits a
// program that has been up for more than 1.2 s and StableAfter is 1 s: no
// supervisor's throttle applies, and the figure is its own reaction time
// plus fork/exec of the same binary. Measured on Debian's s6 2.11.3,
// s6-supervise nevertheless restarts about one second after every death,
// even of a service up for several seconds and with a ./finish that exits
// at once (checked by hand with a shell ./run); that is what it does, and
// it is reported as measured.
package supervisebench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/supervise"
)

const childEnv = "MAGESTACK_SUPERVISEBENCH_CHILD"

func init() {
	path := os.Getenv(childEnv)
	if path == "" {
		return
	}
	now := time.Now().UnixNano()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		os.Exit(111)
	}
	fmt.Fprintf(f, "%d %d\n", os.Getpid(), now)
	f.Close()
	for {
		unix.Pause() // until a signal kills it
	}
}

// Uptime before each kill: above s6's and runit's one-second throttle.
const upBeforeKill = 1200 * time.Millisecond

// Result is one supervisor's figures.
type Result struct {
	Name    string
	Samples []time.Duration
	NA      string // why there are no samples
}

// Median of the samples.
func (r Result) Median() time.Duration { return percentile(r.Samples, 50) }

// P99 of the samples (nearest rank).
func (r Result) P99() time.Duration { return percentile(r.Samples, 99) }

func percentile(s []time.Duration, p int) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	rank := (p*len(c) + 99) / 100 // ceil(p/100 * n), 1-based
	if rank < 1 {
		rank = 1
	}
	return c[rank-1]
}

// Run measures all three with 20 kills each and prints the figures.
func Run(w io.Writer) error { return RunN(context.Background(), w, 20) }

// RunN measures n kills per supervisor. A supervisor that is not installed
// prints n/a with the reason; an error is returned only when magestack's
// own supervisor could not be measured.
func RunN(ctx context.Context, w io.Writer, n int) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("supervisebench: own executable: %w", err)
	}
	results := []Result{
		Measure(ctx, "magestack supervise", n, func(dir, record string) (stopper, error) { return startMagestack(exe, record) }),
		Measure(ctx, "s6-supervise", n, func(dir, record string) (stopper, error) { return startS6(exe, dir, record) }),
		Measure(ctx, "runit runsv", n, func(dir, record string) (stopper, error) { return startRunsv(exe, dir, record) }),
	}
	fmt.Fprintf(w, "supervisor restart latency: SIGKILL of a program up > %v until it runs again (%d kills each)\n", upBeforeKill, n)
	for _, r := range results {
		if r.NA != "" {
			fmt.Fprintf(w, "  %-20s n/a: %s\n", r.Name, r.NA)
			continue
		}
		fmt.Fprintf(w, "  %-20s median %7.2f ms   p99 %7.2f ms\n", r.Name, ms(r.Median()), ms(r.P99()))
	}
	fmt.Fprintln(w, "  (all three restart at once by design here; s6-supervise 2.11 still pauses ~1 s after each death)")
	if results[0].NA != "" {
		return fmt.Errorf("supervisebench: magestack supervise: %s", results[0].NA)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// stopper stops a started supervisor and everything it runs.
type stopper func() error

// Measure starts a supervisor with start, then kills its program n times.
func Measure(ctx context.Context, name string, n int, start func(dir, record string) (stopper, error)) Result {
	r := Result{Name: name}
	dir, err := os.MkdirTemp("", "supervisebench")
	if err != nil {
		r.NA = err.Error()
		return r
	}
	defer os.RemoveAll(dir)
	record := filepath.Join(dir, "starts")
	stop, err := start(dir, record)
	if err != nil {
		r.NA = err.Error()
		return r
	}
	var lastPID int
	defer func() {
		if err := stop(); err != nil && r.NA == "" {
			r.NA = "stopping: " + err.Error()
		}
		if lastPID != 0 {
			syscall.Kill(lastPID, syscall.SIGKILL) // never leave the program behind
		}
	}()
	pid, started, err := waitStart(ctx, record, 0, 10*time.Second)
	if err != nil {
		r.NA = "first start: " + err.Error()
		return r
	}
	lastPID = pid
	for i := 0; i < n; i++ {
		if up := time.Since(started); up < upBeforeKill {
			time.Sleep(upBeforeKill - up)
		}
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			r.NA = fmt.Sprintf("kill %d: %v", pid, err)
			return r
		}
		newPID, t, err := waitStart(ctx, record, pid, 10*time.Second)
		if err != nil {
			r.NA = fmt.Sprintf("restart %d: %v", i+1, err)
			return r
		}
		r.Samples = append(r.Samples, t.Sub(killed))
		pid, started, lastPID = newPID, t, newPID
	}
	return r
}

// waitStart polls the record file for a start of a pid other than prev.
func waitStart(ctx context.Context, record string, prev int, bound time.Duration) (int, time.Time, error) {
	deadline := time.Now().Add(bound)
	for {
		if pid, t, ok := lastStart(record); ok && pid != prev {
			return pid, t, nil
		}
		if time.Now().After(deadline) {
			return 0, time.Time{}, fmt.Errorf("no new start within %v", bound)
		}
		if ctx.Err() != nil {
			return 0, time.Time{}, ctx.Err()
		}
		time.Sleep(500 * time.Microsecond)
	}
}

func lastStart(record string) (int, time.Time, bool) {
	f, err := os.Open(record)
	if err != nil {
		return 0, time.Time{}, false
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		last = sc.Text()
	}
	fields := strings.Fields(last)
	if len(fields) != 2 {
		return 0, time.Time{}, false
	}
	pid, err1 := strconv.Atoi(fields[0])
	ns, err2 := strconv.ParseInt(fields[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, time.Time{}, false
	}
	return pid, time.Unix(0, ns), true
}

func startMagestack(exe, record string) (stopper, error) {
	sup := supervise.New(slog.New(slog.NewTextHandler(io.Discard, nil)), supervise.Options{})
	err := sup.Add(supervise.Spec{
		Name:    "bench",
		Command: []string{exe},
		Env:     append(os.Environ(), childEnv+"="+record),
		Restart: supervise.RestartPolicy{StableAfter: time.Second, CrashLoopCount: 1000, CrashLoopWindow: time.Second},
	})
	if err != nil {
		return nil, err
	}
	if err := sup.Start(context.Background(), "bench"); err != nil {
		return nil, err
	}
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return sup.StopAll(ctx)
	}, nil
}

// serviceDir makes an s6/runit service directory whose ./run is the binary.
func serviceDir(exe, dir string) (string, error) {
	svc := filepath.Join(dir, "svc")
	if err := os.Mkdir(svc, 0o755); err != nil {
		return "", err
	}
	if err := os.Symlink(exe, filepath.Join(svc, "run")); err != nil {
		return "", err
	}
	return svc, nil
}

func startExternal(bin string, args []string, record string) (*exec.Cmd, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s not installed (Debian package %s)", bin, map[string]string{"s6-supervise": "s6", "runsv": "runit"}[bin])
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), childEnv+"="+record)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	return cmd, nil
}

// stopExternal asks the supervisor to take the service down and exit,
// then makes sure of it.
func stopExternal(cmd *exec.Cmd, ask func() error) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	askErr := ask()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return errors.Join(askErr, fmt.Errorf("%s did not exit within 10s; killed", cmd.Path))
	}
}

func startS6(exe, dir, record string) (stopper, error) {
	svc, err := serviceDir(exe, dir)
	if err != nil {
		return nil, err
	}
	cmd, err := startExternal("s6-supervise", []string{svc}, record)
	if err != nil {
		return nil, err
	}
	return func() error {
		return stopExternal(cmd, func() error {
			// -d: TERM the service and keep it down; -x: exit once it is down.
			out, err := exec.Command("s6-svc", "-dx", svc).CombinedOutput()
			if err != nil {
				cmd.Process.Signal(syscall.SIGTERM)
				return fmt.Errorf("s6-svc -dx: %v: %s", err, out)
			}
			return nil
		})
	}, nil
}

func startRunsv(exe, dir, record string) (stopper, error) {
	svc, err := serviceDir(exe, dir)
	if err != nil {
		return nil, err
	}
	cmd, err := startExternal("runsv", []string{svc}, record)
	if err != nil {
		return nil, err
	}
	return func() error {
		// runsv takes SIGTERM as "x": bring the service down and exit.
		return stopExternal(cmd, func() error { return cmd.Process.Signal(syscall.SIGTERM) })
	}, nil
}
