// Package stacksecret is the stack's root secret and everything derived
// from it: database and Redis passwords, the self-signed TLS certificate,
// the WireGuard key. One 32-byte secret per stack, made once (`magestack
// secrets init`, or by a one-host stack's first boot), the same on every
// host of the stack and never in the Git repository. Every value is derived
// with HKDF-SHA256 under its own label, so two hosts that hold the same
// secret compute the same passwords, certificate and keys without ever
// exchanging them, and a failover changes none of them.
package stacksecret

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// magic starts the secret's line in its file; the version names the
// derivation scheme, so a future scheme cannot be confused with this one.
const magic = "magestack-stack-secret-v1"

// Secret is a stack's root secret. The zero value is not a valid secret.
type Secret struct {
	seed [32]byte
}

// New makes a fresh secret from the kernel's random source.
func New() (Secret, error) {
	var s Secret
	if _, err := rand.Read(s.seed[:]); err != nil {
		return Secret{}, fmt.Errorf("stack secret: %w", err)
	}
	return s, nil
}

// Valid reports whether s holds a secret (not the zero value).
func (s Secret) Valid() bool { return s.seed != [32]byte{} }

// Equal reports whether two secrets are the same.
func (s Secret) Equal(o Secret) bool { return s.seed == o.seed }

// Parse reads a secret file's contents; name is where it came from, for
// errors. Lines starting with # are comments.
func Parse(name string, b []byte) (Secret, error) {
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, enc, ok := strings.Cut(line, " ")
		if !ok || word != magic {
			return Secret{}, fmt.Errorf("%s:%d: not a magestack stack secret (want %q followed by the key)", name, i+1, magic)
		}
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(enc))
		if err != nil || len(raw) != 32 {
			return Secret{}, fmt.Errorf("%s:%d: the key must be 32 bytes in unpadded base64url", name, i+1)
		}
		var s Secret
		copy(s.seed[:], raw)
		if !s.Valid() {
			return Secret{}, fmt.Errorf("%s:%d: the key is all zeroes", name, i+1)
		}
		return s, nil
	}
	return Secret{}, fmt.Errorf("%s: empty: no %s line", name, magic)
}

// Marshal is the file form of s; stack names the stack in a comment.
func (s Secret) Marshal(stack string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# magestack stack secret of stack %q. Every host of the stack needs this\n", stack)
	fmt.Fprintf(&b, "# same file; keep it out of the Git repository (it derives every password).\n")
	fmt.Fprintf(&b, "%s %s\n", magic, base64.RawURLEncoding.EncodeToString(s.seed[:]))
	return b.Bytes()
}

// Load reads the secret file at path.
func Load(path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Secret{}, fmt.Errorf("stack secret: %w", err)
	}
	return Parse(path, b)
}

