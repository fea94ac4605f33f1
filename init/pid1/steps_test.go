package pid1

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/timeline"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func noSleep(ctx context.Context, d time.Duration) error { return ctx.Err() }

func TestBackoff(t *testing.T) {
	r := Retry{Initial: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := r.Backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := (Retry{}).Backoff(100); got != 30*time.Second {
		t.Errorf("default cap: %v", got)
	}
}

// failing returns a Run that fails its first n calls (n < 0: always), and
// records call order into log.
func failing(name string, n int, log *[]string, mu *sync.Mutex) func(context.Context) error {
	calls := 0
	return func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		*log = append(*log, name)
		if n < 0 || calls <= n {
			return errors.New(name + " broken")
		}
		return nil
	}
}

func TestRunner(t *testing.T) {
	tests := []struct {
		name       string
		steps      func(log *[]string, mu *sync.Mutex) []Step
		wantFailed []string
		// wantPrefix is the order of the first calls (the foreground pass).
		wantPrefix []string
		// background: a failed step is retried in the background while
		// the next ones run, so its retries may come before or after them;
		// compare each step's first call only.
		background bool
	}{
		{
			name: "all ok in order",
			steps: func(l *[]string, mu *sync.Mutex) []Step {
				return []Step{{Name: "a", Run: failing("a", 0, l, mu)}, {Name: "b", Run: failing("b", 0, l, mu)}}
			},
			wantPrefix: []string{"a", "b"},
		},
		{
			name: "non-critical failure does not hold later steps",
			steps: func(l *[]string, mu *sync.Mutex) []Step {
				return []Step{{Name: "a", Run: failing("a", 2, l, mu)}, {Name: "b", Run: failing("b", 0, l, mu)}}
			},
			wantPrefix: []string{"a", "b"},
			background: true,
		},
		{
			name: "critical failure retried before later steps",
			steps: func(l *[]string, mu *sync.Mutex) []Step {
				return []Step{{Name: "a", Critical: true, Run: failing("a", 2, l, mu)}, {Name: "b", Run: failing("b", 0, l, mu)}}
			},
			wantPrefix: []string{"a", "a", "a", "b"},
		},
		{
			name: "bounded attempts give up",
			steps: func(l *[]string, mu *sync.Mutex) []Step {
				return []Step{{Name: "a", Retry: Retry{Attempts: 3}, Run: failing("a", -1, l, mu)}, {Name: "b", Run: failing("b", 0, l, mu)}}
			},
			wantPrefix: []string{"a", "b"},
			wantFailed: []string{"a"},
			background: true,
		},
		{
			name: "panic is a step error",
			steps: func(l *[]string, mu *sync.Mutex) []Step {
				n := 0
				return []Step{{Name: "p", Run: func(context.Context) error {
					mu.Lock()
					n++
					*l = append(*l, "p")
					first := n == 1
					mu.Unlock()
					if first {
						panic("boom")
					}
					return nil
				}}, {Name: "b", Run: failing("b", 0, l, mu)}}
			},
			wantPrefix: []string{"p", "b"},
			background: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				calls []string
				mu    sync.Mutex
			)
			r := &Runner{Log: quietLog(), sleep: noSleep}
			done := r.Run(context.Background(), tt.steps(&calls, &mu))
			var res Result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("boot never completed")
			}
			if !reflect.DeepEqual(res.Failed, tt.wantFailed) {
				t.Errorf("Failed = %v, want %v", res.Failed, tt.wantFailed)
			}
			mu.Lock()
			defer mu.Unlock()
			if tt.background {
				// A retry the scheduler ran early changes nothing of the
				// order in which steps were first tried.
				var first []string
				for _, c := range calls {
					if !slices.Contains(first, c) {
						first = append(first, c)
					}
				}
				calls = first
			}
			if len(calls) < len(tt.wantPrefix) || !reflect.DeepEqual(calls[:len(tt.wantPrefix)], tt.wantPrefix) {
				t.Errorf("calls = %v, want prefix %v", calls, tt.wantPrefix)
			}
		})
	}
}

func TestHungStepIsAbandoned(t *testing.T) {
	tl := timeline.New(func() int64 { return 0 }, nil)
	r := &Runner{Log: quietLog(), Timeline: tl, sleep: noSleep, AbandonAfter: 10 * time.Millisecond}
	block := make(chan struct{})
	defer close(block)
	hung := 0
	steps := []Step{
		{Name: "hang", Timeout: 20 * time.Millisecond, Retry: Retry{Attempts: 1}, Run: func(context.Context) error {
			hung++
			<-block // ignores its context
			return nil
		}},
		{Name: "after", Run: func(context.Context) error { return nil }},
	}
	select {
	case res := <-r.Run(context.Background(), steps):
		if !reflect.DeepEqual(res.Failed, []string{"hang"}) {
			t.Fatalf("Failed = %v", res.Failed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a hung step blocked boot")
	}
	snap := tl.Snapshot()
	if len(snap) != 2 || snap[0].OK || !strings.Contains(snap[0].Error, "abandoned") || !snap[1].OK {
		t.Fatalf("timeline = %#v", snap)
	}
}

func TestContextCancelStopsRetries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{Log: quietLog()}
	steps := []Step{{Name: "never", Retry: Retry{Initial: time.Hour}, Run: func(context.Context) error { return errors.New("no") }}}
	done := r.Run(ctx, steps)
	cancel()
	select {
	case res := <-done:
		if !reflect.DeepEqual(res.Failed, []string{"never"}) {
			t.Fatalf("Failed = %v", res.Failed)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not end the background retry")
	}
}

func TestGoRecovers(t *testing.T) {
	done := make(chan struct{})
	Go(quietLog(), "test", func() {
		defer close(done)
		panic("inside goroutine")
	})
	<-done
	err := Safely(quietLog(), "x", func() error { panic("p") })
	if !errors.Is(err, ErrPanic) {
		t.Fatalf("Safely err = %v", err)
	}
}
