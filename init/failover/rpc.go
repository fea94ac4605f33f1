package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"magestack/init/cluster"
)

// RPCPort is where members take operator requests forwarded from another
// member (only the leader can change ownership). Like the raft and
// heartbeat ports it is open only to the stack's own hosts and witness.
const RPCPort = 7702

// Request is an operator's failover request.
type Request struct {
	To    string `json:"to,omitempty"`    // planned move of everything to this host
	Force bool   `json:"force,omitempty"` // take over without witness or fence
}

// Reply answers a Request.
type Reply struct {
	Failover *Failover `json:"failover,omitempty"`
	Message  string    `json:"message"`
}

// Handle executes r here: a planned move on the leader, or a forced
// takeover on this host.
func (c *Controller) Handle(ctx context.Context, r Request) (Reply, error) {
	switch {
	case r.Force:
		if c.cfg.Runtime == nil {
			return Reply{}, errors.New("failover --force runs on the host that should take over, not on the witness")
		}
		if err := c.ForceAlone(); err != nil {
			return Reply{}, err
		}
		return Reply{Message: "this host is now the only voter and takes over what its peer ran; if the peer is in fact alive, both run the same roles until it is powered off"}, nil
	case r.To != "":
		f, err := c.MoveTo(ctx, r.To)
		if err != nil {
			return Reply{}, err
		}
		return Reply{Failover: &f, Message: fmt.Sprintf("moved %s's instances to %s", f.From, f.To)}, nil
	}
	return Reply{}, errors.New("failover: say --to HOST or --force")
}

// RPCHandler serves forwarded requests (POST /v1/failover).
func (c *Controller) RPCHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pair", c.servePairView)
	mux.HandleFunc("GET /v1/ownership", c.serveOwnership)
	mux.HandleFunc("POST /v1/setting", serveRPC(10*time.Second, func(ctx context.Context, in cluster.Setting) (any, error) {
		return c.cfg.Cluster.Set(ctx, in.Key, in.Value)
	}))
	mux.HandleFunc("POST /v1/failover", serveRPC(time.Minute, func(ctx context.Context, req Request) (any, error) {
		return c.Handle(ctx, req)
	}))
	return mux
}

// serveRPC decodes a forwarded request as In, runs do within timeout and
// answers its result, or its error as 409 (a bad body as 400).
func serveRPC[In any](timeout time.Duration, do func(context.Context, In) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in In
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&in); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request: " + err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		out, err := do(ctx, in)
		if err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// leaderHost is the host part of the leader's raft address, or an error
// wrapping cluster.ErrNotLeader when no leader is known.
func leaderHost(leaderRaftAddr string) (string, error) {
	host, _, err := net.SplitHostPort(leaderRaftAddr)
	if err != nil || host == "" {
		return "", fmt.Errorf("no cluster leader known (%w)", cluster.ErrNotLeader)
	}
	return host, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Submit runs r where it must run: a forced takeover here, a planned move
// on the leader (forwarded over RPCPort when this member does not lead).
func (c *Controller) Submit(ctx context.Context, r Request, leaderRaftAddr string) (Reply, error) {
	if r.Force || c.cfg.Cluster.IsLeader() {
		return c.Handle(ctx, r)
	}
	host, err := leaderHost(leaderRaftAddr)
	if err != nil {
		return Reply{}, err
	}
	var rep Reply
	// A planned move waits for stops, a lease and starts on the leader.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := c.callRPC(rctx, http.MethodPost, host, "/v1/failover", r, &rep); err != nil {
		return Reply{}, fmt.Errorf("forwarding to the leader: %w", err)
	}
	return rep, nil
}

// SubmitSetting commits a cluster-wide setting on the leader: here when
// this member leads, else forwarded over RPCPort.
func (c *Controller) SubmitSetting(ctx context.Context, key, value, leaderRaftAddr string) (cluster.Setting, error) {
	if c.cfg.Cluster.IsLeader() {
		return c.cfg.Cluster.Set(ctx, key, value)
	}
	host, err := leaderHost(leaderRaftAddr)
	if err != nil {
		return cluster.Setting{}, fmt.Errorf("setting %s: %w", key, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out cluster.Setting
	if err := c.callRPC(rctx, http.MethodPost, host, "/v1/setting", cluster.Setting{Key: key, Value: value}, &out); err != nil {
		return cluster.Setting{}, fmt.Errorf("setting %s: forwarding to the leader: %w", key, err)
	}
	return out, nil
}

// callRPC sends in (if not nil) as JSON to path on host's cluster RPC port
// and decodes the answer into out; a non-200 answer is an error carrying
// its "error" field.
func (c *Controller) callRPC(ctx context.Context, method, host, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	port := RPCPort
	if c.rpcPort != 0 {
		port = c.rpcPort
	}
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + path
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return fmt.Errorf("%s at %s: %s %s", path, host, resp.Status, e["error"])
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s at %s: %w", path, host, err)
	}
	return nil
}
