// Package reconcile moves a running stack from one stack file revision to
// the next by applying only what differs (stackfile.Diff), through
// callbacks other packages provide (roles, firewall, VPN). When any step
// fails, the steps already taken are undone in reverse order so the last
// good revision keeps running, and the revision is recorded as rejected.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/stackfile"
)

// Appliers are the callbacks that change the running system, one per kind
// of change. Every callback must be idempotent (a rollback may repeat or
// undo a half-done call) and should honour ctx. A nil callback means that
// kind of change is not wired yet: it is skipped and reported in
// Result.Skipped.
type Appliers struct {
	// StopInstance stops a role instance and removes its environment.
	StopInstance func(ctx context.Context, inst stackfile.Instance) error
	// StartInstance creates and starts a role instance as stack s describes.
	StartInstance func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error
	// UpdateInstance applies a change that needs no new environment
	// (cgroup limits, service settings, users) to a running instance. When
	// nil, such changes recreate the instance (stop, start).
	UpdateInstance func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error
	// Firewall replaces the ruleset with the one stack s asks for, as one
	// atomic batch.
	Firewall func(ctx context.Context, s *stackfile.Stack) error
	// Allow adds and removes public allow-list entries incrementally.
	Allow func(ctx context.Context, add, remove []netip.Prefix) error
	// VPN brings WireGuard peers and keys to what stack s describes.
	VPN func(ctx context.Context, s *stackfile.Stack, c *stackfile.Changes) error
	// Cluster applies host, pair, witness and failure-detection changes.
	Cluster func(ctx context.Context, s *stackfile.Stack, c *stackfile.Changes) error
	// Instances, when set, brings the set of instances to the one stack s
	// lists in one step, in place of StopInstance and StartInstance for
	// instances removed and added (a pair, where the cluster decides which
	// host runs each).
	Instances func(ctx context.Context, s *stackfile.Stack) error
}

// Result describes one reconcile.
type Result struct {
	Revision configsource.Revision
	Changes  stackfile.Changes
	// Applied lists the actions taken, in order, e.g. "start web2".
	Applied []string
	// Skipped lists changes left undone because no applier is wired.
	Skipped []string
	// RolledBack lists the undo actions run after a failure.
	RolledBack []string
}

// Reconciler owns the running stack. Its methods are safe for concurrent
// use; applies are serialised.
type Reconciler struct {
	log     *slog.Logger
	store   *configstore.Store
	apply   Appliers
	timeout time.Duration

	applyMu sync.Mutex // serialises applies (held for a whole apply)

	mu         sync.Mutex // guards running, runningRev, overlay (held briefly)
	running    *stackfile.Stack
	runningRev configsource.Revision
	overlay    func(*stackfile.Stack) *stackfile.Stack // SetOverlay
}

// DefaultTimeout bounds one revision's apply, rollback included.
const DefaultTimeout = 5 * time.Minute

// New returns a Reconciler with nothing running. store may be nil (no
// history is kept).
func New(log *slog.Logger, store *configstore.Store, apply Appliers) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{log: log, store: store, apply: apply, timeout: DefaultTimeout}
}

// Running returns the running stack and its revision (nil before the first
// apply).
func (r *Reconciler) Running() (*stackfile.Stack, configsource.Revision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running, r.runningRev
}

// Adopt declares s (revision rev) as already running, e.g. when the boot
// sequence brought it up by itself; later applies diff against it.
func (r *Reconciler) Adopt(s *stackfile.Stack, rev configsource.Revision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running, r.runningRev = s, rev
}

// Booted adopts the stack the boot sequence brought up (Adopt) and records
// its revision as applied, so it becomes the last good one: call it once
// every role is healthy. A later reboot without the repository then comes
// up with this revision.
func (r *Reconciler) Booted(s *stackfile.Stack, rev configsource.Revision) error {
	r.Adopt(s, rev)
	if r.store == nil {
		return nil
	}
	if last, err := r.store.LastGood(); err == nil && last.ID == rev.ID {
		return nil // booted from the last good revision: nothing new to record
	}
	return r.store.MarkApplied(rev)
}

