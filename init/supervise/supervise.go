// Package supervise keeps units (role environments seen from PID 1, or
// services seen from role-init) running: it starts them in dependency
// order once their dependencies are ready, restarts them with exponential
// backoff, marks crash loops failed, restarts unhealthy ones, stops them
// with a signal then a cgroup-wide SIGKILL, and keeps their logs.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"magestack/init/health"
	"magestack/init/logbuf"
)

// ErrUnknownUnit is wrapped by every error about a unit name that was never added.
var ErrUnknownUnit = errors.New("unknown unit")

// State of a unit.
type State string

const (
	StateStopped  State = "stopped"  // not wanted (never started, or stopped on request)
	StateStarting State = "starting" // waiting for dependencies, or being started
	StateRunning  State = "running"  // process up, not yet ready (notify or first healthy probe pending)
	StateReady    State = "ready"    // up and ready; dependents may start
	StateBackoff  State = "backoff"  // exited; waiting before the next start
	StateStopping State = "stopping" // stop signal sent and grace running, or process ended and cleanup running
	StateFailed   State = "failed"   // crash loop (or failed one-shot): stays down until started
)

// ExitInfo says how a unit's process ended.
type ExitInfo struct {
	At     time.Time     `json:"at"`
	Code   int           `json:"code"`             // exit code; -1 when killed by a signal or never started
	Signal string        `json:"signal,omitempty"` // e.g. "SIGKILL"
	OOM    bool          `json:"oom,omitempty"`    // the cgroup's oom_kill counter rose during the run
	Uptime time.Duration `json:"uptime"`
	Reason string        `json:"reason"` // human text: "exit 1", "killed by SIGKILL", "oom-killed", "unhealthy: ..."
}

// UnitStatus is a snapshot of one unit.
type UnitStatus struct {
	Name         string        `json:"name"`
	State        State         `json:"state"`
	Message      string        `json:"message,omitempty"` // e.g. "waiting for db1", "restarting in 400ms"
	PID          int           `json:"pid,omitempty"`
	Since        time.Time     `json:"since"`             // entered State
	Started      time.Time     `json:"started,omitempty"` // current process start
	Uptime       time.Duration `json:"uptime,omitempty"`  // of the current process
	Restarts     int           `json:"restarts"`          // automatic restarts since added
	LastExit     *ExitInfo     `json:"last_exit,omitempty"`
	Health       string        `json:"health,omitempty"` // "", starting, healthy, unhealthy
	HealthReason string        `json:"health_reason,omitempty"`
	CPUUsec      uint64        `json:"cpu_usec"`     // cgroup cpu.stat usage_usec (main process only without cgroup)
	MemoryBytes  uint64        `json:"memory_bytes"` // cgroup memory.current (main process RSS without cgroup)
	Cgroup       string        `json:"cgroup,omitempty"`
}

// Event is something that happened to a unit.
type Event struct {
	Time    time.Time `json:"time"`
	Unit    string    `json:"unit"`
	Kind    string    `json:"kind"` // started, ready, exited, unhealthy, oom, crash-loop, failed, stopped, stuck, panic
	Message string    `json:"message"`
}

// Options of a Supervisor. Zero values are usable (memory-only logs).
type Options struct {
	// LogDir keeps each unit's log at LogDir/<unit>.log (rotated), unless
	// LogPath says otherwise. Both empty: logs only in memory.
	LogDir       string
	LogPath      func(unit string) string
	LogRingBytes int
	LogFileBytes int64
	LogFiles     int
	// Starter starts and waits for processes; nil: ExecStarter. Under a
	// PID 1 that reaps with wait4(-1), pass its reaper.
	Starter Starter
}

// Supervisor is safe for concurrent use.
type Supervisor struct {
	log     *slog.Logger
	opts    Options
	starter Starter

	mu      sync.Mutex
	units   map[string]*unit
	added   []string
	changed chan struct{} // closed and replaced on every state change
	subs    map[chan Event]struct{}
}

type unit struct {
	spec Spec
	log  *logbuf.Log

	// guarded by Supervisor.mu
	state        State
	message      string
	since        time.Time
	pid          int
	started      time.Time
	restarts     int
	lastExit     *ExitInfo
	health       health.State
	healthReason string
	exits        []time.Time // unexpected exits within the crash-loop window
	run          *runHandle  // non-nil while the unit's loop runs
}

type runHandle struct {
	ctx    context.Context // cancelled once a stop was asked for
	cancel context.CancelFunc
	done   chan struct{}
	// kill, closed once by Kill, cuts a stop's grace period short.
	kill     chan struct{}
	killOnce sync.Once
}

// New returns an empty supervisor.
func New(log *slog.Logger, opts Options) *Supervisor {
	if log == nil {
		log = slog.Default()
	}
	st := opts.Starter
	if st == nil {
		st = ExecStarter{}
	}
	return &Supervisor{log: log, opts: opts, starter: st, units: map[string]*unit{},
		changed: make(chan struct{}), subs: map[chan Event]struct{}{}}
}