// Save writes s to path, readable by root only, replacing it atomically.
func (s Secret) Save(path, stack string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("stack secret: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, s.Marshal(stack), 0o600); err != nil {
		return fmt.Errorf("stack secret: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return fmt.Errorf("stack secret: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("stack secret: %w", err)
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// derive is the n-byte key for purpose. Purposes never collide: each
// public method prefixes its own kind.
func (s Secret) derive(purpose string, n int) []byte {
	k, err := hkdf.Key(sha256.New, s.seed[:], []byte(magic), purpose, n)
	if err != nil {
		// Only a length beyond 255 hash blocks fails; every caller asks
		// for a few dozen bytes.
		panic(fmt.Sprintf("stacksecret: derive %d bytes: %v", n, err))
	}
	return k
}

// ID is a public fingerprint of the secret: two hosts with the same ID hold
// the same secret. It reveals nothing of the secret or what derives from it.
func (s Secret) ID() string {
	return hex.EncodeToString(s.derive("id", 8))
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

func checkName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: want lower-case letters, digits, '.', '_' or '-'", kind, name)
	}
	return nil
}

// Secret returns the password called name: 24 derived bytes, base64url (no
// characters that need quoting in a config file or a URL).
func (s Secret) Secret(name string) (string, error) {
	if err := checkName("secret", name); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(s.derive("password "+name, 24)), nil
}

// WireGuardKey is the Curve25519 private key called name, clamped as
// WireGuard expects.
func (s Secret) WireGuardKey(name string) ([32]byte, error) {
	var k [32]byte
	if err := checkName("key", name); err != nil {
		return k, err
	}
	copy(k[:], s.derive("wireguard "+name, 32))
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// ECDSAKey is the P-256 private key called name. A derived scalar that is
// out of range (probability ~2^-32) is derived again under a counter.
func (s Secret) ECDSAKey(name string) (*ecdsa.PrivateKey, error) {
	if err := checkName("key", name); err != nil {
		return nil, err
	}
	for i := 0; i < 16; i++ {
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), s.derive(fmt.Sprintf("ecdsa-p256 %s %d", name, i), 32))
		if err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("key %s: no valid P-256 scalar derived", name)
}

// ClusterKey is the n-byte key (16 to 64 bytes) the cluster's own
// credentials derive from, called label (package clusterauth names them:
// its CA key, each member's key, the heartbeat key). Its purposes live
// apart from every other derived value's, so no label here can yield a
// password, TLS key or WireGuard key.
func (s Secret) ClusterKey(label string, n int) ([]byte, error) {
	if label == "" || len(label) > 128 || strings.ContainsAny(label, "\x00\n") {
		return nil, fmt.Errorf("cluster key label %q: want 1 to 128 bytes on one line", label)
	}
	if n < 16 || n > 64 {
		return nil, fmt.Errorf("cluster key %s: %d bytes: want 16 to 64", label, n)
	}
	return s.derive("cluster "+label, n), nil
}

// certEpoch is every derived certificate's NotBefore: fixed, so that the
// certificate is the same bytes on every host and after every restart.
var certEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// SelfSigned returns the PEM certificate and key called name for hosts
// (DNS names or IP addresses), valid from 2025 for 25 years. The same
// secret, name and hosts give the same certificate, byte for byte: the key
// is derived, the serial is a hash of the inputs and the ECDSA signature is
// deterministic (RFC 6979), so clients that pinned it keep trusting it
// after a failover.
func (s Secret) SelfSigned(name string, hosts []string) (cert, key string, err error) {
	k, err := s.ECDSAKey("tls-" + name)
	if err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	hosts = append([]string(nil), hosts...)
	sort.Strings(hosts)
	h := sha256.New()
	h.Write(s.derive("serial "+name, 16))
	for _, n := range hosts {
		binary.Write(h, binary.BigEndian, uint32(len(n)))
		h.Write([]byte(n))
	}
	serial := new(big.Int).SetBytes(h.Sum(nil)[:16])
	serial.Rsh(serial, 1) // positive, under 2^127
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "magestack self-signed"},
		NotBefore:    certEpoch,
		NotAfter:     certEpoch.AddDate(25, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range hosts {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if len(tmpl.DNSNames) > 0 {
		tmpl.Subject.CommonName = tmpl.DNSNames[0]
	}
	// A nil random source makes the ECDSA signature deterministic; the
	// serial is set, so CreateCertificate needs no randomness.
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})), nil
}

// ErrMissing says a host has no copy of the stack secret and may not make
// one (it is paired: a secret of its own would disagree with its peer's).
var ErrMissing = errors.New("no stack secret")

// Source says where Locate found the secret.
type Source string

const (
	FromKept     Source = "kept"     // the host's own copy (the data disk)
	FromProvided Source = "provided" // the file the host was booted with, now kept
	FromNew      Source = "new"      // made here: a one-host stack's first boot
)

// Locate finds this host's stack secret. kept is the host's own copy (on its
// data disk); provided is the file it was booted with (initramfs or
// magestack.secrets=), "" when none. A kept copy wins; a provided one that
// differs from it is refused, since every password of the data already on
// the host derives from the kept one. With neither, a fresh secret is made
// and kept only when mayCreate (a one-host stack); otherwise ErrMissing.
func Locate(kept, provided, stack string, mayCreate bool) (Secret, Source, error) {
	k, kerr := Load(kept)
	if kerr != nil && !errors.Is(kerr, os.ErrNotExist) {
		return Secret{}, "", kerr
	}
	var p Secret
	if provided != "" {
		var err error
		if p, err = Load(provided); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Secret{}, "", err
		}
	}
	switch {
	case kerr == nil && p.Valid() && !p.Equal(k):
		return Secret{}, "", fmt.Errorf("the stack secret in %s (id %s) differs from the one kept in %s (id %s): "+
			"the data on this host was made with the kept one; boot with the kept file, or wipe the data disk to start over",
			provided, p.ID(), kept, k.ID())
	case kerr == nil:
		return k, FromKept, nil
	case p.Valid():
		if err := p.Save(kept, stack); err != nil {
			return Secret{}, "", err
		}
		return p, FromProvided, nil
	case mayCreate:
		n, err := New()
		if err != nil {
			return Secret{}, "", err
		}
		if err := n.Save(kept, stack); err != nil {
			return Secret{}, "", err
		}
		return n, FromNew, nil
	}
	return Secret{}, "", ErrMissing
}
