// Package clusterauth is the cluster's member credentials: who may speak
// raft, the cluster RPC and heartbeats to a member of a stack. Every value
// is derived from the stack secret (package stacksecret), so the hosts of a
// stack compute the same cluster CA and each other's certificates without
// exchanging anything:
//   - a cluster CA, a P-256 key derived under its own label and a
//     self-signed certificate built deterministically (fixed validity,
//     serial from a hash, RFC 6979 signature);
//   - one leaf certificate per member (CN = its member ID: a host name, or
//     "witness"), each with its own derived key, signed by the CA;
//   - the heartbeat key, an HMAC-SHA256 key shared by the stack's members.
//
// Hosts derive their own credentials from the stack secret. The witness
// must not hold the secret (it would derive every database password), so
// it loads a credentials file made for it (`magestack secrets member`):
// its certificate and key, the CA certificate and the heartbeat key.
package clusterauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"regexp"
	"slices"
	"time"

	"magestack/init/stacksecret"
)

// epoch is every cluster certificate's NotBefore, fixed so that the
// certificates are the same bytes on every host and after every restart.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// validYears is the certificates' lifetime. They are never renewed: the
// stack secret is their root, and a new secret means new certificates.
const validYears = 25

// HeartbeatKeySize is the heartbeat HMAC key's length in bytes.
const HeartbeatKeySize = 32

// memberRE is what a member ID may be: a stack file host name or
// "witness" (both DNS labels).
var memberRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// PEM block types of the credentials file; the CA and the member's own
// certificate are both CERTIFICATE blocks, told apart by IsCA.
const (
	pemCert    = "CERTIFICATE"
	pemKey     = "PRIVATE KEY"
	pemHBKey   = "MAGESTACK HEARTBEAT KEY"
	fileHeader = "# magestack cluster credentials of member %q (stack id %s).\n" +
		"# They let their holder vote in the stack's cluster: keep them root-only on that machine.\n"
)

// Credentials are one member's: its certificate and key, the cluster CA
// and the heartbeat key.
type Credentials struct {
	member  string
	stackID string
	cert    tls.Certificate
	ca      *x509.Certificate
	pool    *x509.CertPool
	hbKey   []byte
}

// Member is the member ID the credentials prove.
func (c *Credentials) Member() string { return c.member }

// HeartbeatKey is the stack's heartbeat HMAC key.
func (c *Credentials) HeartbeatKey() []byte { return slices.Clone(c.hbKey) }

// CA is the cluster CA certificate.
func (c *Credentials) CA() *x509.Certificate { return c.ca }

// Derive computes member's credentials from the stack secret.
func Derive(s stacksecret.Secret, member string) (*Credentials, error) {
	if !s.Valid() {
		return nil, errors.New("cluster credentials: no stack secret")
	}
	if !memberRE.MatchString(member) {
		return nil, fmt.Errorf("cluster credentials: member %q: want a host name or %q", member, "witness")
	}
	caKey, err := deriveKey(s, "ca")
	if err != nil {
		return nil, err
	}
	ca, err := caCert(caKey, s.ID())
	if err != nil {
		return nil, err
	}
	key, err := deriveKey(s, "member "+member)
	if err != nil {
		return nil, err
	}
	der, err := leafCert(ca, caKey, key, member)
	if err != nil {
		return nil, err
	}
	hb, err := s.ClusterKey("heartbeat hmac-sha256", HeartbeatKeySize)
	if err != nil {
		return nil, fmt.Errorf("cluster credentials: %w", err)
	}
	return assemble(member, s.ID(), der, key, ca, hb)
}

