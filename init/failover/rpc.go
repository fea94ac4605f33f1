package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
)

// RPCPort is where members take operator requests forwarded from another
// member (only the leader can change ownership). It speaks HTTPS with a
// member's client certificate required (package clusterauth), on top of
// the firewall opening it only to the stack's own hosts and witness.
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

// RPCHandler serves forwarded requests from other members. Each request
// must come over TLS from a proven member (RPCServer's config checks the
// certificate; this checks it was checked).
func (c *Controller) RPCHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pair", c.servePairView)
	mux.HandleFunc("GET /v1/ownership", c.serveOwnership)
	mux.HandleFunc("POST /v1/setting", serveRPC(10*time.Second, maxSettingBody,
		func(b []byte) (settingRequest, error) { return decodeSetting(c.cfg.Stack, b, time.Now()) },
		func(ctx context.Context, in settingRequest) (any, error) {
			return c.cfg.Cluster.Set(ctx, in.Key, in.Value)
		}))
	mux.HandleFunc("POST /v1/failover", serveRPC(time.Minute, maxFailoverBody,
		func(b []byte) (Request, error) { return decodeRemoteFailover(c.cfg.Stack, b) },
		func(ctx context.Context, req Request) (any, error) { return c.Handle(ctx, req) }))
	return requireMember(mux)
}

// requireMember refuses a request that did not come over a TLS connection
// whose peer presented a (verified) certificate.
func requireMember(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || clusterauth.PeerMember(*r.TLS) == "" {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "the cluster RPC answers members of the stack only"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// serveRPC reads a forwarded request's body (at most limit bytes),
// decodes and checks it with decode (a refusal is 400, a forced takeover
// 403), runs do within timeout and answers its result, or its error as 409.
func serveRPC[In any](timeout time.Duration, limit int64, decode func([]byte) (In, error), do func(context.Context, In) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
		if err != nil {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "bad request: " + err.Error()})
			return
		}
		in, err := decode(body)
		if err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, ErrForceRemote) {
				code = http.StatusForbidden
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
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

// RPCServer is the cluster RPC server for listeners on RPCPort: HTTPS with
// a member's client certificate required, and every wait bounded (a
// planned move may take a minute to answer).
func (c *Controller) RPCServer() (*http.Server, error) {
	if c.cfg.Credentials == nil {
		return nil, errors.New("cluster rpc: no member credentials")
	}
	refused := &clusterauth.RefusalLog{Log: c.log, What: "cluster rpc"}
	return &http.Server{
		Handler:           c.RPCHandler(),
		TLSConfig:         c.cfg.Credentials.ServerConfig(c.members()),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		// Handshake failures (strangers, other stacks) land here.
		ErrorLog: log.New(refused, "", 0),
	}, nil
}

// ServeRPC serves the cluster RPC on addr until ctx ends.
func (c *Controller) ServeRPC(ctx context.Context, addr string) error {
	srv, err := c.RPCServer()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cluster rpc: %w", err)
	}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("cluster rpc: %w", err)
	}
	return nil
}

// members are the IDs allowed on the cluster ports: the paired hosts, and
// the witness when the stack has one.
func (c *Controller) members() []string {
	var ids []string
	for _, h := range c.cfg.Stack.Hosts {
		if h.Pair != "" {
			ids = append(ids, h.Name)
		}
	}
	if c.cfg.Stack.Witness != "" {
		ids = append(ids, witnessID)
	}
	return ids
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
	if err := c.callRPC(rctx, http.MethodPost, "", host, "/v1/failover", r, &rep); err != nil {
		return Reply{}, fmt.Errorf("forwarding to the leader: %w", err)
	}
	return rep, nil
}

// SubmitSetting commits a cluster-wide setting on the leader: here when
// this member leads, else forwarded over RPCPort.
func (c *Controller) SubmitSetting(ctx context.Context, key, value, leaderRaftAddr string) (cluster.Setting, error) {
	// Checked here too: the leader would refuse it, and a local caller
	// learns why at once.
	if err := CheckSetting(c.cfg.Stack, key, value, time.Now()); err != nil {
		return cluster.Setting{}, err
	}
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
	if err := c.callRPC(rctx, http.MethodPost, "", host, "/v1/setting", settingRequest{Key: key, Value: value}, &out); err != nil {
		return cluster.Setting{}, fmt.Errorf("setting %s: forwarding to the leader: %w", key, err)
	}
	return out, nil
}

// callRPC sends in (if not nil) as JSON to path on host's cluster RPC port
// over mutual TLS and decodes the answer into out; a non-200 answer is an
// error carrying its "error" field. member, when not "", must be the one
// answering (a call to the leader accepts any member: raft named it).
func (c *Controller) callRPC(ctx context.Context, method, member, host, path string, in, out any) error {
	client, err := c.rpcClient(member)
	if err != nil {
		return err
	}
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
	url := "https://" + net.JoinHostPort(host, strconv.Itoa(port)) + path
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return fmt.Errorf("%s at %s: %s %s", path, host, resp.Status, e["error"])
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxRPCAnswer)).Decode(out); err != nil {
		return fmt.Errorf("%s at %s: %w", path, host, err)
	}
	return nil
}

// maxRPCAnswer bounds what another member's answer may make this one read
// (the ownership table is the largest).
const maxRPCAnswer = 4 << 20

// rpcClient is the HTTPS client for calls answered by member (any member
// when ""), made once per member and kept: its connections are reused, so
// a leader's table check does not pay a handshake every time.
func (c *Controller) rpcClient(member string) (*http.Client, error) {
	if c.cfg.Credentials == nil {
		return nil, errors.New("cluster rpc: no member credentials")
	}
	c.rpcMu.Lock()
	defer c.rpcMu.Unlock()
	if cl, ok := c.rpcClients[member]; ok {
		return cl, nil
	}
	cl := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     c.cfg.Credentials.ClientConfig(c.members(), member),
		TLSHandshakeTimeout: 5 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
		// The client's own request bodies are small; answers are bounded
		// when read.
		MaxResponseHeaderBytes: 16 << 10,
	}}
	if c.rpcClients == nil {
		c.rpcClients = map[string]*http.Client{}
	}
	c.rpcClients[member] = cl
	return cl, nil
}
