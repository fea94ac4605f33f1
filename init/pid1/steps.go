// Package pid1 runs PID 1's boot sequence and its shutdown. Boot is a list of
// Steps run in order; each attempt runs under recover and a deadline, is
// recorded in the timeline, and a failed step is retried with capped
// exponential backoff in the background while later steps go on (a Critical
// step is first retried in the foreground for a bounded time, because the
// steps after it need it). Nothing here ever blocks boot forever or lets a
// panic end PID 1.
package pid1

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"magestack/init/timeline"
)

// Retry is a step's retry policy.
type Retry struct {
	// Initial is the first backoff (default 500ms); it doubles up to Max
	// (default 30s).
	Initial, Max time.Duration
	// Attempts bounds the attempts; 0 means retry until it works.
	Attempts int
}

func (r Retry) withDefaults() Retry {
	if r.Initial <= 0 {
		r.Initial = 500 * time.Millisecond
	}
	if r.Max <= 0 {
		r.Max = 30 * time.Second
	}
	if r.Max < r.Initial {
		r.Max = r.Initial
	}
	return r
}

// Backoff is the wait before attempt n+1 after n failed attempts (n ≥ 1).
func (r Retry) Backoff(n int) time.Duration {
	r = r.withDefaults()
	d := r.Initial
	for i := 1; i < n && d < r.Max; i++ {
		d *= 2
	}
	return min(d, r.Max)
}

// Step is one boot step.
type Step struct {
	Name string
	Run  func(ctx context.Context) error
	// Retry is the policy after a failure.
	Retry Retry
	// Critical steps are retried in the foreground (up to CriticalWait)
	// before later steps start, because those need them.
	Critical bool
	// Timeout bounds one attempt (default 2 minutes). A Run that ignores its
	// context is abandoned shortly after the deadline.
	Timeout time.Duration
}

// Runner runs boot steps.
type Runner struct {
	Log      *slog.Logger
	Timeline *timeline.Timeline
	// CriticalWait bounds foreground retries of a critical step (default 30s).
	CriticalWait time.Duration
	// AbandonAfter is how long after its deadline an attempt that does not
	// return is abandoned (default 5s).
	AbandonAfter time.Duration
	// sleep is replaceable in tests.
	sleep func(ctx context.Context, d time.Duration) error
}

// Result is the boot outcome Run reports on its channel.
type Result struct {
	// Failed names steps that gave up (their Attempts ran out); empty when
	// every step succeeded.
	Failed []string
}

// Run runs steps in order and returns once the foreground pass is over. The
// channel receives one Result when every step has either succeeded or given
// up, including the ones retried in the background.
func (r *Runner) Run(ctx context.Context, steps []Step) <-chan Result {
	done := make(chan Result, 1)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []string
	)
	giveUp := func(name string) {
		mu.Lock()
		failed = append(failed, name)
		mu.Unlock()
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			giveUp(s.Name)
			continue
		}
		err := r.attempt(ctx, s)
		if err == nil {
			continue
		}
		attempts := 1
		if s.Critical {
			var ok bool
			attempts, ok = r.retryForeground(ctx, s, attempts)
			if ok {
				continue
			}
			r.Log.Error("critical boot step still failing; continuing boot, retrying in the background", "step", s.Name)
		}
		if s.Retry.Attempts > 0 && attempts >= s.Retry.Attempts {
			r.Log.Error("boot step gave up", "step", s.Name, "attempts", attempts)
			giveUp(s.Name)
			continue
		}
		wg.Add(1)
		Go(r.Log, "retry "+s.Name, func() {
			defer wg.Done()
			if !r.retryBackground(ctx, s, attempts) {
				giveUp(s.Name)
			}
		})
	}
	Go(r.Log, "boot completion", func() {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		done <- Result{Failed: append([]string(nil), failed...)}
	})
	return done
}

func (r *Runner) retryForeground(ctx context.Context, s Step, attempts int) (int, bool) {
	wait := r.CriticalWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && (s.Retry.Attempts == 0 || attempts < s.Retry.Attempts) {
		d := min(s.Retry.Backoff(attempts), time.Until(deadline))
		if d <= 0 || r.doSleep(ctx, d) != nil {
			break
		}
		attempts++
		if r.attempt(ctx, s) == nil {
			return attempts, true
		}
	}
	return attempts, false
}

func (r *Runner) retryBackground(ctx context.Context, s Step, attempts int) bool {
	for s.Retry.Attempts == 0 || attempts < s.Retry.Attempts {
		if r.doSleep(ctx, s.Retry.Backoff(attempts)) != nil {
			return false
		}
		attempts++
		if r.attempt(ctx, s) == nil {
			r.Log.Info("boot step recovered", "step", s.Name, "attempt", attempts)
			return true
		}
	}
	r.Log.Error("boot step gave up", "step", s.Name, "attempts", attempts)
	return false
}

func (r *Runner) doSleep(ctx context.Context, d time.Duration) error {
	if r.sleep != nil {
		return r.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// attempt runs one attempt of s under recover and a deadline.
func (r *Runner) attempt(ctx context.Context, s Step) error {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	abandon := r.AbandonAfter
	if abandon <= 0 {
		abandon = 5 * time.Second
	}
	end := func(error) {}
	if r.Timeline != nil {
		end = r.Timeline.Begin(s.Name)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- Safely(r.Log, s.Name, func() error { return s.Run(actx) }) }()
	var err error
	select {
	case err = <-result:
	case <-time.After(timeout + abandon):
		err = fmt.Errorf("step %s did not return within %v; abandoned", s.Name, timeout+abandon)
	}
	end(err)
	if err != nil {
		r.Log.Error("boot step failed", "step", s.Name, "err", err)
	}
	return err
}

// ErrPanic marks errors made from a recovered panic.
var ErrPanic = errors.New("panic")

// Safely calls fn, turning a panic into an error (and logging its stack).
func Safely(log *slog.Logger, what string, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("recovered panic", "in", what, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w in %s: %v", ErrPanic, what, p)
		}
	}()
	return fn()
}

// Go runs fn in a goroutine that cannot take PID 1 down: a panic is logged
// with its stack and the goroutine ends.
func Go(log *slog.Logger, what string, fn func()) {
	go func() {
		_ = Safely(log, what, func() error { fn(); return nil })
	}()
}
