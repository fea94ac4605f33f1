package main

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
)

type fakeVoters struct {
	leader  bool
	voters  []string
	fail    error
	rejoins []string
}

func (f *fakeVoters) IsLeader() bool   { return f.leader }
func (f *fakeVoters) Voters() []string { return f.voters }
func (f *fakeVoters) Rejoin(id, addr string) error {
	if f.fail != nil {
		return f.fail
	}
	f.rejoins = append(f.rejoins, id+"@"+addr)
	f.voters = append(f.voters, id)
	return nil
}

func TestRejoinAddsBackHealthyRemovedMembers(t *testing.T) {
	members := []cluster.Member{{ID: "dh1", Addr: "192.0.2.11:7700", Voter: true}, {ID: "dh2", Addr: "192.0.2.12:7700", Voter: true},
		{ID: "witness", Addr: "192.0.2.5:7700", Voter: true}}
	t0 := time.Date(2026, 12, 7, 21, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		node   fakeVoters
		alive  map[string]bool
		passes []time.Duration // when passes run, after t0
		want   []string
	}{
		{"alive long enough: added back", fakeVoters{leader: true, voters: []string{"dh2"}}, map[string]bool{"dh1": true},
			[]time.Duration{0, 5 * time.Second, rejoinAfter}, []string{"dh1@192.0.2.11:7700"}},
		{"not alive long enough yet", fakeVoters{leader: true, voters: []string{"dh2"}}, map[string]bool{"dh1": true},
			[]time.Duration{0, rejoinAfter - time.Second}, nil},
		{"dead: never", fakeVoters{leader: true, voters: []string{"dh2"}}, map[string]bool{},
			[]time.Duration{0, time.Minute}, nil},
		{"only the leader changes voters", fakeVoters{leader: false, voters: []string{"dh2"}}, map[string]bool{"dh1": true},
			[]time.Duration{0, time.Minute}, nil},
		{"already a voter", fakeVoters{leader: true, voters: []string{"dh1", "dh2", "witness"}}, map[string]bool{"dh1": true, "witness": true},
			[]time.Duration{0, time.Minute}, nil},
		{"the witness too, once each", fakeVoters{leader: true, voters: []string{"dh2"}}, map[string]bool{"dh1": true, "witness": true},
			[]time.Duration{0, rejoinAfter, 2 * rejoinAfter}, []string{"dh1@192.0.2.11:7700", "witness@192.0.2.5:7700"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			since := map[string]time.Time{}
			peer := func(id string) heartbeat.State {
				if tc.alive[id] {
					return heartbeat.Alive
				}
				return heartbeat.Dead
			}
			node := tc.node
			for _, at := range tc.passes {
				rejoinPass(slog.New(slog.NewTextHandler(io.Discard, nil)), &node, members, peer, "dh2", since, t0.Add(at))
			}
			if !slices.Equal(node.rejoins, tc.want) {
				t.Fatalf("rejoined %v, want %v", node.rejoins, tc.want)
			}
		})
	}
}

// A flap restarts the count: alive, dead, alive again is not "alive for
// rejoinAfter".
func TestRejoinWaitsForSteadyHeartbeats(t *testing.T) {
	members := []cluster.Member{{ID: "dh1", Addr: "192.0.2.11:7700", Voter: true}}
	node := &fakeVoters{leader: true, voters: []string{"dh2"}}
	since := map[string]time.Time{}
	t0 := time.Now()
	state := heartbeat.Alive
	peer := func(string) heartbeat.State { return state }
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rejoinPass(log, node, members, peer, "dh2", since, t0)
	state = heartbeat.Dead
	rejoinPass(log, node, members, peer, "dh2", since, t0.Add(rejoinAfter/2))
	state = heartbeat.Alive
	rejoinPass(log, node, members, peer, "dh2", since, t0.Add(rejoinAfter))
	if len(node.rejoins) != 0 {
		t.Fatalf("rejoined after a flap: %v", node.rejoins)
	}
	node.fail = errors.New("not the cluster leader")
	rejoinPass(log, node, members, peer, "dh2", since, t0.Add(2*rejoinAfter))
	node.fail = nil
	rejoinPass(log, node, members, peer, "dh2", since, t0.Add(2*rejoinAfter+time.Second))
	if len(node.rejoins) != 1 {
		t.Fatalf("rejoins after a failed try: %v", node.rejoins)
	}
}
