// Package health runs Monit-style health checks against a service: a
// command that must exit 0, a TCP port that must accept, or an HTTP URL that
// must answer with an expected status (and optionally contain a text). A
// Monitor turns single probes into a verdict: a service is unhealthy after
// Retries consecutive failures, counted only once its start period is over.
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults applied by Check.withDefaults when a field is zero.
const (
	DefaultInterval = 10 * time.Second
	DefaultTimeout  = 5 * time.Second
	DefaultRetries  = 3
)

// Check describes one health check. Exactly one of Exec, TCP or HTTP is set.
type Check struct {
	Exec []string `json:"exec,omitempty" yaml:"exec,omitempty"` // argv; healthy when it exits 0
	TCP  string   `json:"tcp,omitempty" yaml:"tcp,omitempty"`   // host:port that must accept a connection
	HTTP string   `json:"http,omitempty" yaml:"http,omitempty"` // URL fetched with GET

	// HTTP only: accepted status range (default 200..399) and a text the body
	// must contain (empty: any body).
	StatusMin    int    `json:"status_min,omitempty" yaml:"status_min,omitempty"`
	StatusMax    int    `json:"status_max,omitempty" yaml:"status_max,omitempty"`
	BodyContains string `json:"body_contains,omitempty" yaml:"body_contains,omitempty"`
	// TLSSkipVerify accepts any certificate (services inside the stack
	// often serve https with a self-signed one).
	TLSSkipVerify bool `json:"tls_skip_verify,omitempty" yaml:"tls_skip_verify,omitempty"`

	Interval    time.Duration `json:"interval,omitempty" yaml:"interval,omitempty"`         // between probes
	Timeout     time.Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`           // of one probe
	Retries     int           `json:"retries,omitempty" yaml:"retries,omitempty"`           // consecutive failures before unhealthy
	StartPeriod time.Duration `json:"start_period,omitempty" yaml:"start_period,omitempty"` // failures ignored this long after start

	// PrepareExec, when set, adjusts the probe command before it starts
	// (e.g. to run it inside a role's namespaces).
	PrepareExec func(*exec.Cmd) error `json:"-" yaml:"-"`
	// Starter starts the probe command and reports its status. Inside a
	// PID 1 that reaps with wait4(-1) it must be PID 1's reaper, or the
	// probe's status is stolen; the supervisor sets its own. nil: cmd.Run.
	Starter Starter `json:"-" yaml:"-"`
}

// Starter starts a command and reports its wait status once
// (supervise.Starter, reap.Reaper).
type Starter interface {
	Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error)
}

// Validate reports what is wrong with the check, naming the field.
func (c *Check) Validate() error {
	if c == nil {
		return errors.New("health check is nil")
	}
	n := 0
	if len(c.Exec) > 0 {
		n++
		if c.Exec[0] == "" {
			return errors.New("health: exec: empty command name")
		}
	}
	if c.TCP != "" {
		n++
		if _, _, err := net.SplitHostPort(c.TCP); err != nil {
			return fmt.Errorf("health: tcp %q: %w", c.TCP, err)
		}
	}
	if c.HTTP != "" {
		n++
		u, err := url.Parse(c.HTTP)
		if err != nil {
			return fmt.Errorf("health: http %q: %w", c.HTTP, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("health: http %q: scheme must be http or https", c.HTTP)
		}
		if u.Host == "" {
			return fmt.Errorf("health: http %q: no host", c.HTTP)
		}
	}
	switch {
	case n == 0:
		return errors.New("health: one of exec, tcp or http must be set")
	case n > 1:
		return errors.New("health: only one of exec, tcp or http may be set")
	}
	if c.StatusMin != 0 && c.StatusMax != 0 && c.StatusMin > c.StatusMax {
		return fmt.Errorf("health: status_min %d is above status_max %d", c.StatusMin, c.StatusMax)
	}
	for name, d := range map[string]time.Duration{"interval": c.Interval, "timeout": c.Timeout, "start_period": c.StartPeriod} {
		if d < 0 {
			return fmt.Errorf("health: %s %v is negative", name, d)
		}
	}
	if c.Retries < 0 {
		return fmt.Errorf("health: retries %d is negative", c.Retries)
	}
	return nil
}

// Kind names the probe type: "exec", "tcp" or "http".
func (c *Check) Kind() string {
	switch {
	case len(c.Exec) > 0:
		return "exec"
	case c.TCP != "":
		return "tcp"
	case c.HTTP != "":
		return "http"
	}
	return ""
}

func (c Check) withDefaults() Check {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Retries == 0 {
		c.Retries = DefaultRetries
	}
	if c.StatusMin == 0 {
		c.StatusMin = 200
	}
	if c.StatusMax == 0 {
		c.StatusMax = 399
	}
	return c
}

// Result is the outcome of one probe.
type Result struct {
	OK       bool          `json:"ok"`
	Reason   string        `json:"reason,omitempty"` // why it failed, or a short success note
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration"`
}

