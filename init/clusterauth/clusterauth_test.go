package clusterauth

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"magestack/init/stacksecret"
)

func secret(t *testing.T) stacksecret.Secret {
	t.Helper()
	s, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func derive(t *testing.T, s stacksecret.Secret, member string) *Credentials {
	t.Helper()
	c, err := Derive(s, member)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDeriveIsDeterministicAndSeparated(t *testing.T) {
	s := secret(t)
	a, b := derive(t, s, "dh1"), derive(t, s, "dh1")
	am, _ := a.Marshal()
	bm, _ := b.Marshal()
	if !bytes.Equal(am, bm) {
		t.Error("two derivations of dh1 differ: hosts would not agree on the cluster's certificates")
	}
	other := derive(t, s, "dh2")
	if !bytes.Equal(a.CA().Raw, other.CA().Raw) {
		t.Error("dh1 and dh2 derive different CAs")
	}
	if bytes.Equal(a.cert.Certificate[0], other.cert.Certificate[0]) {
		t.Error("dh1 and dh2 have the same certificate")
	}
	if !bytes.Equal(a.HeartbeatKey(), other.HeartbeatKey()) {
		t.Error("members derive different heartbeat keys")
	}
	foreign := derive(t, secret(t), "dh1")
	if bytes.Equal(foreign.CA().Raw, a.CA().Raw) || bytes.Equal(foreign.HeartbeatKey(), a.HeartbeatKey()) {
		t.Error("two stack secrets derive the same CA or heartbeat key")
	}
	if a.StackID() != s.ID() {
		t.Errorf("stack id %q, want %q", a.StackID(), s.ID())
	}
	// The heartbeat key is none of the stack's passwords.
	pw, _ := s.Secret("heartbeat")
	if strings.Contains(pw, string(a.HeartbeatKey())) {
		t.Error("heartbeat key overlaps a password")
	}
}

func TestDeriveRefusesBadMembers(t *testing.T) {
	s := secret(t)
	for _, m := range []string{"", "DH1", "dh1/../x", strings.Repeat("a", 64), "-dh"} {
		if _, err := Derive(s, m); err == nil {
			t.Errorf("Derive(%q) accepted", m)
		}
	}
	if _, err := Derive(stacksecret.Secret{}, "dh1"); err == nil {
		t.Error("Derive with no secret accepted")
	}
}

func TestFileRoundTrip(t *testing.T) {
	s := secret(t)
	w := derive(t, s, "witness")
	b, err := w.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("w.pem", b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Member() != "witness" || got.StackID() != s.ID() || !bytes.Equal(got.HeartbeatKey(), w.HeartbeatKey()) {
		t.Errorf("parsed %s/%s, want witness/%s", got.Member(), got.StackID(), s.ID())
	}
	gb, _ := got.Marshal()
	if !bytes.Equal(gb, b) {
		t.Error("credentials do not survive a round trip byte for byte")
	}
}

func TestParseRefuses(t *testing.T) {
	s := secret(t)
	w, _ := derive(t, s, "witness").Marshal()
	foreign, _ := derive(t, secret(t), "witness").Marshal()
	// The member's certificate and key of one stack with another's CA.
	mixed := mixCA(t, w, foreign)
	for name, b := range map[string][]byte{
		"empty":          nil,
		"secret file":    s.Marshal("shop1"),
		"no heartbeat":   []byte(strings.Split(string(w), "-----BEGIN MAGESTACK HEARTBEAT KEY")[0]),
		"foreign CA":     mixed,
		"unknown blocks": append(append([]byte{}, w...), "-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"...),
	} {
		if _, err := Parse(name, b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// mixCA is file a with file b's CA certificate.
func mixCA(t *testing.T, a, b []byte) []byte {
	t.Helper()
	ca, _ := Parse("b", b)
	pa, _ := Parse("a", a)
	pa.ca = ca.ca
	out, err := pa.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var members = []string{"dh1", "dh2", "witness"}

// handshake runs a TLS handshake over a real socket and returns both
// sides' errors.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3: the client's certificate is checked after the
			// client's handshake returns; a read sees the verdict.
			_, err = tc.Read(make([]byte, 1))
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	cerr = tc.Handshake()
	if cerr == nil {
		_, cerr = tc.Write([]byte("x"))
		if cerr == nil {
			_, cerr = tc.Read(make([]byte, 1))
			if cerr != nil && strings.Contains(cerr.Error(), "EOF") {
				cerr = nil // the server closed after reading: accepted
			}
		}
	}
	serr = <-done
	return serr, cerr
}

func TestMutualTLS(t *testing.T) {
	s := secret(t)
	dh1, dh2, witness := derive(t, s, "dh1"), derive(t, s, "dh2"), derive(t, s, "witness")
	foreign := derive(t, secret(t), "dh2")
	stranger := derive(t, s, "dh9") // the stack's CA, not a member
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	tls12 := dh2.ClientConfig(members, "")
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	for _, tc := range []struct {
		name     string
		server   *tls.Config
		client   *tls.Config
		accepted bool
	}{
		{"members", dh1.ServerConfig(members), dh2.ClientConfig(members, "dh1"), true},
		{"witness dials a host", dh1.ServerConfig(members), witness.ClientConfig(members, ""), true},
		{"client without certificate", dh1.ServerConfig(members), noCert, false},
		{"client of another stack", dh1.ServerConfig(members), foreign.ClientConfig(members, ""), false},
		{"client not a member", dh1.ServerConfig(members), stranger.ClientConfig(members, ""), false},
		{"server of another stack", foreign.ServerConfig(members), dh1.ClientConfig(members, ""), false},
		{"server is not who was dialled", dh2.ServerConfig(members), dh1.ClientConfig(members, "witness"), false},
		{"TLS 1.2", dh1.ServerConfig(members), tls12, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serr, cerr := handshake(t, tc.server, tc.client)
			if tc.accepted && (serr != nil || cerr != nil) {
				t.Fatalf("refused: server %v, client %v", serr, cerr)
			}
			if !tc.accepted && serr == nil && cerr == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestPeerMember(t *testing.T) {
	s := secret(t)
	dh2 := derive(t, s, "dh2")
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{dh2.cert.Leaf}}
	if got := PeerMember(cs); got != "dh2" {
		t.Errorf("PeerMember = %q, want dh2", got)
	}
	id, err := derive(t, s, "dh1").verifyPeer(cs, x509.ExtKeyUsageServerAuth, members, "dh2")
	if err != nil || id != "dh2" {
		t.Errorf("verifyPeer = %q, %v", id, err)
	}
	if _, err := derive(t, s, "dh1").verifyPeer(tls.ConnectionState{}, x509.ExtKeyUsageServerAuth, members, ""); !errors.Is(err, ErrNotMember) {
		t.Errorf("no certificate: %v, want ErrNotMember", err)
	}
}

func newLogger(w *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func TestRefusalLogIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	l := &RefusalLog{Log: newLogger(&buf), What: "raft", Interval: time.Hour}
	for range 100 {
		l.Refused("192.0.2.9:1234", errors.New("bad certificate"))
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Errorf("%d lines for 100 refusals within the interval, want 1:\n%s", n, buf.String())
	}
	if l.Total() != 100 {
		t.Errorf("total %d, want 100", l.Total())
	}
}

// BenchmarkHandshake is one mutual TLS handshake between two members
// (both ends' CPU), the cost raft pays per new connection.
func BenchmarkHandshake(b *testing.B) {
	s, err := stacksecret.New()
	if err != nil {
		b.Fatal(err)
	}
	dh1, _ := Derive(s, "dh1")
	dh2, _ := Derive(s, "dh2")
	server, client := dh1.ServerConfig(members), dh2.ClientConfig(members, "dh1")
	for b.Loop() {
		c1, c2 := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- tls.Server(c1, server).Handshake() }()
		if err := tls.Client(c2, client).Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		c1.Close()
		c2.Close()
	}
}
