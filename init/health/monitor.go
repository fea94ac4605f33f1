package health

import (
	"context"
	"fmt"
	"time"
)

// State is a monitor's verdict.
type State string

const (
	Starting  State = "starting"  // no success yet, failures not (or not yet enough) counted
	Healthy   State = "healthy"   // the last probe succeeded, or failures are below Retries
	Unhealthy State = "unhealthy" // Retries consecutive failures after the start period
)

// Status is what a Monitor reports after each probe.
type Status struct {
	State     State     `json:"state"`
	Failures  int       `json:"failures"`         // consecutive failed probes
	Reason    string    `json:"reason,omitempty"` // the last probe's reason
	LastCheck time.Time `json:"last_check"`
	Changed   bool      `json:"-"` // State differs from the previous report
}

// Monitor probes a check repeatedly and decides when the service is
// unhealthy. It is not safe for concurrent use; Run owns it.
type Monitor struct {
	check       Check
	started     time.Time
	lastCounted time.Time // when a failure was last counted
	status      Status
}

// NewMonitor returns a monitor for a service that started at started.
func NewMonitor(c Check, started time.Time) *Monitor {
	return &Monitor{check: c.withDefaults(), started: started, lastCounted: started, status: Status{State: Starting}}
}

// Observe folds one probe result into the verdict. Failures within the
// start period are reported but not counted, so a slow starter is not
// restarted before it had a chance; the first success ends the start period.
// Until that first success the service is probed faster than Interval (to
// see readiness early), but failures are counted at most once per Interval:
// a slow starter gets Retries × Interval, as with steady probing.
func (m *Monitor) Observe(r Result) Status {
	prev := m.status.State
	s := &m.status
	s.LastCheck = r.At
	s.Reason = r.Reason
	switch {
	case r.OK:
		s.Failures = 0
		s.State = Healthy
	case s.State == Starting && r.At.Sub(m.started) < m.check.StartPeriod:
		// Grace: not counted.
	case s.State == Starting && r.At.Sub(m.lastCounted) < m.check.Interval:
		// A fast start-time probe: counted at the steady cadence only.
	default:
		m.lastCounted = r.At
		s.Failures++
		if s.Failures >= m.check.Retries {
			s.State = Unhealthy
			s.Reason = fmt.Sprintf("%s (%d consecutive failures)", r.Reason, s.Failures)
		}
	}
	s.Changed = s.State != prev
	return *s
}

// startInterval is how often a service that has not yet passed is probed:
// readiness gates dependents, so it is detected sooner than the steady
// interval would.
func (m *Monitor) startInterval() time.Duration {
	if d := 250 * time.Millisecond; m.check.Interval > d {
		return d
	}
	return m.check.Interval
}

// Run probes until ctx ends, calling report after every probe. It stops
// probing once the verdict is Unhealthy: the caller restarts the service and
// starts a new monitor.
func (m *Monitor) Run(ctx context.Context, report func(Status)) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		st := m.Observe(m.check.Probe(ctx))
		if ctx.Err() != nil {
			return
		}
		report(st)
		if st.State == Unhealthy {
			return
		}
		next := m.check.Interval
		if st.State == Starting {
			next = m.startInterval()
		}
		timer.Reset(next)
	}
}
