package cluster

import (
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"magestack/init/clusterauth"
)

// routeProvider tells raft's transport where to dial each member: where
// Config.Route says (a pair peer's pair-link address while that path is
// up), else the member's configured raft address. A changed route takes
// effect when raft next dials, i.e. once the connection on the old route
// fails (on a cut path, at the RPC timeout of half a lease); nothing is
// closed on purpose, which would also cut the witness's streams.
type routeProvider struct {
	route func(id string) string
	addrs map[string]string
}

func (p routeProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a := p.route(string(id)); a != "" {
		return raft.ServerAddress(a), nil
	}
	if a, ok := p.addrs[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	return "", fmt.Errorf("cluster: no address for member %s", id)
}

// newTransport listens on cfg.Bind and dials members at their addresses,
// or along cfg.Route when set, over mutual TLS both ways.
func newTransport(cfg Config, advertise net.Addr, logger hclog.Logger) (*raft.NetworkTransport, error) {
	refused := &clusterauth.RefusalLog{Log: cfg.Logger, What: "raft"}
	stream, err := newTLSStream(cfg.Bind, advertise, cfg.ServerTLS, cfg.ClientTLS, refused)
	if err != nil {
		return nil, err
	}
	tc := &raft.NetworkTransportConfig{Stream: stream, MaxPool: 3, Timeout: 2 * time.Second, Logger: logger}
	if cfg.Route != nil {
		addrs := map[string]string{}
		for _, m := range cfg.Members {
			addrs[m.ID] = m.Addr
		}
		tc.ServerAddressProvider = routeProvider{route: cfg.Route, addrs: addrs}
		// An RPC stuck on a path that just went down must give up well
		// within the lease, so that the retry takes the other path before
		// the peer's lease runs out.
		tc.Timeout = max(cfg.Timing.Lease/2, 100*time.Millisecond)
	}
	return raft.NewNetworkTransportWithConfig(tc), nil
}
