package cluster

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"magestack/init/clusterauth"
	"magestack/init/stacksecret"
)

// testSecret is the stack secret of every test cluster in this package.
var testSecret = func() stacksecret.Secret {
	s, err := stacksecret.New()
	if err != nil {
		panic(err)
	}
	return s
}()

// memberIDs lists cfg's members.
func memberIDs(cfg Config) []string {
	var ids []string
	for _, m := range cfg.Members {
		ids = append(ids, m.ID)
	}
	return ids
}

// withTLS gives cfg its member's credentials of the test stack.
func withTLS(cfg Config) Config {
	return withTLSOf(testSecret, cfg.ID, cfg)
}

func withTLSOf(s stacksecret.Secret, as string, cfg Config) Config {
	c, err := clusterauth.Derive(s, as)
	if err != nil {
		panic(err)
	}
	cfg.ServerTLS = c.ServerConfig(memberIDs(cfg))
	cfg.ClientTLS = c.ClientConfig(memberIDs(cfg), "")
	return cfg
}

// lockedBuffer collects a node's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// attacker is a raft transport that dials the members the way an intruder
// would: plain TCP, or TLS with credentials that are not the stack's.
func attacker(t *testing.T, creds *clusterauth.Credentials, members []string) raft.Transport {
	t.Helper()
	if creds == nil {
		tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	s, err := newTLSStream("127.0.0.1:0", nil, creds.ServerConfig(members), creds.ClientConfig(members, ""), &clusterauth.RefusalLog{})
	if err != nil {
		t.Fatal(err)
	}
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: s, MaxPool: 1, Timeout: time.Second,
		Logger: nil})
	t.Cleanup(func() { tr.Close() })
	return tr
}

// TestRaftRefusesNonMembers is the attack on the raft port: a
// RequestVote with a huge term (which, accepted, left the cluster without a
// leader) and an AppendEntries claiming leadership, sent by a process
// without credentials, with another stack's, and with a certificate of
// this stack's CA for a name that is not a member. None reaches raft: the
// term and the leader stay.
func TestRaftRefusesNonMembers(t *testing.T) {
	ids := []string{"dh1", "dh2", "witness"}
	addrs := freeAddrs(t, len(ids))
	var members []Member
	for i, id := range ids {
		members = append(members, Member{ID: id, Addr: addrs[i], Voter: true})
	}
	var logs lockedBuffer
	nodes := map[string]*Node{}
	for i, id := range ids {
		cfg := withTLS(Config{ID: id, Bind: addrs[i], Members: members,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		n, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	leader := waitLeader(t, nodes, 10*time.Second)
	term := leader.r.Load().CurrentTerm()

	other, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := clusterauth.Derive(other, "dh2")
	stranger, _ := clusterauth.Derive(testSecret, "dh9")
	for _, tc := range []struct {
		name  string
		creds *clusterauth.Credentials
	}{{"no credentials", nil}, {"another stack's", foreign}, {"not a member", stranger}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := attacker(t, tc.creds, ids)
			for i, id := range ids {
				target := raft.ServerAddress(addrs[i])
				vote := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("dh2"), Addr: []byte(addrs[1])},
					Term: term + 1<<40, LastLogIndex: 1 << 40, LastLogTerm: term + 1<<40, LeadershipTransfer: true}
				var vr raft.RequestVoteResponse
				if err := tr.RequestVote(raft.ServerID(id), target, vote, &vr); err == nil {
					t.Errorf("RequestVote to %s answered: %+v", id, vr)
				}
				ae := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("dh2"), Addr: []byte(addrs[1])},
					Term: term + 1<<40, LeaderCommitIndex: 1 << 40}
				var ar raft.AppendEntriesResponse
				if err := tr.AppendEntries(raft.ServerID(id), target, ae, &ar); err == nil {
					t.Errorf("AppendEntries to %s answered: %+v", id, ar)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	for id, n := range nodes {
		if got := n.r.Load().CurrentTerm(); got > term+5 {
			t.Errorf("%s: term %d after the attacks, was %d", id, got, term)
		}
		if n.Leader() == "" {
			t.Errorf("%s: no leader after the attacks", id)
		}
	}
	if !strings.Contains(logs.String(), "refused a connection that did not prove membership") {
		t.Errorf("no refusal logged:\n%s", logs.String())
	}
}

// TestRaftMemberOfAnotherStackCannotJoin starts a member whose credentials
// come from another stack's secret, under a member ID of this stack: it
// never hears a leader, and the cluster carries on without it.
func TestRaftMemberOfAnotherStackCannotJoin(t *testing.T) {
	ids := []string{"dh1", "dh2", "witness"}
	addrs := freeAddrs(t, len(ids))
	var members []Member
	for i, id := range ids {
		members = append(members, Member{ID: id, Addr: addrs[i], Voter: true})
	}
	other, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*Node{}
	var impostor *Node
	for i, id := range ids {
		cfg := withTLS(Config{ID: id, Bind: addrs[i], Members: members})
		if id == "witness" {
			cfg = withTLSOf(other, id, Config{ID: id, Bind: addrs[i], Members: members})
		}
		n, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Shutdown() })
		if id == "witness" {
			impostor = n
			continue
		}
		nodes[id] = n
	}
	// dh1 and dh2 are a majority of three: they elect without the
	// impostor, which never hears them.
	waitLeader(t, nodes, 10*time.Second)
	time.Sleep(time.Second)
	if impostor.IsLeader() || impostor.Leader() != "" || impostor.InMajority() {
		t.Errorf("the impostor joined: leader %q, state %s", impostor.Leader(), impostor.State())
	}
}
