package failover

import (
	"context"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"magestack/services"
)

// Start retries back off: a start that fails (an image missing, a volume
// the peer holds) is tried again after startRetryFirst, doubling up to
// startRetryMax, instead of on every tick with an error line each time.
const (
	startRetryFirst = time.Second
	startRetryMax   = 15 * time.Second
)

// inParallel runs do for every instance in list at once, each after the
// instances of list that waitFor names have finished (whether or not they
// succeeded), and returns when all have finished. A takeover then costs
// its longest chain (db, web, lb), not the sum of every start.
func inParallel(ctx context.Context, log *slog.Logger, list []string, waitFor func(string) []string, do func(context.Context, string)) {
	done := make(map[string]chan struct{}, len(list))
	for _, inst := range list {
		done[inst] = make(chan struct{})
	}
	var wg sync.WaitGroup
	for _, inst := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[inst])
			// PID 1 must outlive a bug in one start: the loop's own
			// recover does not reach this goroutine.
			defer func() {
				if r := recover(); r != nil {
					log.Error("failover: instance step panicked; retrying next tick", "instance", inst, "panic", r, "stack", string(debug.Stack()))
				}
			}()
			for _, dep := range waitFor(inst) {
				select {
				case <-done[dep]:
				case <-ctx.Done():
					return
				}
			}
			do(ctx, inst)
		}()
	}
	wg.Wait()
}

// startAfter names the instances of list that inst starts after: those of
// the roles its role needs ready first (services.Role.StartAfter: web after
// db, lb after web), unless this host already runs one of that role (lb
// need not wait for web1 while web2 serves here). Instances on another
// host are not waited for. An instance off the website's path
// (services.Role.OnSitePath) starts once the path's instances of list
// have: on a takeover the few CPUs go to the site first.
func startAfter(inst string, list []string, served map[string]bool) []string {
	var deps []string
	for _, other := range list {
		if other == inst {
			continue
		}
		if needs(inst, other) && !served[roleOf(other)] || !onSitePath(inst) && onSitePath(other) {
			deps = append(deps, other)
		}
	}
	return deps
}

// stopBefore names the instances of list stopped before inst: those that
// need it (lb before web, web before db), so nothing serves while what it
// depends on is already gone.
func stopBefore(inst string, list []string) []string {
	var deps []string
	for _, other := range list {
		if other != inst && needs(other, inst) {
			deps = append(deps, other)
		}
	}
	return deps
}

// needs reports whether inst's role starts after other's.
func needs(inst, other string) bool {
	def, _ := services.Lookup(roleOf(inst))
	return slices.Contains(def.StartAfter, roleOf(other))
}

func onSitePath(inst string) bool {
	def, _ := services.Lookup(roleOf(inst))
	return def.OnSitePath
}

// servedRoles are the roles of the instances this host runs.
func (c *Controller) servedRoles() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]bool{}
	for inst, on := range c.running {
		if on {
			out[roleOf(inst)] = true
		}
	}
	return out
}

// startOne starts one instance the committed table gives this host, once
// the leader confirms it; the VIP follows an lb the moment it is ready.
func (c *Controller) startOne(ctx context.Context, inst string) {
	if err := c.confirmedByLeader(ctx, inst, c.cfg.Cluster.Table()); err != nil {
		c.warnOnce(inst+"confirm", "failover: not starting an instance the leader has not confirmed; retrying", "instance", inst, "err", err)
		return
	}
	c.log.Info("failover: starting instance", "instance", inst)
	c.mu.Lock()
	c.starting[inst] = true
	c.mu.Unlock()
	err := c.cfg.Runtime.Start(ctx, inst)
	c.mu.Lock()
	delete(c.starting, inst)
	c.mu.Unlock()
	if err != nil {
		wait := c.startFailed(inst)
		c.log.Error("failover: start failed", "instance", inst, "err", err, "retry_in", wait.String())
		return
	}
	c.mu.Lock()
	c.running[inst] = true
	delete(c.retry, inst)
	c.mu.Unlock()
	if roleOf(inst) == "lb" {
		c.setVIP(true)
	}
}

// stopping says why instances stop, and whether without a grace period.
type stopping struct {
	why  string
	kill bool
}

// stopOne stops one instance this host no longer owns (or may no longer
// run).
func (c *Controller) stopOne(ctx context.Context, inst string, how stopping) {
	stop := c.cfg.Runtime.Stop
	if how.kill {
		stop = c.cfg.Runtime.Kill
	}
	c.log.Info("failover: stopping instance", "instance", inst, "why", how.why, "kill", how.kill)
	if err := stop(ctx, inst); err != nil {
		c.log.Error("failover: stop failed", "instance", inst, "err", err)
		return
	}
	c.mu.Lock()
	delete(c.running, inst)
	c.mu.Unlock()
}

// startRetry is the back-off state of an instance whose start failed.
type startRetry struct {
	wait time.Duration
	next time.Time
}

// startFailed notes a failed start and returns the wait before the next.
func (c *Controller) startFailed(inst string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.retry[inst]
	r.wait = min(max(2*r.wait, startRetryFirst), startRetryMax)
	r.next = time.Now().Add(r.wait)
	c.retry[inst] = r
	return r.wait
}

// backingOff reports whether inst's last start failed too recently to try
// again.
func (c *Controller) backingOff(inst string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.retry[inst]
	return ok && time.Now().Before(r.next)
}