// deriveKey is the P-256 key under label. A derived scalar out of range
// (probability ~2^-32) is derived again under a counter.
func deriveKey(s stacksecret.Secret, label string) (*ecdsa.PrivateKey, error) {
	for i := range 16 {
		raw, err := s.ClusterKey(fmt.Sprintf("ecdsa-p256 %s %d", label, i), 32)
		if err != nil {
			return nil, fmt.Errorf("cluster key %s: %w", label, err)
		}
		if k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("cluster key %s: no valid P-256 scalar derived", label)
}

// serialFor is a certificate serial: a hash of what the certificate
// binds, positive and under 2^127, the same on every host.
func serialFor(pub *ecdsa.PublicKey, subject string) (*big.Int, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(der)
	h.Write([]byte{0})
	h.Write([]byte(subject))
	n := new(big.Int).SetBytes(h.Sum(nil)[:16])
	return n.Rsh(n, 1), nil
}

func caCert(k *ecdsa.PrivateKey, stackID string) (*x509.Certificate, error) {
	cn := "magestack cluster CA " + stackID
	serial, err := serialFor(&k.PublicKey, cn)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             epoch,
		NotAfter:              epoch.AddDate(validYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	// A nil random source makes the ECDSA signature deterministic (RFC
	// 6979); the serial is set, so nothing else needs randomness.
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	return x509.ParseCertificate(der)
}

func leafCert(ca *x509.Certificate, caKey, key *ecdsa.PrivateKey, member string) ([]byte, error) {
	serial, err := serialFor(&key.PublicKey, member)
	if err != nil {
		return nil, fmt.Errorf("member %s certificate: %w", member, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: member},
		NotBefore:    epoch,
		NotAfter:     epoch.AddDate(validYears, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every member both serves and dials.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(nil, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("member %s certificate: %w", member, err)
	}
	return der, nil
}

// assemble checks that the parts belong together and builds Credentials.
func assemble(member, stackID string, leafDER []byte, key *ecdsa.PrivateKey, ca *x509.Certificate, hb []byte) (*Credentials, error) {
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, fmt.Errorf("member %s certificate: %w", member, err)
	}
	if leaf.Subject.CommonName != member {
		return nil, fmt.Errorf("member certificate names %q, not %q", leaf.Subject.CommonName, member)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("member %s: the key does not match the certificate", member)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(verifyOpts(pool, x509.ExtKeyUsageClientAuth)); err != nil {
		return nil, fmt.Errorf("member %s: the certificate is not the cluster CA's: %w", member, err)
	}
	if len(hb) != HeartbeatKeySize {
		return nil, fmt.Errorf("member %s: heartbeat key of %d bytes, want %d", member, len(hb), HeartbeatKeySize)
	}
	return &Credentials{
		member:  member,
		stackID: stackID,
		cert:    tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key, Leaf: leaf},
		ca:      ca,
		pool:    pool,
		hbKey:   slices.Clone(hb),
	}, nil
}

// verifyOpts checks a member certificate against the cluster CA. The time
// is fixed inside the certificates' validity: they are never renewed, and
// a host's clock may be wrong at boot (no RTC, before NTP), which must not
// cut it off from its cluster.
func verifyOpts(pool *x509.CertPool, usage x509.ExtKeyUsage) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: epoch.Add(24 * time.Hour)}
}

// Marshal is the credentials file: PEM blocks of the member's
// certificate, its key, the CA certificate and the heartbeat key.
func (c *Credentials) Marshal() ([]byte, error) {
	kd, err := x509.MarshalPKCS8PrivateKey(c.cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("member %s key: %w", c.member, err)
	}
	out := fmt.Appendf(nil, fileHeader, c.member, c.stackID)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: c.cert.Certificate[0]})...)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemKey, Bytes: kd})...)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: c.ca.Raw})...)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemHBKey, Bytes: c.hbKey})...)
	return out, nil
}

// Parse reads a credentials file; name is where it came from, for errors.
func Parse(name string, b []byte) (*Credentials, error) {
	var leaf []byte
	var ca *x509.Certificate
	var key *ecdsa.PrivateKey
	var hb []byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch blk.Type {
		case pemCert:
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: certificate: %w", name, err)
			}
			if c.IsCA {
				ca = c
			} else {
				leaf = blk.Bytes
			}
		case pemKey:
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: key: %w", name, err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("%s: the key is %T, want a P-256 ECDSA key", name, k)
			}
			key = ek
		case pemHBKey:
			hb = blk.Bytes
		default:
			return nil, fmt.Errorf("%s: unexpected PEM block %q", name, blk.Type)
		}
	}
	if leaf == nil || ca == nil || key == nil || hb == nil {
		return nil, fmt.Errorf("%s: not magestack cluster credentials: want the member's certificate, its key, "+
			"the CA certificate and the heartbeat key (`magestack secrets member` makes the file)", name)
	}
	lc, err := x509.ParseCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c, err := assemble(lc.Subject.CommonName, stackIDOf(ca), leaf, key, ca, hb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// stackIDOf is the stack ID the CA's name carries.
func stackIDOf(ca *x509.Certificate) string {
	const prefix = "magestack cluster CA "
	cn := ca.Subject.CommonName
	if len(cn) > len(prefix) && cn[:len(prefix)] == prefix {
		return cn[len(prefix):]
	}
	return "?"
}

// StackID is the public ID of the stack secret the credentials derive
// from (as `magestack secrets id` prints it).
func (c *Credentials) StackID() string { return c.stackID }

// Load reads the credentials file at path.
func Load(path string) (*Credentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster credentials: %w", err)
	}
	return Parse(path, b)
}
