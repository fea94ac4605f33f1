package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"magestack/init/clusterauth"
)

// Bounds of the raft port against whoever reaches it.
const (
	// handshakeTimeout bounds how long a connection may take to prove
	// membership; generous for a slow (emulated) CPU, short for a
	// stranger holding connections open.
	handshakeTimeout = 5 * time.Second
	// maxHandshakes is how many unproven connections may be in hand at
	// once; more are closed at once.
	maxHandshakes = 32
	// maxInbound bounds proven connections: each member pools a few per
	// peer (raft's MaxPool, plus its heartbeat and pipeline streams).
	maxInbound = 64
)

// tlsStream is raft's StreamLayer over mutual TLS: a connection is handed
// to raft only once its peer proved it is a member of the stack, so
// nothing a stranger sends (a RequestVote with a huge term, an
// AppendEntries) ever reaches raft's decoder.
//
// Proven connections carry no idle deadline: raft pools its outbound
// connections without expiry, and one closed here while idle would cost
// the next election a round (its vote request fails on the stale
// connection). Members are trusted and their connections are bounded in
// number; TCP keep-alives reap those of a vanished peer.
type tlsStream struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	refused   *clusterauth.RefusalLog

	ready   chan net.Conn
	closed  chan struct{}
	once    sync.Once
	pending chan struct{} // a token per handshake in progress
	inbound chan struct{} // a token per proven connection raft holds
}

func newTLSStream(bind string, advertise net.Addr, server, client *tls.Config, refused *clusterauth.RefusalLog) (*tlsStream, error) {
	if server == nil || client == nil {
		return nil, errors.New("raft needs the member's TLS configs (cluster credentials)")
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	s := &tlsStream{ln: ln, advertise: advertise, server: server, client: client, refused: refused,
		ready: make(chan net.Conn), closed: make(chan struct{}),
		pending: make(chan struct{}, maxHandshakes), inbound: make(chan struct{}, maxInbound)}
	go s.acceptLoop()
	return s, nil
}

// acceptLoop takes TCP connections and proves each in its own goroutine,
// so a slow or silent stranger does not hold up a member's connection.
func (s *tlsStream) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-s.closed:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case s.pending <- struct{}{}:
			go s.prove(c)
		default:
			s.refused.Refused(c.RemoteAddr().String(), errors.New("too many connections proving membership at once"))
			c.Close()
		}
	}
}

// prove runs the TLS handshake within handshakeTimeout and hands a proven
// connection to Accept; anything else is closed and counted.
func (s *tlsStream) prove(c net.Conn) {
	defer func() { <-s.pending }()
	tc := tls.Server(c, s.server)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.refused.Refused(c.RemoteAddr().String(), err)
		c.Close()
		return
	}
	select {
	case s.inbound <- struct{}{}:
	default:
		s.refused.Refused(c.RemoteAddr().String(), fmt.Errorf("member %s: more than %d raft connections",
			clusterauth.PeerMember(tc.ConnectionState()), maxInbound))
		tc.Close()
		return
	}
	pc := &provenConn{Conn: tc, release: func() { <-s.inbound }}
	select {
	case s.ready <- pc:
	case <-s.closed:
		pc.Close()
	}
}

// provenConn gives back its inbound token when raft closes it.
type provenConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *provenConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// Accept returns the next proven connection.
func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (s *tlsStream) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closed)
		err = s.ln.Close()
	})
	return err
}

// Addr is the address other members reach this one at.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial connects to a member and proves both ends within timeout.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: s.client}
	c, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	return c, nil
}
