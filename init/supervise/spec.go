package supervise

import (
	"fmt"
	"regexp"
	"syscall"
	"time"

	"magestack/init/health"
)

// Spec describes one supervised unit: a role environment (seen from PID 1)
// or a service (seen from role-init).
type Spec struct {
	Name    string
	Command []string // argv; Command[0] is looked up in PATH when it has no slash
	Env     []string // the whole environment of the process
	Dir     string

	After    []string      // units that must be ready before this one starts
	Health   *health.Check // nil: ready once running (or once notified)
	NotifyFD bool          // s6-style: the unit writes a line to fd 3 when ready

	StopSignal syscall.Signal // default SIGTERM, sent to the process group
	StopGrace  time.Duration  // default 10s, then SIGKILL of the cgroup / process group

	Restart RestartPolicy

	// Cgroup is a cgroup v2 directory (created if missing); the process is
	// placed there at clone time, stop kills the whole group, CPU, memory
	// and OOM kills are read from it. "" runs the unit in the supervisor's
	// cgroup and kills its process group instead.
	Cgroup string

	SysProcAttr func() (*syscall.SysProcAttr, error) // namespaces, credentials
	AfterStart  func(pid int) error                  // e.g. move a veth into the new netns
	AfterStop   func() error                         // cleanup after the unit's processes are gone
}

// RestartPolicy: a unit that exits is restarted at once if it had been up
// for StableAfter, otherwise after a delay of Initial doubling with each
// further quick exit, capped at Max. CrashLoopCount exits within
// CrashLoopWindow mark it failed: it stays down until started explicitly.
type RestartPolicy struct {
	Never           bool // one-shot: an exit leaves the unit stopped (failed if non-zero)
	Initial         time.Duration
	Max             time.Duration
	StableAfter     time.Duration
	CrashLoopCount  int
	CrashLoopWindow time.Duration
}

// Defaults for zero fields.
const (
	DefaultStopGrace       = 10 * time.Second
	DefaultInitialBackoff  = 100 * time.Millisecond
	DefaultMaxBackoff      = 30 * time.Second
	DefaultStableAfter     = 10 * time.Second
	DefaultCrashLoopCount  = 5
	DefaultCrashLoopWindow = 30 * time.Second
	// killWait bounds the wait for a process after SIGKILL; a process in
	// uninterruptible sleep can outlive it, which is reported, not waited.
	killWait = 5 * time.Second
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether s can name a unit (no slash: "role/service"
// addresses a unit of another supervisor).
func ValidName(s string) bool { return nameRE.MatchString(s) }

func (s *Spec) validate() error {
	if !ValidName(s.Name) {
		return fmt.Errorf("unit name %q: want letters, digits, '.', '_' or '-' (at most 63)", s.Name)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return fmt.Errorf("unit %s: command is empty", s.Name)
	}
	for _, a := range s.After {
		if a == s.Name {
			return fmt.Errorf("unit %s: after: depends on itself", s.Name)
		}
		if !ValidName(a) {
			return fmt.Errorf("unit %s: after: bad unit name %q", s.Name, a)
		}
	}
	if s.Health != nil {
		if err := s.Health.Validate(); err != nil {
			return fmt.Errorf("unit %s: %w", s.Name, err)
		}
	}
	r := s.Restart
	if r.Initial < 0 || r.Max < 0 || r.StableAfter < 0 || r.CrashLoopWindow < 0 || r.CrashLoopCount < 0 || s.StopGrace < 0 {
		return fmt.Errorf("unit %s: restart policy and stop grace must not be negative", s.Name)
	}
	if r.Initial > 0 && r.Max > 0 && r.Initial > r.Max {
		return fmt.Errorf("unit %s: restart initial %v is above max %v", s.Name, r.Initial, r.Max)
	}
	return nil
}

func (s Spec) withDefaults() Spec {
	if s.StopSignal == 0 {
		s.StopSignal = syscall.SIGTERM
	}
	if s.StopGrace == 0 {
		s.StopGrace = DefaultStopGrace
	}
	r := &s.Restart
	if r.Initial == 0 {
		r.Initial = DefaultInitialBackoff
	}
	if r.Max == 0 {
		r.Max = DefaultMaxBackoff
	}
	if r.StableAfter == 0 {
		r.StableAfter = DefaultStableAfter
	}
	if r.CrashLoopCount == 0 {
		r.CrashLoopCount = DefaultCrashLoopCount
	}
	if r.CrashLoopWindow == 0 {
		r.CrashLoopWindow = DefaultCrashLoopWindow
	}
	return s
}

// backoff is the delay before the next start after `quick` consecutive
// exits that came sooner than StableAfter (0: the last run was stable).
func (r RestartPolicy) backoff(quick int) time.Duration {
	if quick <= 0 {
		return 0
	}
	d := r.Initial
	for i := 1; i < quick; i++ {
		d *= 2
		if d >= r.Max {
			return r.Max
		}
	}
	if d > r.Max {
		return r.Max
	}
	return d
}

// startOrder sorts names so each comes after the units it depends on;
// it fails on an unknown dependency or a cycle, naming them.
func startOrder(specs map[string]*Spec, names []string) ([]string, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	mark := map[string]int{}
	var order []string
	var visit func(n string, path []string) error
	visit = func(n string, path []string) error {
		switch mark[n] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("dependency cycle: %v", append(path, n))
		}
		mark[n] = visiting
		for _, dep := range specs[n].After {
			if _, ok := specs[dep]; !ok {
				return fmt.Errorf("unit %s: after: unknown unit %q", n, dep)
			}
			if err := visit(dep, append(path, n)); err != nil {
				return err
			}
		}
		mark[n] = done
		order = append(order, n)
		return nil
	}
	for _, n := range names {
		if _, ok := specs[n]; !ok {
			return nil, fmt.Errorf("unknown unit %q", n)
		}
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
