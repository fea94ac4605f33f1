package main

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
)

// rejoinAfter is how long a removed member's heartbeats must have been
// alive before the leader adds it back: a host still booting or flapping
// does not make the cluster change its voters every few seconds.
const rejoinAfter = 10 * time.Second

// rejoiner is what the rejoin loop needs of the cluster node.
type rejoiner interface {
	IsLeader() bool
	Voters() []string
	Rejoin(id, addr string) error
}

// rejoinLoop adds back, as voters, the stack's members that a forced or
// fence-confirmed recovery removed (RecoverAlone leaves this host the only
// voter), once their heartbeats say they are healthy: the pair then has a
// majority to fail over with again. Only the leader changes the voters; a
// returning host takes the leader's log, ownership table included, and so
// comes back as a standby.
func rejoinLoop(ctx context.Context, log *slog.Logger, node rejoiner, members []cluster.Member, peer func(id string) heartbeat.State, self string) {
	aliveSince := map[string]time.Time{}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rejoinPass(log, node, members, peer, self, aliveSince, time.Now())
	}
}

// rejoinPass is one look: who is missing from the voters, alive long
// enough, and so added back.
func rejoinPass(log *slog.Logger, node rejoiner, members []cluster.Member, peer func(id string) heartbeat.State, self string,
	aliveSince map[string]time.Time, now time.Time) {
	for _, m := range members {
		if m.ID == self || !m.Voter {
			continue
		}
		if peer(m.ID) != heartbeat.Alive {
			delete(aliveSince, m.ID)
			continue
		}
		if _, ok := aliveSince[m.ID]; !ok {
			aliveSince[m.ID] = now
		}
		if !node.IsLeader() || now.Sub(aliveSince[m.ID]) < rejoinAfter || slices.Contains(node.Voters(), m.ID) {
			continue
		}
		if err := node.Rejoin(m.ID, m.Addr); err != nil {
			log.Warn("cluster: a returning member could not be added back as a voter; trying again", "member", m.ID, "err", err)
			continue
		}
		log.Info("cluster: a returning member is a voter again", "member", m.ID, "voters", node.Voters())
	}
}