// fileName names a revision in error messages: the source's file name.
func fileName(rev configsource.Revision) string {
	if src, err := configsource.Parse(rev.Source); err == nil {
		switch src.Kind {
		case configsource.KindGit:
			return src.File
		case configsource.KindPath:
			return path.Base(src.Path)
		case configsource.KindHTTP:
			return path.Base(src.URL)
		}
	}
	return "stack.yaml"
}

// Apply validates rev and applies the difference from the running stack.
// An invalid revision, or one whose apply fails (after rolling back what was
// done), is recorded as rejected and returned as an error; the running
// stack is then unchanged.
func (r *Reconciler) Apply(ctx context.Context, rev configsource.Revision) (res Result, err error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	running, runningRev := r.Running()
	res.Revision = rev
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()

	next, err := stackfile.Parse(fileName(rev), rev.Data)
	if err != nil {
		r.log.Error("config revision rejected; the running stack is unchanged", "revision", short(rev.ID), "err", err)
		r.reject(rev, err)
		return res, fmt.Errorf("revision %s rejected: %w", short(rev.ID), err)
	}
	if ov := r.overlayFunc(); ov != nil {
		next = ov(next)
	}
	changes, err := stackfile.Diff(running, next)
	if err != nil {
		r.reject(rev, err)
		return res, fmt.Errorf("revision %s rejected: %w", short(rev.ID), err)
	}
	res.Changes = changes
	if rev.ID == runningRev.ID && changes.Empty() {
		return res, nil // already running (a poll and a manual apply raced)
	}
	prev := running
	if prev == nil {
		prev = &stackfile.Stack{}
	}
	run := &runner{ctx: ctx, a: &r.apply, old: prev, new: next, res: &res, fresh: running == nil}
	if err := run.forward(&changes); err != nil {
		rbErr := run.rollback()
		cause := err
		if rbErr != nil {
			cause = fmt.Errorf("%w; rollback incomplete: %v", err, rbErr)
		}
		r.reject(rev, cause)
		r.log.Error("config revision failed to apply; rolled back", "revision", short(rev.ID), "err", err, "rollback_err", rbErr, "undone", len(res.RolledBack))
		var pe *PanicError
		if errors.As(err, &pe) {
			r.log.Error("applier panicked", "stack", string(pe.Stack))
		}
		return res, fmt.Errorf("revision %s failed to apply and was rolled back: %w", short(rev.ID), cause)
	}
	r.Adopt(next, rev)
	note := ""
	if len(res.Skipped) > 0 {
		// Honest record: the revision is in force, but these changes wait
		// for their applier.
		note = "not applied (no applier wired): " + join(res.Skipped)
		r.log.Warn("config revision applied with changes left undone", "revision", short(rev.ID), "skipped", join(res.Skipped))
	}
	if r.store != nil {
		if err := r.store.MarkAppliedNote(rev, note); err != nil {
			// The stack runs the new revision; only the record failed.
			r.log.Error("config store: cannot record applied revision", "revision", short(rev.ID), "err", err)
		}
	}
	r.log.Info("config revision applied", "revision", short(rev.ID), "actions", len(res.Applied), "skipped", len(res.Skipped))
	return res, nil
}

func (r *Reconciler) reject(rev configsource.Revision, cause error) {
	if r.store == nil {
		return
	}
	if err := r.store.MarkRejected(rev, cause); err != nil {
		r.log.Error("config store: cannot record rejected revision", "revision", short(rev.ID), "err", err)
	}
}