// Add registers a unit (stopped). Dependencies named in After may be added later.
func (s *Supervisor) Add(spec Spec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	spec = spec.withDefaults()
	path := ""
	switch {
	case s.opts.LogPath != nil:
		path = s.opts.LogPath(spec.Name)
	case s.opts.LogDir != "":
		path = filepath.Join(s.opts.LogDir, spec.Name+".log")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.units[spec.Name]; ok {
		return fmt.Errorf("unit %s: already added", spec.Name)
	}
	l, err := logbuf.New(logbuf.Options{Path: path, RingBytes: s.opts.LogRingBytes, FileBytes: s.opts.LogFileBytes, Files: s.opts.LogFiles})
	if err != nil {
		return fmt.Errorf("unit %s: %w", spec.Name, err)
	}
	s.units[spec.Name] = &unit{spec: spec, log: l, state: StateStopped, since: time.Now()}
	s.added = append(s.added, spec.Name)
	return nil
}

// Remove stops a unit and forgets it.
func (s *Supervisor) Remove(ctx context.Context, name string) error {
	if err := s.Stop(ctx, name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.units[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownUnit, name)
	}
	if u.run != nil {
		return fmt.Errorf("unit %s: started again while being removed", name)
	}
	u.log.Close()
	delete(s.units, name)
	s.added = slices.DeleteFunc(s.added, func(n string) bool { return n == name })
	return nil
}

// Start starts a stopped or failed unit; its loop waits for the units in
// After to be ready first. Starting a running unit does nothing.
func (s *Supervisor) Start(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.units[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownUnit, name)
	}
	for _, dep := range u.spec.After {
		if _, ok := s.units[dep]; !ok {
			return fmt.Errorf("unit %s: after: unknown unit %q", name, dep)
		}
	}
	for u.run != nil {
		h := u.run
		if h.ctx.Err() == nil {
			return nil // running and staying so
		}
		// Being stopped: let the stop finish, then start afresh.
		s.mu.Unlock()
		select {
		case <-h.done:
		case <-ctx.Done():
			s.mu.Lock()
			return fmt.Errorf("start %s: waiting for its stop to finish: %w", name, ctx.Err())
		}
		s.mu.Lock()
	}
	lctx, cancel := context.WithCancel(context.Background())
	h := &runHandle{ctx: lctx, cancel: cancel, done: make(chan struct{}), kill: make(chan struct{})}
	u.run = h
	u.exits = nil
	s.setStateLocked(u, StateStarting, "")
	go s.loop(lctx, u, h)
	return nil
}

// StartAll starts every unit, dependencies first.
func (s *Supervisor) StartAll(ctx context.Context) error {
	order, err := s.order()
	if err != nil {
		return err
	}
	for _, n := range order {
		if err := s.Start(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (s *Supervisor) order() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	specs := map[string]*Spec{}
	for n, u := range s.units {
		specs[n] = &u.spec
	}
	return startOrder(specs, s.added)
}

// Stop stops a unit and waits (bounded by ctx) until its processes are gone.
func (s *Supervisor) Stop(ctx context.Context, name string) error {
	return s.stop(ctx, name, false)
}

// Kill stops a unit without a grace period: its cgroup is killed at once,
// also when a graceful stop is under way. For a host that lost the right
// to run the unit (its cluster lease ended), where every second of a
// graceful stop is a second of two hosts running it.
func (s *Supervisor) Kill(ctx context.Context, name string) error {
	return s.stop(ctx, name, true)
}

func (s *Supervisor) stop(ctx context.Context, name string, kill bool) error {
	s.mu.Lock()
	u, ok := s.units[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknownUnit, name)
	}
	h := u.run
	if h == nil && u.state == StateFailed {
		s.setStateLocked(u, StateStopped, "stopped on request")
	}
	s.mu.Unlock()
	if h == nil {
		return nil
	}
	if kill {
		h.killOnce.Do(func() { close(h.kill) })
	}
	h.cancel()
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", name, ctx.Err())
	}
}

// Restart stops and starts a unit; it also revives a failed one.
func (s *Supervisor) Restart(ctx context.Context, name string) error {
	if err := s.Stop(ctx, name); err != nil {
		return err
	}
	return s.Start(ctx, name)
}

