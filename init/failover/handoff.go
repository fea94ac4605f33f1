package failover

import (
	"slices"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
)

// handOffEvery spaces the witness's offers of leadership to a host.
const handOffEvery = 5 * time.Second

// handOff gives the cluster's leadership to a host whenever the witness
// holds it. The hosts of a pair hear each other over their pair link: with
// one of them leading, the pair keeps its majority (2 of 3 voters) whatever
// the witness's path does, and a lossy LAN to the witness costs nothing. A
// witness leader that loses one host's path instead takes that host out of
// the majority, which stops its instances though its peer hears it well.
// The witness still leads while no host can (one lost, the other moving
// its instances), and takes no part once a host leads.
func (c *Controller) handOff(table []cluster.Ownership, now time.Time) {
	if c.cfg.Self != witnessID || now.Before(c.nextHandOff) {
		return
	}
	c.mu.Lock()
	moving := len(c.moving) > 0
	c.mu.Unlock()
	if moving {
		return
	}
	to := c.handOffTarget(table)
	if to == "" {
		return
	}
	c.nextHandOff = now.Add(handOffEvery)
	if err := c.cfg.Cluster.TransferLeadership(to); err != nil {
		c.warnOnce("handoff", "failover: the witness could not hand the cluster's leadership to a host; leading meanwhile", "to", to, "err", err)
		return
	}
	c.log.Info("failover: the witness handed the cluster's leadership to a host", "to", to)
}

// handOffTarget is the host to lead: the one running the website's lb
// instance (in a pair split, the leader's side keeps running, and that is
// the side resolveSplits would pick), else the first voter host whose
// heartbeats are steady; "" when no host is.
func (c *Controller) handOffTarget(table []cluster.Ownership) string {
	voters := c.cfg.Cluster.Voters() // a round trip to raft's loop: once
	steady := func(h string) bool {
		return h != witnessID && slices.Contains(voters, h) && c.cfg.Peer(h) == heartbeat.Alive
	}
	for _, o := range table {
		if roleOf(o.Instance) == "lb" && steady(o.Owner) {
			return o.Owner
		}
	}
	for _, h := range c.cfg.Stack.Hosts {
		if steady(h.Name) {
			return h.Name
		}
	}
	return ""
}
