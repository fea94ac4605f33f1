package failover

import (
	"context"
	"fmt"
	"net/http"

	"magestack/init/cluster"
)

// A follower's ownership table can be stale: a host cut off from the
// leader that hears it again gets raft's heartbeat (and so its majority
// back) before the log entries that moved its instances away. Acting on
// that table would start, for a moment, instances another host now runs.
// So a host that does not lead asks the leader for its table before it
// starts an instance, and starts it only if the leader names it owner at
// the same epoch.

// serveOwnership answers the leader's ownership table (GET /v1/ownership);
// a member that does not lead refuses, so that no stale table is trusted.
func (c *Controller) serveOwnership(w http.ResponseWriter, _ *http.Request) {
	if !c.cfg.Cluster.IsLeader() {
		writeJSON(w, http.StatusConflict, map[string]string{"error": cluster.ErrNotLeader.Error()})
		return
	}
	writeJSON(w, http.StatusOK, c.cfg.Cluster.Table())
}

// leaderTable fetches the leader's table over the cluster RPC port.
func (c *Controller) leaderTable(ctx context.Context) ([]cluster.Ownership, error) {
	if c.cfg.LeaderAddr == nil {
		return nil, fmt.Errorf("no leader address known")
	}
	host, err := leaderHost(c.cfg.LeaderAddr())
	if err != nil {
		return nil, err
	}
	var table []cluster.Ownership
	if err := c.callRPC(ctx, http.MethodGet, "", host, "/v1/ownership", nil, &table); err != nil {
		return nil, fmt.Errorf("asking the leader: %w", err)
	}
	return table, nil
}

// confirmedByLeader reports whether the leader's table names this host
// owner of inst at the epoch of local, this host's table.
func (c *Controller) confirmedByLeader(ctx context.Context, inst string, local []cluster.Ownership) error {
	if c.cfg.Cluster.IsLeader() || c.cfg.LeaderAddr == nil {
		return nil
	}
	var mine cluster.Ownership
	for _, o := range local {
		if o.Instance == inst {
			mine = o
		}
	}
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Lease)
	defer cancel()
	table, err := c.leaderTable(rctx)
	if err != nil {
		return err
	}
	for _, o := range table {
		if o.Instance == inst {
			if o.Owner == c.cfg.Self && o.Epoch == mine.Epoch {
				return nil
			}
			return fmt.Errorf("the leader's table has %s on %q at epoch %d, this host's %q at %d (catching up)", inst, o.Owner, o.Epoch, mine.Owner, mine.Epoch)
		}
	}
	return fmt.Errorf("the leader's table has no %s", inst)
}
