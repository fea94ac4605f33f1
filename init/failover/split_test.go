package failover

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// leaderTable is a Cluster whose member always leads: an ownership table
// with the FSM's compare-and-swap on epochs.
type leaderTable struct {
	mu       sync.Mutex
	t        map[string]cluster.Ownership
	settings map[string]string
}

func (l *leaderTable) Set(_ context.Context, key, value string) (cluster.Setting, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.settings == nil {
		l.settings = map[string]string{}
	}
	l.settings[key] = value
	return cluster.Setting{Key: key, Value: value}, nil
}

func (l *leaderTable) Setting(key string) (cluster.Setting, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.settings[key]
	return cluster.Setting{Key: key, Value: v}, v != "" // cleared is unset, as in the FSM
}

func (l *leaderTable) IsLeader() bool   { return true }
func (l *leaderTable) InMajority() bool { return true }
func (l *leaderTable) RecoverAlone() error {
	return errors.New("not in this test")
}
func (l *leaderTable) Voters() []string                { return []string{"dh1", "dh2", "witness"} }
func (l *leaderTable) TransferLeadership(string) error { return cluster.ErrNotLeader }
func (l *leaderTable) Table() []cluster.Ownership {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []cluster.Ownership
	for _, o := range l.t {
		out = append(out, o)
	}
	return out
}
func (l *leaderTable) Assign(_ context.Context, inst, owner string, expect uint64, reason string) (cluster.Ownership, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur := l.t[inst]
	if cur.Epoch != expect {
		return cluster.Ownership{}, &cluster.ErrStale{Instance: inst, Expect: expect, Current: cur.Epoch}
	}
	o := cluster.Ownership{Instance: inst, Owner: owner, Epoch: cur.Epoch + 1, Reason: reason}
	l.t[inst] = o
	return o, nil
}

func (l *leaderTable) owners() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for _, o := range l.t {
		out[o.Owner]++
	}
	return out
}

// witnessLeader is the witness leading a pair whose instances are placed
// (lb1 on dh1): its own heartbeats hear both hosts; views are what the
// hosts answer about each other.
func witnessLeader(t *testing.T, views map[string]PairView, viewAge time.Duration) (*Controller, *leaderTable) {
	t.Helper()
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	lt := &leaderTable{t: map[string]cluster.Ownership{}}
	insts, _ := stack.Instances()
	for _, in := range insts {
		lt.t[in.Name] = cluster.Ownership{Instance: in.Name, Owner: in.Host, Epoch: 1}
	}
	c, err := New(Config{Self: "witness", Stack: stack, Cluster: lt, HoldDown: time.Hour, Lease: time.Millisecond,
		Peer: func(string) heartbeat.State { return heartbeat.Alive }})
	if err != nil {
		t.Fatal(err)
	}
	c.split.views = map[string]seenView{}
	for h, v := range views {
		c.split.views[h] = seenView{PairView: v, at: time.Now().Add(-viewAge)}
	}
	return c, lt
}