// Probe runs the check once, bounded by its timeout.
func (c *Check) Probe(ctx context.Context) Result {
	cc := c.withDefaults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cc.Timeout)
	defer cancel()
	var err error
	var note string
	switch cc.Kind() {
	case "exec":
		note, err = probeExec(ctx, &cc)
	case "tcp":
		note, err = probeTCP(ctx, cc.TCP)
	case "http":
		note, err = probeHTTP(ctx, &cc)
	default:
		err = errors.New("no probe configured")
	}
	r := Result{OK: err == nil, At: start, Duration: time.Since(start), Reason: note}
	if err != nil {
		r.Reason = err.Error()
		if ctx.Err() == context.DeadlineExceeded {
			r.Reason = fmt.Sprintf("%s: timed out after %v", cc.Kind(), cc.Timeout)
		}
	}
	return r
}

func probeExec(ctx context.Context, c *Check) (string, error) {
	cmd := exec.CommandContext(ctx, c.Exec[0], c.Exec[1:]...)
	var out limitedBuffer
	out.max = 512
	cmd.Stdout, cmd.Stderr = &out, &out
	// A probe that forks a child keeping the pipe open must not outlive the timeout.
	cmd.WaitDelay = time.Second
	if c.PrepareExec != nil {
		if err := c.PrepareExec(cmd); err != nil {
			return "", fmt.Errorf("exec %s: prepare: %w", c.Exec[0], err)
		}
	}
	var err error
	if c.Starter == nil {
		err = cmd.Run()
	} else {
		err = runWith(ctx, c.Starter, cmd)
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if msg != "" {
			return "", fmt.Errorf("exec %s: %w: %s", c.Exec[0], err, msg)
		}
		return "", fmt.Errorf("exec %s: %w", c.Exec[0], err)
	}
	return "exec " + c.Exec[0] + ": exit 0", nil
}

// runWith runs cmd through a Starter; CommandContext kills it at the
// deadline, after which its status arrives.
func runWith(ctx context.Context, st Starter, cmd *exec.Cmd) error {
	ch, err := st.Start(cmd)
	if err != nil {
		return err
	}
	select {
	case ws := <-ch:
		switch {
		case ws.Exited() && ws.ExitStatus() == 0:
			return nil
		case ws.Exited():
			return fmt.Errorf("exit status %d", ws.ExitStatus())
		case ws.Signaled():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("killed by %s", unix.SignalName(ws.Signal()))
		}
		return fmt.Errorf("wait status %#x", uint32(ws))
	case <-time.After(time.Until(deadlineOf(ctx)) + 5*time.Second):
		return errors.New("probe did not end after its timeout")
	}
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(DefaultTimeout)
}

func probeTCP(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("tcp %s: %w", addr, err)
	}
	conn.Close()
	return "tcp " + addr + ": connected", nil
}

func probeHTTP(ctx context.Context, c *Check) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTP, nil)
	if err != nil {
		return "", fmt.Errorf("http %s: %w", c.HTTP, err)
	}
	req.Header.Set("User-Agent", "magestack-health")
	req.Close = true
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if c.TLSSkipVerify {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // the status of the URL itself is what is checked
	}}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("http %s: %w", c.HTTP, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < c.StatusMin || resp.StatusCode > c.StatusMax {
		return "", fmt.Errorf("http %s: status %d, want %d..%d", c.HTTP, resp.StatusCode, c.StatusMin, c.StatusMax)
	}
	if c.BodyContains != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return "", fmt.Errorf("http %s: reading body: %w", c.HTTP, err)
		}
		if !strings.Contains(string(body), c.BodyContains) {
			return "", fmt.Errorf("http %s: body does not contain %q", c.HTTP, c.BodyContains)
		}
	}
	return fmt.Sprintf("http %s: status %d", c.HTTP, resp.StatusCode), nil
}

// limitedBuffer keeps the first max bytes written and discards the rest.
type limitedBuffer struct {
	b   []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.b); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		l.b = append(l.b, p[:room]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
