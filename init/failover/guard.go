package failover

import (
	"context"
	"runtime/debug"
	"time"
)

// The loop's own passes can be held up for long: a start waits up to two
// minutes for its instance to be ready, a move waits a lease. The lease
// must bound how long a host runs what a peer may take over whatever the
// loop is doing, so a guard beside it kills this host's instances once the
// host has been out of the majority for stallSettle while a pass is held
// up (a free loop steps down by itself). Its passes are also what the
// hardware watchdog is kicked on: a PID 1 that cannot run them is reset.

// heldUp is how long a loop pass runs before the guard watches for it.
const heldUp = 200 * time.Millisecond

// guard runs the guard's passes until ctx ends.
func (c *Controller) guard(ctx context.Context) {
	t := time.NewTicker(c.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.guardPass(ctx, time.Now())
		}
	}
}

// GuardAlive is when the guard last ran a pass (zero before its first).
func (c *Controller) GuardAlive() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.guardAt
}

func (c *Controller) guardPass(ctx context.Context, now time.Time) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("failover: lease guard panicked; retrying next tick", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	c.mu.Lock()
	c.guardAt = now
	held := !c.stepBegan.IsZero() && now.Sub(c.stepBegan) > heldUp
	c.mu.Unlock()
	if c.cfg.Runtime == nil {
		return
	}
	if c.cfg.Cluster.InMajority() {
		c.mu.Lock()
		c.outSince = time.Time{}
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	if c.outSince.IsZero() {
		c.outSince = now
	}
	due := held && now.Sub(c.outSince) >= stallSettle
	var victims []string
	if due {
		for inst := range c.running {
			victims = append(victims, inst)
		}
		for inst := range c.starting {
			if !c.running[inst] {
				victims = append(victims, inst)
			}
		}
	}
	c.mu.Unlock()
	if len(victims) == 0 {
		return
	}
	c.setVIP(false)
	for _, inst := range victims {
		c.mu.Lock()
		if c.killing[inst] {
			c.mu.Unlock()
			continue
		}
		c.killing[inst] = true
		c.mu.Unlock()
		go func() {
			defer func() {
				c.mu.Lock()
				delete(c.killing, inst)
				c.mu.Unlock()
			}()
			kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c.stopOne(kctx, inst, stopping{why: "out of the majority while the loop is held up", kill: true})
		}()
	}
}
