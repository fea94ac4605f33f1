package stacksecret

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func mustNew(t *testing.T) Secret {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Two hosts holding copies of one secret file compute the same values: the
// property that lets web1 on one host log in to db1 on the other.
func TestCopiesDeriveTheSameValues(t *testing.T) {
	a := mustNew(t)
	b, err := Parse("copy", a.Marshal("shop1"))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() {
		t.Fatalf("IDs differ: %s vs %s", a.ID(), b.ID())
	}
	pa, _ := a.Secret("db-magento")
	pb, _ := b.Secret("db-magento")
	if pa != pb || len(pa) != 32 {
		t.Fatalf("passwords %q vs %q", pa, pb)
	}
	ca, ka, err := a.SelfSigned("site", []string{"shop.example", "192.0.2.50"})
	if err != nil {
		t.Fatal(err)
	}
	cb, kb, err := b.SelfSigned("site", []string{"192.0.2.50", "shop.example"})
	if err != nil {
		t.Fatal(err)
	}
	if ca != cb || ka != kb {
		t.Fatal("the same secret, name and hosts gave different certificates")
	}
	wa, _ := a.WireGuardKey("vpn")
	wb, _ := b.WireGuardKey("vpn")
	if wa != wb {
		t.Fatal("WireGuard keys differ")
	}
}

func TestDistinctNamesAndSecretsDiffer(t *testing.T) {
	a, b := mustNew(t), mustNew(t)
	seen := map[string]string{}
	for _, c := range []struct {
		what string
		s    Secret
		name string
	}{{"a db", a, "db-magento"}, {"a redis", a, "redis-default"}, {"b db", b, "db-magento"}} {
		p, err := c.s.Secret(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if prev, dup := seen[p]; dup {
			t.Fatalf("%s and %s derived the same password", prev, c.what)
		}
		seen[p] = c.what
	}
	if a.ID() == b.ID() {
		t.Fatal("two fresh secrets share an ID")
	}
}

func TestSelfSignedIsAUsableCertificate(t *testing.T) {
	s := mustNew(t)
	cert, key, err := s.SelfSigned("site", []string{"shop.example", "192.0.2.50"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair([]byte(cert), []byte(key)); err != nil {
		t.Fatalf("certificate and key do not pair: %v", err)
	}
	blk, _ := pem.Decode([]byte(cert))
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
	if err := c.VerifyHostname("shop.example"); err != nil {
		t.Error(err)
	}
	if err := c.VerifyHostname("192.0.2.50"); err != nil {
		t.Error(err)
	}
	if c.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v is not positive", c.SerialNumber)
	}
}

func TestWireGuardKeyIsClamped(t *testing.T) {
	k, err := mustNew(t).WireGuardKey("vpn")
	if err != nil {
		t.Fatal(err)
	}
	want, err := wgtypes.NewKey(k[:])
	if err != nil {
		t.Fatal(err)
	}
	// wgtypes clamps generated keys the same way: a clamped key is a
	// fixed point of clamping.
	c := want
	c[0] &= 248
	c[31] = (c[31] & 127) | 64
	if c != want {
		t.Fatal("derived key is not clamped")
	}
}

func TestParseErrorsNameTheFileAndLine(t *testing.T) {
	for _, tt := range []struct {
		name, text, want string
	}{
		{"empty", "", "empty"},
		{"comments only", "# nothing\n", "empty"},
		{"wrong magic", "ssh-ed25519 AAAA\n", "f:1: not a magestack stack secret"},
		{"short key", "# c\n" + magic + " AAAA\n", "f:2: the key must be 32 bytes"},
		{"not base64", magic + " !!!!\n", "f:1: the key must be 32 bytes"},
		{"zero key", magic + " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", "all zeroes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f", []byte(tt.text))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestBadNamesAreRefused(t *testing.T) {
	s := mustNew(t)
	if _, err := s.Secret("../etc"); err == nil {
		t.Error("a path-like secret name was accepted")
	}
	if _, err := s.WireGuardKey(""); err == nil {
		t.Error("an empty key name was accepted")
	}
}

func TestLocate(t *testing.T) {
	one, two := mustNew(t), mustNew(t)
	type files struct{ kept, provided *Secret }
	for _, tt := range []struct {
		name      string
		have      files
		mayCreate bool
		want      Source
		wantSame  *Secret // the secret returned, when known
		wantErr   string
	}{
		{name: "kept wins", have: files{kept: &one}, want: FromKept, wantSame: &one},
		{name: "kept and same provided", have: files{kept: &one, provided: &one}, want: FromKept, wantSame: &one},
		{name: "provided is kept", have: files{provided: &two}, want: FromProvided, wantSame: &two},
		{name: "provided differs from kept", have: files{kept: &one, provided: &two}, wantErr: "differs from the one kept"},
		{name: "one host makes its own", mayCreate: true, want: FromNew},
		{name: "paired host without a copy", wantErr: ErrMissing.Error()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			kept, provided := filepath.Join(dir, "state", "stack.secret"), filepath.Join(dir, "boot.secret")
			if tt.have.kept != nil {
				if err := tt.have.kept.Save(kept, "s"); err != nil {
					t.Fatal(err)
				}
			}
			if tt.have.provided != nil {
				if err := tt.have.provided.Save(provided, "s"); err != nil {
					t.Fatal(err)
				}
			}
			got, src, err := Locate(kept, provided, "s", tt.mayCreate)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if src != tt.want {
				t.Errorf("source %s, want %s", src, tt.want)
			}
			if tt.wantSame != nil && !got.Equal(*tt.wantSame) {
				t.Error("returned a different secret")
			}
			again, err := Load(kept)
			if err != nil || !again.Equal(got) {
				t.Fatalf("the secret is not kept: %v", err)
			}
			fi, err := os.Stat(kept)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("kept file mode %v, want 0600 (%v)", fi.Mode().Perm(), err)
			}
		})
	}
	if _, _, err := Locate(filepath.Join(t.TempDir(), "k"), "", "s", false); !errors.Is(err, ErrMissing) {
		t.Errorf("err = %v, want ErrMissing", err)
	}
}

func TestClusterKey(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.ClusterKey("heartbeat", 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.ClusterKey("heartbeat", 32)
	c, _ := s.ClusterKey("ca", 32)
	if string(a) != string(b) || string(a) == string(c) {
		t.Error("cluster keys are not deterministic per label, or two labels collide")
	}
	for _, tc := range []struct {
		label string
		n     int
	}{{"", 32}, {"a\nb", 32}, {strings.Repeat("x", 129), 32}, {"ca", 8}, {"ca", 65}} {
		if _, err := s.ClusterKey(tc.label, tc.n); err == nil {
			t.Errorf("ClusterKey(%q, %d) accepted", tc.label, tc.n)
		}
	}
}