// Rollback re-applies a stored revision (configstore.Store.Revision) as the
// running one: `magestack config rollback REV` on a live host.
func (r *Reconciler) Rollback(ctx context.Context, id string) (Result, error) {
	if r.store == nil {
		return Result{}, errors.New("no config store")
	}
	rev, err := r.store.Revision(id)
	if err != nil {
		return Result{}, err
	}
	return r.Apply(ctx, rev)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// runner applies one revision's changes, journaling an undo for each step.
type runner struct {
	ctx      context.Context
	a        *Appliers
	old, new *stackfile.Stack
	res      *Result
	undo     []action
	// fresh is true when nothing ran before: there is no old ruleset, VPN
	// or cluster setting to restore, only started instances to stop.
	fresh bool
}

// restore is the undo of a whole-state applier: re-apply the old state,
// or nothing when there was none.
func (run *runner) restore(name string, do func(ctx context.Context) error) action {
	if run.fresh {
		return action{name + " (nothing to restore)", func(context.Context) error { return nil }}
	}
	return action{name, do}
}

type action struct {
	name string
	do   func(ctx context.Context) error
}

// step runs one action; its inverse is journaled before it runs, so a
// half-done action is undone too (appliers are idempotent).
func (run *runner) step(name string, do func(ctx context.Context) error, inverse action) error {
	run.undo = append(run.undo, inverse)
	if err := safely(run.ctx, do); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	run.res.Applied = append(run.res.Applied, name)
	return nil
}

// PanicError is an applier's panic turned into an error; Stack is logged,
// Error() stays one line for status and history.
type PanicError struct {
	Value any
	Stack []byte
}

func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v", p.Value) }

// safely turns an applier's panic into an error: PID 1 must not die.
func safely(ctx context.Context, do func(ctx context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return do(ctx)
}

func (run *runner) skip(what string) { run.res.Skipped = append(run.res.Skipped, what) }

// forward applies the changes in an order that keeps the stack consistent:
// stop what goes, then the firewall and allow-list, VPN, cluster settings,
// then start what comes and update what changed.
func (run *runner) forward(c *stackfile.Changes) error {
	a, old, new := run.a, run.old, run.new
	// With an Instances applier, removed and added instances are one step
	// (below), not single stops and starts.
	removed, added := c.Removed, c.Added
	if a.Instances != nil {
		removed, added = nil, nil
	}
	for _, inst := range removed {
		if a.StopInstance == nil || a.StartInstance == nil {
			run.skip("stop " + inst.Name)
			continue
		}
		if err := run.step("stop "+inst.Name,
			func(ctx context.Context) error { return a.StopInstance(ctx, inst) },
			action{"start " + inst.Name, func(ctx context.Context) error { return a.StartInstance(ctx, old, inst) }}); err != nil {
			return err
		}
	}
	// Recreated instances go down before the ruleset changes under them.
	var recreate []stackfile.InstanceChange
	var update []stackfile.InstanceChange
	for _, ch := range c.Changed {
		if ch.Recreate || a.UpdateInstance == nil {
			recreate = append(recreate, ch)
		} else {
			update = append(update, ch)
		}
	}
	for _, ch := range recreate {
		if a.StopInstance == nil || a.StartInstance == nil {
			run.skip("recreate " + ch.New.Name)
			continue
		}
		if err := run.step("stop "+ch.Old.Name,
			func(ctx context.Context) error { return a.StopInstance(ctx, ch.Old) },
			action{"start " + ch.Old.Name, func(ctx context.Context) error { return a.StartInstance(ctx, old, ch.Old) }}); err != nil {
			return err
		}
	}
	if len(c.Firewall) > 0 {
		if a.Firewall == nil {
			run.skip("firewall")
		} else if err := run.step("firewall",
			func(ctx context.Context) error { return a.Firewall(ctx, new) },
			run.restore("firewall", func(ctx context.Context) error { return a.Firewall(ctx, old) })); err != nil {
			return err
		}
	}
	if len(c.AllowAdded) > 0 || len(c.AllowRemoved) > 0 {
		if a.Allow == nil {
			run.skip("allow-list")
		} else if err := run.step("allow-list",
			func(ctx context.Context) error { return a.Allow(ctx, c.AllowAdded, c.AllowRemoved) },
			action{"allow-list", func(ctx context.Context) error { return a.Allow(ctx, c.AllowRemoved, c.AllowAdded) }}); err != nil {
			return err
		}
	}
	if len(c.PeersAdded) > 0 || len(c.PeersRemoved) > 0 || len(c.PeersChanged) > 0 || c.VPNKey || slicesHas(c.Firewall, "vpn.port", "vpn.subnet") {
		if a.VPN == nil {
			run.skip("vpn")
		} else {
			back, _ := stackfile.Diff(new, old)
			if err := run.step("vpn",
				func(ctx context.Context) error { return a.VPN(ctx, new, c) },
				run.restore("vpn", func(ctx context.Context) error { return a.VPN(ctx, old, &back) })); err != nil {
				return err
			}
		}
	}
	if len(c.HostsAdded) > 0 || len(c.HostsRemoved) > 0 || len(c.HostsChanged) > 0 || len(c.Cluster) > 0 {
		if a.Cluster == nil {
			run.skip("cluster")
		} else {
			back, _ := stackfile.Diff(new, old)
			if err := run.step("cluster",
				func(ctx context.Context) error { return a.Cluster(ctx, new, c) },
				run.restore("cluster", func(ctx context.Context) error { return a.Cluster(ctx, old, &back) })); err != nil {
				return err
			}
		}
	}
	for _, ch := range recreate {
		if a.StopInstance == nil || a.StartInstance == nil {
			continue
		}
		if err := run.step("start "+ch.New.Name,
			func(ctx context.Context) error { return a.StartInstance(ctx, new, ch.New) },
			action{"stop " + ch.New.Name, func(ctx context.Context) error { return a.StopInstance(ctx, ch.New) }}); err != nil {
			return err
		}
	}
	if a.Instances != nil && (len(c.Added) > 0 || len(c.Removed) > 0) {
		name := "instances" + instanceDelta(c)
		if err := run.step(name,
			func(ctx context.Context) error { return a.Instances(ctx, new) },
			run.restore("instances as before", func(ctx context.Context) error { return a.Instances(ctx, old) })); err != nil {
			return err
		}
	}
	for _, inst := range added {
		if a.StopInstance == nil || a.StartInstance == nil {
			run.skip("start " + inst.Name)
			continue
		}
		if err := run.step("start "+inst.Name,
			func(ctx context.Context) error { return a.StartInstance(ctx, new, inst) },
			action{"stop " + inst.Name, func(ctx context.Context) error { return a.StopInstance(ctx, inst) }}); err != nil {
			return err
		}
	}
	for _, ch := range update {
		back := stackfile.InstanceChange{Old: ch.New, New: ch.Old, Fields: ch.Fields}
		if err := run.step("update "+ch.New.Name+" ("+join(ch.Fields)+")",
			func(ctx context.Context) error { return a.UpdateInstance(ctx, new, ch) },
			action{"update " + ch.Old.Name, func(ctx context.Context) error { return a.UpdateInstance(ctx, old, back) }}); err != nil {
			return err
		}
	}
	return nil
}

// rollback runs the journaled undo actions in reverse order. It keeps going
// past failures (each is reported) so as much as possible is restored. The
// context is fresh: the apply may have failed because its own ran out.
func (run *runner) rollback() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(run.ctx), DefaultTimeout)
	defer cancel()
	var errs []error
	for i := len(run.undo) - 1; i >= 0; i-- {
		u := run.undo[i]
		if err := safely(ctx, u.do); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", u.name, err))
			continue
		}
		run.res.RolledBack = append(run.res.RolledBack, u.name)
	}
	return errors.Join(errs...)
}