// StopAll stops every unit, dependents before their dependencies.
func (s *Supervisor) StopAll(ctx context.Context) error {
	order, err := s.order()
	if err != nil {
		// A broken graph must not prevent shutdown: stop in reverse add order.
		s.mu.Lock()
		order = slices.Clone(s.added)
		s.mu.Unlock()
	}
	var errs []error
	for _, n := range slices.Backward(order) {
		if err := s.Stop(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WaitReady waits until every named unit (all when none named) is ready.
// It fails at once when one of them is failed or stopped.
func (s *Supervisor) WaitReady(ctx context.Context, names ...string) error {
	for {
		s.mu.Lock()
		if len(names) == 0 {
			names = slices.Clone(s.added)
		}
		var waiting string
		var bad error
		for _, n := range names {
			u, ok := s.units[n]
			switch {
			case !ok:
				bad = fmt.Errorf("%w %q", ErrUnknownUnit, n)
			case u.state == StateFailed:
				bad = fmt.Errorf("unit %s failed: %s", n, u.message)
			case u.state == StateStopped:
				bad = fmt.Errorf("unit %s is stopped", n)
			case u.state != StateReady && waiting == "":
				waiting = n
			}
			if bad != nil {
				break
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if bad != nil {
			return bad
		}
		if waiting == "" {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be ready: %w", waiting, ctx.Err())
		}
	}
}

// WaitUnit waits until cond holds for the unit's status (checked on every
// state change) or ctx ends.
func (s *Supervisor) WaitUnit(ctx context.Context, name string, cond func(UnitStatus) bool) (UnitStatus, error) {
	for {
		s.mu.Lock()
		u, ok := s.units[name]
		if !ok {
			s.mu.Unlock()
			return UnitStatus{}, fmt.Errorf("%w %q", ErrUnknownUnit, name)
		}
		st := s.statusLocked(u)
		ch := s.changed
		s.mu.Unlock()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, fmt.Errorf("unit %s: %w", name, ctx.Err())
		}
	}
}

// Status returns every unit in the order they were added.
func (s *Supervisor) Status() []UnitStatus {
	s.mu.Lock()
	out := make([]UnitStatus, 0, len(s.added))
	for _, n := range s.added {
		out = append(out, s.statusLocked(s.units[n]))
	}
	s.mu.Unlock()
	for i := range out {
		fillUsage(&out[i])
	}
	return out
}

// Unit returns one unit's status.
func (s *Supervisor) Unit(name string) (UnitStatus, error) {
	s.mu.Lock()
	u, ok := s.units[name]
	if !ok {
		s.mu.Unlock()
		return UnitStatus{}, fmt.Errorf("%w %q", ErrUnknownUnit, name)
	}
	st := s.statusLocked(u)
	s.mu.Unlock()
	fillUsage(&st)
	return st, nil
}

func (s *Supervisor) statusLocked(u *unit) UnitStatus {
	st := UnitStatus{Name: u.spec.Name, State: u.state, Message: u.message, PID: u.pid, Since: u.since,
		Restarts: u.restarts, Health: string(u.health), HealthReason: u.healthReason, Cgroup: u.spec.Cgroup}
	if u.lastExit != nil {
		e := *u.lastExit
		st.LastExit = &e
	}
	if u.pid != 0 {
		st.Started = u.started
		st.Uptime = time.Since(u.started).Round(time.Millisecond)
	}
	return st
}

// fillUsage reads CPU and memory outside the lock (file reads).
func fillUsage(st *UnitStatus) {
	if st.Cgroup != "" {
		st.CPUUsec, _ = cgroupCPUUsec(st.Cgroup)
		st.MemoryBytes, _ = cgroupMemory(st.Cgroup)
		return
	}
	if st.PID != 0 {
		st.CPUUsec, st.MemoryBytes, _ = procStats(st.PID)
	}
}

// Logs returns a unit's log.
func (s *Supervisor) Logs(name string) (*logbuf.Log, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.units[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownUnit, name)
	}
	return u.log, nil
}

// Names lists the units in the order they were added.
func (s *Supervisor) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.added)
}

// Subscribe returns a channel of events. A subscriber that does not keep
// up loses events rather than stalling supervision.
func (s *Supervisor) Subscribe(buffer int) (<-chan Event, func()) {
	if buffer <= 0 {
		buffer = 64
	}
	ch := make(chan Event, buffer)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, ch)
			s.mu.Unlock()
			close(ch)
		})
	}
}

// emitLocked sends an event to every subscriber, logs it and writes it to
// the unit's own log.
func (s *Supervisor) emitLocked(u *unit, kind, msg string) {
	ev := Event{Time: time.Now(), Unit: u.spec.Name, Kind: kind, Message: msg}
	for ch := range s.subs {
		select {
		case ch <- ev:
		default:
		}
	}
	level := slog.LevelInfo
	switch kind {
	case "exited", "unhealthy", "oom", "stuck":
		level = slog.LevelWarn
	case "crash-loop", "failed", "panic":
		level = slog.LevelError
	}
	s.log.Log(context.Background(), level, "unit "+kind, "unit", u.spec.Name, "msg", msg)
	u.log.Printf("%s: %s", kind, msg)
}

func (s *Supervisor) setStateLocked(u *unit, st State, msg string) {
	if u.state != st {
		u.since = time.Now()
	}
	u.state, u.message = st, msg
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Supervisor) set(u *unit, st State, msg string) {
	s.mu.Lock()
	s.setStateLocked(u, st, msg)
	s.mu.Unlock()
}

func (s *Supervisor) event(u *unit, kind, msg string) {
	s.mu.Lock()
	s.emitLocked(u, kind, msg)
	s.mu.Unlock()
}

// recoverGo reports a panic in one of the supervisor's goroutines.
func (s *Supervisor) recoverGo(u *unit, what string) {
	if r := recover(); r != nil {
		s.event(u, "panic", fmt.Sprintf("%s: %v\n%s", what, r, debug.Stack()))
	}
}