func TestPairSplitSeenByWitnessLeader(t *testing.T) {
	dead := func(h, p string) PairView { return PairView{Host: h, Peer: p, State: heartbeat.Dead} }
	alive := func(h, p string) PairView { return PairView{Host: h, Peer: p, State: heartbeat.Alive} }
	tests := []struct {
		name    string
		views   map[string]PairView
		age     time.Duration
		want    map[string]int // owner → instances after one step
		failovs int
	}{
		{"both hosts hear each other", map[string]PairView{"dh1": alive("dh1", "dh2"), "dh2": alive("dh2", "dh1")}, 0,
			map[string]int{"dh1": 5, "dh2": 3}, 0},
		{"both cut off from each other: the lb holder takes everything", map[string]PairView{"dh1": dead("dh1", "dh2"), "dh2": dead("dh2", "dh1")}, 0,
			map[string]int{"dh1": 8}, 1},
		{"only dh2 says so: still dh1, the lb holder", map[string]PairView{"dh2": dead("dh2", "dh1")}, 0,
			map[string]int{"dh1": 8}, 1},
		{"stale views do not count", map[string]PairView{"dh1": dead("dh1", "dh2"), "dh2": dead("dh2", "dh1")}, 5 * pairViewEvery,
			map[string]int{"dh1": 5, "dh2": 3}, 0},
		{"suspect is not dead", map[string]PairView{"dh1": {Host: "dh1", Peer: "dh2", State: heartbeat.Suspect}}, 0,
			map[string]int{"dh1": 5, "dh2": 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, lt := witnessLeader(t, tt.views, tt.age)
			c.Step(context.Background())
			got := lt.owners()
			if len(got) != len(tt.want) {
				t.Fatalf("owners after the step: %v, want %v", got, tt.want)
			}
			for h, n := range tt.want {
				if got[h] != n {
					t.Errorf("owners after the step: %v, want %v", got, tt.want)
				}
			}
			if f := c.Status().Failovers; len(f) != tt.failovs {
				t.Errorf("failovers recorded: %+v, want %d", f, tt.failovs)
			}
			// A second step changes nothing more: the loser owns nothing.
			c.Step(context.Background())
			if f := c.Status().Failovers; len(f) != tt.failovs {
				t.Errorf("after a second step: %d failovers, want %d", len(f), tt.failovs)
			}
		})
	}
}

// TestPairSplitNotWhenLeaderSeesAHostDead: a host dead to the leader too is
// the ordinary takeover, towards the living host, whatever the lb rule says.
func TestPairSplitNotWhenLeaderSeesAHostDead(t *testing.T) {
	c, lt := witnessLeader(t, map[string]PairView{"dh2": {Host: "dh2", Peer: "dh1", State: heartbeat.Dead}}, 0)
	c.cfg.Peer = func(id string) heartbeat.State {
		if id == "dh1" {
			return heartbeat.Dead
		}
		return heartbeat.Alive
	}
	c.Step(context.Background())
	if got := lt.owners(); got["dh2"] != 8 {
		t.Errorf("owners: %v, want everything on dh2 (dh1 is dead to the leader)", got)
	}
}

func TestSplitWinner(t *testing.T) {
	own := func(insts ...string) []cluster.Ownership {
		var out []cluster.Ownership
		for _, i := range insts {
			out = append(out, cluster.Ownership{Instance: i})
		}
		return out
	}
	tests := []struct {
		name   string
		byHost map[string][]cluster.Ownership
		want   string
	}{
		{"lb holder", map[string][]cluster.Ownership{"a": own("web1", "db1"), "b": own("lb1")}, "b"},
		{"more instances", map[string][]cluster.Ownership{"a": own("web1"), "b": own("db1", "mail1")}, "b"},
		{"tie: first by name", map[string][]cluster.Ownership{"a": own("web1"), "b": own("db1")}, "a"},
		{"nothing anywhere", map[string][]cluster.Ownership{}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, l := splitWinner("a", "b", tt.byHost)
			if w != tt.want || l == w {
				t.Errorf("winner %s loser %s, want winner %s", w, l, tt.want)
			}
		})
	}
}

// TestPairViewOverRPC: a host answers GET /v1/pair with its heartbeats'
// verdict on its pair peer.
func TestPairViewOverRPC(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Self: "dh1", Stack: stack, Cluster: &leaderTable{t: map[string]cluster.Ownership{}},
		Peer: func(id string) heartbeat.State {
			if id == "dh2" {
				return heartbeat.Dead
			}
			return heartbeat.Alive
		}, Credentials: testCreds("dh1")})
	if err != nil {
		t.Fatal(err)
	}
	_, port := serveRPCTLS(t, c)
	asker, err := New(Config{Self: "witness", Stack: stack, Cluster: &leaderTable{t: map[string]cluster.Ownership{}},
		Peer: func(string) heartbeat.State { return heartbeat.Alive }, Credentials: testCreds("witness")})
	if err != nil {
		t.Fatal(err)
	}
	asker.rpcPort, _ = strconv.Atoi(port)
	var v PairView
	if err := asker.callRPC(context.Background(), http.MethodGet, "dh1", "127.0.0.1", "/v1/pair", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v != (PairView{Host: "dh1", Peer: "dh2", State: heartbeat.Dead}) {
		t.Errorf("GET /v1/pair = %+v", v)
	}
	// Only dh1 may answer for dh1.
	if err := asker.callRPC(context.Background(), http.MethodGet, "dh2", "127.0.0.1", "/v1/pair", nil, &v); err == nil {
		t.Error("dh1 answered a call meant for dh2")
	}
}

