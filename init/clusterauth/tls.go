package clusterauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// ServerConfig is the TLS config a member serves the cluster ports with:
// TLS 1.3 only, and the client must present a certificate of the cluster
// CA naming one of members.
func (c *Credentials) ServerConfig(members []string) *tls.Config {
	allowed := slices.Clone(members)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		// The chain is checked by VerifyConnection below, against the
		// cluster CA only (never the system roots) and at a fixed time.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := c.verifyPeer(cs, x509.ExtKeyUsageClientAuth, allowed, "")
			return err
		},
	}
}

// ClientConfig is the TLS config a member dials the cluster ports with:
// the server must present a certificate of the cluster CA naming one of
// members, and want when it is not "" (the member this dial is meant for).
func (c *Credentials) ClientConfig(members []string, want string) *tls.Config {
	allowed := slices.Clone(members)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		// Members are dialled by address, and their certificates name
		// member IDs, not addresses: Go's host name check cannot apply.
		// VerifyConnection does the whole check instead (chain to the
		// cluster CA, member name), so this skips nothing.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := c.verifyPeer(cs, x509.ExtKeyUsageServerAuth, allowed, want)
			return err
		},
	}
}

// ErrNotMember is wrapped by every refusal of a peer's certificate.
var ErrNotMember = errors.New("not a member of this stack's cluster")

// verifyPeer checks the peer's certificate and returns its member ID.
func (c *Credentials) verifyPeer(cs tls.ConnectionState, usage x509.ExtKeyUsage, allowed []string, want string) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("%w: no certificate", ErrNotMember)
	}
	leaf := cs.PeerCertificates[0]
	// Only the leaf, straight under the CA: members never send
	// intermediates, and none are trusted.
	if _, err := leaf.Verify(verifyOpts(c.pool, usage)); err != nil {
		return "", fmt.Errorf("%w: certificate %q: %v", ErrNotMember, leaf.Subject.CommonName, err)
	}
	id := leaf.Subject.CommonName
	if !slices.Contains(allowed, id) {
		return "", fmt.Errorf("%w: %q is not one of %v", ErrNotMember, id, allowed)
	}
	if want != "" && id != want {
		return "", fmt.Errorf("%w: dialled %s, answered by %s", ErrNotMember, want, id)
	}
	return id, nil
}

// PeerMember is the member ID of the peer of a verified connection ("" when
// it presented no certificate).
func PeerMember(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}

// RefusalLog logs refused connections at most once per interval, with how
// many were refused since the last line: a stranger knocking at the
// cluster ports must not flood the console.
type RefusalLog struct {
	Log      *slog.Logger
	What     string // "raft", "cluster rpc"
	Interval time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
	total      uint64
}

// Refused records one refusal from remote.
func (l *RefusalLog) Refused(remote string, err error) {
	l.mu.Lock()
	l.total++
	every := l.Interval
	if every == 0 {
		every = 10 * time.Second
	}
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < every {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if l.Log != nil {
		l.Log.Warn("cluster: refused a connection that did not prove membership", "port", l.What,
			"remote", remote, "err", err, "refused_since_last_line", n)
	}
}

// Total is how many connections were refused so far.
func (l *RefusalLog) Total() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Write lets net/http's server error log (TLS handshake errors) go
// through the rate limit.
func (l *RefusalLog) Write(p []byte) (int, error) {
	l.Refused("", errors.New(string(trimNL(p))))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
