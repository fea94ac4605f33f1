package render

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Secrets hands out values made once and kept: database passwords shared
// by db and web, the self-signed certificate lb serves.
type Secrets interface {
	// Secret returns the random password called name, creating it once.
	Secret(name string) (string, error)
	// SelfSigned returns a PEM certificate and key for hosts, created once.
	SelfSigned(name string, hosts []string) (cert, key string, err error)
}

// FileSecrets keeps secrets as root-only files in Dir (on the host's
// persistent disk, so they survive reboots; never inside a role).
type FileSecrets struct {
	Dir string
	mu  sync.Mutex
}

var secretName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

func (f *FileSecrets) path(name string) (string, error) {
	if !secretName.MatchString(name) {
		return "", fmt.Errorf("secret name %q: invalid", name)
	}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	return filepath.Join(f.Dir, name), nil
}

// Secret implements Secrets: 24 random bytes, base64url.
func (f *FileSecrets) Secret(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.path(name)
	if err != nil {
		return "", err
	}
	if b, err := os.ReadFile(p); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	s := base64.RawURLEncoding.EncodeToString(raw)
	if err := writeAtomic(p, []byte(s+"\n")); err != nil {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	return s, nil
}

// SelfSigned implements Secrets: an ECDSA P-256 certificate valid ten
// years for hosts (names or addresses).
func (f *FileSecrets) SelfSigned(name string, hosts []string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.path(name + ".pem")
	if err != nil {
		return "", "", err
	}
	if b, err := os.ReadFile(p); err == nil {
		cert, key := splitPEM(b)
		if cert != "" && key != "" {
			return cert, key, nil
		}
	}
	cert, key, err := selfSigned(hosts)
	if err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	if err := writeAtomic(p, []byte(cert+key)); err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	return cert, key, nil
}

func selfSigned(hosts []string) (string, string, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "magestack self-signed"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if len(tmpl.DNSNames) > 0 {
		tmpl.Subject.CommonName = tmpl.DNSNames[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", "", err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})), nil
}

// splitPEM separates certificate blocks from the private key block.
func splitPEM(b []byte) (cert, key string) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return cert, key
		}
		s := string(pem.EncodeToMemory(blk))
		if strings.Contains(blk.Type, "PRIVATE KEY") {
			key += s
		} else {
			cert += s
		}
	}
}

func writeAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
