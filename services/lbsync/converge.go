package lbsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// Server is one web instance as a backend should know it.
type Server struct {
	Name string         // the web instance, e.g. "web2"
	Addr netip.AddrPort // its nginx, e.g. 172.16.0.12:80
}

// DefaultDrainTimeout bounds how long a leaving server's sessions are
// waited for before they are shut down.
const DefaultDrainTimeout = 30 * time.Second

// pollEvery is how often a draining server's sessions are counted.
const pollEvery = 200 * time.Millisecond

// validName keeps names to what HAProxy accepts and what cannot smuggle a
// second argument or command into the runtime API.
func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s name", what)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return fmt.Errorf("%s name %q: only letters, digits, '_', '-' and '.' are allowed", what, s)
		}
	}
	return nil
}

// Add puts s into backend's rotation: added in maintenance with health
// checks, checks enabled, then set ready. A server already there at the
// same address is (re-)enabled; at another address it is removed first.
// Call it only once s's web instance is ready.
func (c *Client) Add(ctx context.Context, backend string, s Server, drainTimeout time.Duration) error {
	if err := firstErr(validName("backend", backend), validName("server", s.Name)); err != nil {
		return fmt.Errorf("add %s to %s of %s: %w", s.Name, backend, c.LB, err)
	}
	if !s.Addr.IsValid() {
		return fmt.Errorf("add %s to %s of %s: no address", s.Name, backend, c.LB)
	}
	list, err := c.Servers(ctx, backend)
	if err != nil {
		return fmt.Errorf("add %s: %w", s.Name, err)
	}
	ref := backend + "/" + s.Name
	if i := slices.IndexFunc(list, func(x ServerState) bool { return x.Name == s.Name }); i >= 0 {
		if list[i].Addr == s.Addr {
			if list[i].Maint() || list[i].Drain() {
				return c.enable(ctx, ref)
			}
			return nil
		}
		if err := c.Remove(ctx, backend, s.Name, drainTimeout); err != nil {
			return fmt.Errorf("re-address %s: %w", s.Name, err)
		}
	}
	if err := c.do(ctx, "add server "+ref+" "+s.Addr.String()+" "+CheckArgs, "New server registered"); err != nil {
		return err
	}
	return c.enable(ctx, ref)
}

func (c *Client) enable(ctx context.Context, ref string) error {
	if err := c.do(ctx, "enable health "+ref, ""); err != nil {
		return err
	}
	return c.do(ctx, "set server "+ref+" state ready", "")
}

// Remove takes server out of backend without cutting a request: drain (no
// new sessions), wait up to drainTimeout (0: DefaultDrainTimeout) for its
// sessions to end, maintenance, delete. Sessions still open at the timeout
// are shut down, and the error says so. A server not there is not an error.
func (c *Client) Remove(ctx context.Context, backend, server string, drainTimeout time.Duration) error {
	if err := firstErr(validName("backend", backend), validName("server", server)); err != nil {
		return fmt.Errorf("remove %s from %s of %s: %w", server, backend, c.LB, err)
	}
	if drainTimeout <= 0 {
		drainTimeout = DefaultDrainTimeout
	}
	list, err := c.Servers(ctx, backend)
	if err != nil {
		return fmt.Errorf("remove %s: %w", server, err)
	}
	i := slices.IndexFunc(list, func(x ServerState) bool { return x.Name == server })
	if i < 0 {
		return nil
	}
	ref := backend + "/" + server
	if !list[i].Maint() {
		if err := c.do(ctx, "set server "+ref+" state drain", ""); err != nil {
			return err
		}
	}
	left, err := c.waitIdle(ctx, backend, server, drainTimeout)
	if err != nil {
		return fmt.Errorf("remove %s: %w", server, err)
	}
	if err := c.do(ctx, "set server "+ref+" state maint", ""); err != nil {
		return err
	}
	var cut error
	if left > 0 {
		cut = fmt.Errorf("remove %s from %s of %s: %d sessions still open after %s were shut down", server, backend, c.LB, left, drainTimeout)
		if err := c.do(ctx, "shutdown sessions server "+ref, ""); err != nil {
			return errors.Join(cut, err)
		}
	}
	// A just-ended session may still be released; retry the delete briefly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.do(ctx, "del server "+ref, "Server deleted")
		if err == nil {
			return cut
		}
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Err != nil || time.Now().After(deadline) {
			return errors.Join(cut, err)
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return errors.Join(cut, fmt.Errorf("remove %s: %w (last refusal: %v)", server, err, ce))
		}
	}
}

// waitIdle waits until server has no current or queued session, or
// timeout; it returns the sessions left.
func (c *Client) waitIdle(ctx context.Context, backend, server string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		cur, queued, err := c.Sessions(ctx, backend, server)
		if err != nil {
			return 0, err
		}
		if cur+queued == 0 || time.Now().After(deadline) {
			return cur + queued, nil
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return cur + queued, fmt.Errorf("draining %s/%s (%d sessions): %w", backend, server, cur+queued, err)
		}
	}
}

// Changes are what a Converge did.
type Changes struct {
	Added   []string `json:"added,omitempty"`
	Enabled []string `json:"enabled,omitempty"` // were there, in maintenance or drain
	Removed []string `json:"removed,omitempty"`
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool { return len(c.Added)+len(c.Enabled)+len(c.Removed) == 0 }

// Converge makes backend hold exactly want, in rotation: missing servers
// are added, ones in maintenance or drain enabled, others removed (drained
// first). It keeps going past one server's failure; the error names each.
func (c *Client) Converge(ctx context.Context, log *slog.Logger, backend string, want []Server, drainTimeout time.Duration) (Changes, error) {
	var ch Changes
	list, err := c.Servers(ctx, backend)
	if err != nil {
		return ch, err
	}
	have := map[string]ServerState{}
	for _, s := range list {
		have[s.Name] = s
	}
	wanted := map[string]bool{}
	var errs []error
	for _, s := range want {
		wanted[s.Name] = true
		cur, ok := have[s.Name]
		if ok && cur.Addr == s.Addr && !cur.Maint() && !cur.Drain() {
			continue
		}
		if err := c.Add(ctx, backend, s, drainTimeout); err != nil {
			errs = append(errs, err)
			continue
		}
		if ok && cur.Addr == s.Addr {
			ch.Enabled = append(ch.Enabled, s.Name)
		} else {
			ch.Added = append(ch.Added, s.Name)
		}
	}
	for _, s := range list {
		if wanted[s.Name] {
			continue
		}
		if err := c.Remove(ctx, backend, s.Name, drainTimeout); err != nil {
			errs = append(errs, err)
			continue
		}
		ch.Removed = append(ch.Removed, s.Name)
	}
	if log != nil && !ch.Empty() {
		log.Info("lb backend updated", "lb", c.LB, "backend", backend, "added", ch.Added, "enabled", ch.Enabled, "removed", ch.Removed)
	}
	return ch, errors.Join(errs...)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
