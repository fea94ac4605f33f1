package reconcile

import (
	"context"
	"fmt"

	"magestack/init/configsource"
	"magestack/init/stackfile"
)

// SetOverlay makes every revision's stack pass through fn after it parses
// and before it is diffed and applied: local changes that outlive
// revisions (`magestack scale` overrides) stay in force. fn must return a
// valid stack (its input unchanged when it has nothing to add).
func (r *Reconciler) SetOverlay(fn func(*stackfile.Stack) *stackfile.Stack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.overlay = fn
}

func (r *Reconciler) overlayFunc() func(*stackfile.Stack) *stackfile.Stack {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.overlay
}

// ApplyStack moves the running stack to derive(running revision), a
// variant of it made on this host (a scale override), with the same order,
// appliers and rollback as Apply. derive runs under the apply lock, so no
// revision lands between reading the running one and applying the variant.
// The running revision stays the same and nothing is recorded in the
// store: the stack file did not change.
func (r *Reconciler) ApplyStack(ctx context.Context, derive func(rev configsource.Revision) (*stackfile.Stack, error)) (res Result, err error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	running, rev := r.Running()
	if running == nil {
		return res, fmt.Errorf("no running stack yet")
	}
	res.Revision = rev
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	next, err := derive(rev)
	if err != nil {
		return res, err
	}
	changes, err := stackfile.Diff(running, next)
	if err != nil {
		return res, err
	}
	res.Changes = changes
	if changes.Empty() {
		return res, nil
	}
	run := &runner{ctx: ctx, a: &r.apply, old: running, new: next, res: &res}
	if err := run.forward(&changes); err != nil {
		rbErr := run.rollback()
		cause := err
		if rbErr != nil {
			cause = fmt.Errorf("%w; rollback incomplete: %v", err, rbErr)
		}
		r.log.Error("local stack change failed to apply; rolled back", "err", err, "rollback_err", rbErr, "undone", len(res.RolledBack))
		return res, fmt.Errorf("failed to apply and was rolled back: %w", cause)
	}
	r.Adopt(next, rev)
	r.log.Info("local stack change applied", "changes", changes.String(), "actions", len(res.Applied))
	return res, nil
}
