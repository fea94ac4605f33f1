package configsource

import (
	"context"
	"sync"
	"time"
)

// Watcher polls a source and reports each new revision once.
type Watcher struct {
	f        *Fetcher
	source   string
	interval time.Duration
	fn       func(Revision)
	poke     chan struct{}

	mu    sync.Mutex
	last  string
	force bool
}

// NewWatcher polls source every interval (and whenever Poke is called) and
// calls fn with each revision whose ID differs from the previous one.
// since is the ID already in force (e.g. the last good revision loaded at
// boot), so it is not reported again; "" reports the first fetch.
func (f *Fetcher) NewWatcher(source string, interval time.Duration, since string, fn func(Revision)) *Watcher {
	return &Watcher{f: f, source: source, interval: interval, fn: fn, poke: make(chan struct{}, 1), last: since}
}

// Poke asks for a fetch now (`magestack config apply`); it never blocks.
func (w *Watcher) Poke() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// Retry asks for a fetch now that is reported even if the revision has not
// changed (re-applying a revision whose apply failed for a passing reason).
func (w *Watcher) Retry() {
	w.mu.Lock()
	w.force = true
	w.mu.Unlock()
	w.Poke()
}

// report decides whether rev is news, and records it.
func (w *Watcher) report(rev Revision) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev.ID == w.last && !w.force {
		return false
	}
	w.last, w.force = rev.ID, false
	return true
}

// Run polls until ctx is done. Fetch errors are logged and retried at the
// next tick: an unreachable repository leaves the running stack as it is.
func (w *Watcher) Run(ctx context.Context) error {
	interval := w.interval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rev, err := w.f.Fetch(ctx, w.source)
		switch {
		case err != nil && ctx.Err() == nil:
			w.f.opts.Logger.Warn("config source unreachable; keeping the running revision", "source", w.source, "err", err)
		case err == nil && w.report(rev):
			w.fn(rev)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-w.poke:
		}
	}
}

// Watch polls source every interval and calls fn only when the revision
// changes (the first successful fetch counts as a change).
func Watch(ctx context.Context, source string, interval time.Duration, fn func(Revision)) error {
	return New(Options{}).NewWatcher(source, interval, "", fn).Run(ctx)
}
