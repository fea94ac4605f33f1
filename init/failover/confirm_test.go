package failover

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// followerTable is a member that does not lead but is in majority, with a
// table that may be stale.
type followerTable struct{ leaderTable }

func (f *followerTable) IsLeader() bool { return false }

// recordingRuntime records what a host started.
type recordingRuntime struct {
	mu      sync.Mutex
	started []string
}

func (r *recordingRuntime) Start(_ context.Context, inst string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = append(r.started, inst)
	return nil
}
func (r *recordingRuntime) Kill(context.Context, string) error { return nil }
func (r *recordingRuntime) Stop(context.Context, string) error { return nil }

// TestStaleTableStartsNothingTheLeaderDenies: dh1 hears the leader again
// after a partition but its table still gives it lb1; the leader (dh2,
// answering on the cluster RPC port) has moved lb1 to dh2 meanwhile. dh1
// must not start lb1 until its table agrees with the leader's.
func TestStaleTableStartsNothingTheLeaderDenies(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	// The leader dh2: everything moved to it.
	leader := &leaderTable{t: map[string]cluster.Ownership{"lb1": {Instance: "lb1", Owner: "dh2", Epoch: 3}}}
	_, port := leaderRPC(t, stack, leader)

	// dh1, stale: lb1 still its own at epoch 1.
	stale := &followerTable{leaderTable{t: map[string]cluster.Ownership{"lb1": {Instance: "lb1", Owner: "dh1", Epoch: 1}}}}
	c, rt := followerDH1(t, stack, stale, port)
	c.Step(context.Background())
	if len(rt.started) != 0 {
		t.Fatalf("dh1 started %v on a stale table the leader denies", rt.started)
	}

	// Caught up, and the leader gives lb1 back: now it starts.
	leader.t["lb1"] = cluster.Ownership{Instance: "lb1", Owner: "dh1", Epoch: 4}
	stale.t["lb1"] = cluster.Ownership{Instance: "lb1", Owner: "dh1", Epoch: 4}
	c.Step(context.Background())
	if len(rt.started) != 1 || rt.started[0] != "lb1" {
		t.Errorf("dh1 started %v once the leader confirmed lb1, want [lb1]", rt.started)
	}
}

// TestNoLeaderReachableStartsNothing: a follower that cannot ask the leader
// starts nothing (it retries at the next step).
func TestNoLeaderReachableStartsNothing(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close() // nothing answers there
	f := &followerTable{leaderTable{t: map[string]cluster.Ownership{"lb1": {Instance: "lb1", Owner: "dh1", Epoch: 1}}}}
	c, rt := followerDH1(t, stack, f, port)
	c.Step(context.Background())
	if len(rt.started) != 0 {
		t.Errorf("started %v without the leader's confirmation", rt.started)
	}
}

// followerDH1 is dh1's controller as a raft follower whose leader's cluster
// RPC answers on rpcPort of loopback.
func followerDH1(t *testing.T, stack *stackfile.Stack, table *followerTable, rpcPort string) (*Controller, *recordingRuntime) {
	t.Helper()
	rt := &recordingRuntime{}
	c, err := New(Config{Self: "dh1", Stack: stack, Cluster: table, Runtime: rt, Lease: time.Second,
		Peer:       func(string) heartbeat.State { return heartbeat.Alive },
		LeaderAddr: func() string { return "127.0.0.1:7700" }, Credentials: testCreds("dh1")})
	if err != nil {
		t.Fatal(err)
	}
	c.rpcPort, _ = strconv.Atoi(rpcPort)
	return c, rt
}

// A setting made on a follower is committed by the leader, reached on its
// cluster RPC port; with no leader to reach it is refused, not lost quietly.
func TestSettingForwardedToTheLeader(t *testing.T) {
	stack, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	leader := &leaderTable{t: map[string]cluster.Ownership{}}
	srv, port := leaderRPC(t, stack, leader)
	c, _ := followerDH1(t, stack, &followerTable{leaderTable{t: map[string]cluster.Ownership{}}}, port)
	ctx := context.Background()
	got, err := c.SubmitSetting(ctx, "maintenance/shop/www", "on", "127.0.0.1:7700")
	if err != nil || got.Value != "on" || leader.settings["maintenance/shop/www"] != "on" {
		t.Fatalf("forwarded setting: %+v %v, leader has %v", got, err, leader.settings)
	}
	if _, err := c.SubmitSetting(ctx, "maintenance/shop/www", "", ""); !errors.Is(err, cluster.ErrNotLeader) {
		t.Errorf("with no leader known: %v, want ErrNotLeader", err)
	}
	srv.Close()
	if _, err := c.SubmitSetting(ctx, "maintenance/shop/www", "", "127.0.0.1:7700"); err == nil {
		t.Error("a setting with the leader unreachable was reported done")
	}
}

// leaderRPC serves the cluster RPC of dh2 leading with table on loopback;
// it returns the server and its port.
func leaderRPC(t *testing.T, stack *stackfile.Stack, table *leaderTable) (*httptest.Server, string) {
	t.Helper()
	ctl, err := New(Config{Self: "dh2", Stack: stack, Cluster: table, Peer: func(string) heartbeat.State { return heartbeat.Alive },
		Credentials: testCreds("dh2")})
	if err != nil {
		t.Fatal(err)
	}
	return serveRPCTLS(t, ctl)
}

// serveRPCTLS serves ctl's cluster RPC as RPCServer configures it, on
// loopback; it returns the server and its port.
func serveRPCTLS(t *testing.T, ctl *Controller) (*httptest.Server, string) {
	t.Helper()
	conf, err := ctl.RPCServer()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(conf.Handler)
	srv.TLS = conf.TLSConfig
	srv.Config.ErrorLog = conf.ErrorLog
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, port
}
