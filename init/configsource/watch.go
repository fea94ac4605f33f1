package configsource

import (
	"context"
	"time"
)

// Watcher polls a source and reports each new revision once.
type Watcher struct {
	f        *Fetcher
	source   string
	interval time.Duration
	fn       func(Revision)
	poke     chan struct{}
	last     string
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
		case err == nil && rev.ID != w.last:
			w.last = rev.ID
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
