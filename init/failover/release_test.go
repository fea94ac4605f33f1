package failover

import (
	"context"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
)

// TestReleasedInstanceFinishesItsMove: a move whose leader lost the
// majority after releasing leaves instances without an owner. The next
// leader waits a lease (the last owner may still run them until then) and
// finishes the move to the pair of the host they were taken from, not back
// to their home host (no failback); with that pair dead, they go home.
func TestReleasedInstanceFinishesItsMove(t *testing.T) {
	tests := []struct {
		name    string
		deadDH1 bool
		want    string
	}{
		{"pair alive: the move is finished", false, "dh1"},
		{"pair dead: back to the releaser", true, "dh2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, lt := witnessLeader(t, nil, 0)
			c.cfg.Lease = 300 * time.Millisecond
			if tt.deadDH1 {
				c.cfg.Peer = func(id string) heartbeat.State {
					if id == "dh1" {
						return heartbeat.Dead
					}
					return heartbeat.Alive
				}
			}
			// mail1's home is dh2; a move from dh2 released it.
			lt.t["mail1"] = cluster.Ownership{Instance: "mail1", Epoch: 2, Reason: releasingFrom + "dh2"}
			c.Step(context.Background())
			if o := lt.t["mail1"]; o.Owner != "" {
				t.Fatalf("mail1 assigned to %s at once, while its last owner may still run it", o.Owner)
			}
			time.Sleep(c.cfg.Lease + 50*time.Millisecond)
			c.Step(context.Background())
			if o := lt.t["mail1"]; o.Owner != tt.want || o.Epoch != 3 {
				t.Errorf("after a lease mail1 = %+v, want owner %s at epoch 3", o, tt.want)
			}
		})
	}
}

// TestNewInstancePlacedAtOnce: a never-owned instance (epoch 0) has no
// previous owner to wait for.
func TestNewInstancePlacedAtOnce(t *testing.T) {
	c, lt := witnessLeader(t, nil, 0)
	c.cfg.Lease = time.Hour
	delete(lt.t, "mail1")
	c.Step(context.Background())
	if o := lt.t["mail1"]; o.Owner != "dh2" {
		t.Errorf("a new mail1 = %+v, want placed on its home dh2 at once", o)
	}
}