// The hold-down outlives a change of leader: a move is recorded as a
// cluster setting, and a leader that did not make it still holds off
// moving the same host again until the hold-down has passed.
func TestHoldDownRecordedForTheNextLeader(t *testing.T) {
	split := map[string]PairView{
		"dh1": {Host: "dh1", Peer: "dh2", State: heartbeat.Dead},
		"dh2": {Host: "dh2", Peer: "dh1", State: heartbeat.Dead},
	}
	// One leader moves dh2's instances and records when.
	c, lt := witnessLeader(t, split, 0)
	c.Step(context.Background())
	if got := lt.owners(); got["dh1"] != 8 {
		t.Fatalf("owners after the split: %v, want all on dh1", got)
	}
	recorded, err := time.Parse(time.RFC3339Nano, lt.settings[lastMoveKey+"dh2"])
	if err != nil || time.Since(recorded) > time.Minute {
		t.Fatalf("move not recorded for the next leader: %v (%v)", lt.settings, err)
	}
	for _, tt := range []struct {
		name     string
		lastMove time.Time
		moved    bool
	}{
		{"moved a minute ago by another leader: held down", time.Now().Add(-time.Minute), false},
		{"moved two hours ago: moves again", time.Now().Add(-2 * time.Hour), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			next, lt := witnessLeader(t, split, 0)
			lt.settings = map[string]string{lastMoveKey + "dh2": tt.lastMove.Format(time.RFC3339Nano)}
			next.Step(context.Background())
			if moved := lt.owners()["dh2"] == 0; moved != tt.moved {
				t.Errorf("dh2's instances moved: %v, want %v (owners %v)", moved, tt.moved, lt.owners())
			}
		})
	}
}

// A revision that adds and removes instances reaches the leader as the
// cluster's instance list: it places the new ones where the stack file
// says and releases the removed ones, and never places those again.
func TestLeaderFollowsTheClusterInstanceList(t *testing.T) {
	c, lt := witnessLeader(t, nil, 0)
	value, err := InstancesValue(c.cfg.Stack)
	if err != nil {
		t.Fatal(err)
	}
	var list []PlacedInstance
	json.Unmarshal([]byte(value), &list)
	list = slices.DeleteFunc(list, func(p PlacedInstance) bool { return p.Name == "mail1" })
	list = append(list, PlacedInstance{Name: "web3", Host: "dh2"})
	b, _ := json.Marshal(list)
	lt.settings = map[string]string{InstancesKey: string(b)}
	for range 2 {
		c.Step(context.Background())
	}
	lt.mu.Lock()
	web3, mail1 := lt.t["web3"], lt.t["mail1"]
	lt.mu.Unlock()
	if web3.Owner != "dh2" || web3.Reason != "placement" {
		t.Errorf("new web3: %+v, want placed on dh2", web3)
	}
	if mail1.Owner != "" || mail1.Reason != removedFromStack {
		t.Errorf("removed mail1: %+v, want released as %q", mail1, removedFromStack)
	}
	// An unreadable list is reported and the boot stack's instances are
	// placed: nothing listed before is released for it.
	lt.settings = map[string]string{InstancesKey: "{"}
	if insts, fromCluster, err := c.instances(); err != nil || fromCluster || len(insts) == 0 {
		t.Errorf("unreadable list: %d instances, from cluster %v, %v", len(insts), fromCluster, err)
	}
}