// instanceDelta names the instances c adds and removes, e.g. " +web2 -web3".
func instanceDelta(c *stackfile.Changes) string {
	var b strings.Builder
	for _, in := range c.Added {
		b.WriteString(" +" + in.Name)
	}
	for _, in := range c.Removed {
		b.WriteString(" -" + in.Name)
	}
	return b.String()
}

func slicesHas(list []string, any ...string) bool {
	for _, l := range list {
		for _, a := range any {
			if l == a {
				return true
			}
		}
	}
	return false
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// BuiltinRevision is the embedded default stack as a revision.
func BuiltinRevision() configsource.Revision {
	data := stackfile.DefaultYAML()
	h := sha256.Sum256(data)
	return configsource.Revision{ID: hex.EncodeToString(h[:]), Data: data, Source: "builtin:default.yaml"}
}

// Watcher polls source and applies each new revision. Its first report is
// skipped when the revision is the one already running. Call Poke for
// `magestack config apply`, Retry to re-apply an unchanged revision.
// Applies stop when ctx ends (shutdown); run the watcher with the same ctx.
func (r *Reconciler) Watcher(ctx context.Context, f *configsource.Fetcher, source string, interval time.Duration) *configsource.Watcher {
	_, running := r.Running()
	return f.NewWatcher(source, interval, running.ID, func(rev configsource.Revision) {
		// Apply logs and records failures; the watcher just keeps polling.
		r.Apply(ctx, rev)
	})
}
