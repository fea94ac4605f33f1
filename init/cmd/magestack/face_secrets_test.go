package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"magestack/init/clusterauth"
	"magestack/init/stacksecret"
)

func TestSecretsMemberFace(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "stack.secret")
	var errb bytes.Buffer
	if code := secretsFace([]string{"init", "-o", secret}, io.Discard, &errb); code != 0 {
		t.Fatalf("secrets init: exit %d: %s", code, errb.String())
	}
	out := filepath.Join(dir, "witness.pem")
	if code := secretsFace([]string{"member", "witness", "-secret", secret, "-o", out}, io.Discard, &errb); code != 0 {
		t.Fatalf("secrets member: exit %d: %s", code, errb.String())
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, mode %v (want 0600)", err, fi.Mode())
	}
	got, err := witnessCredentials(out)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := stacksecret.Load(secret)
	want, _ := clusterauth.Derive(s, "witness")
	if got.StackID() != s.ID() || !bytes.Equal(got.HeartbeatKey(), want.HeartbeatKey()) || !bytes.Equal(got.CA().Raw, want.CA().Raw) {
		t.Error("the file's credentials are not the ones hosts derive from the same secret")
	}
	// The file holds no stack secret: nothing in it parses as one.
	b, _ := os.ReadFile(out)
	if _, err := stacksecret.Parse(out, b); err == nil || strings.Contains(string(b), "magestack-stack-secret") {
		t.Error("the credentials file carries the stack secret")
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"exists", []string{"member", "witness", "-secret", secret, "-o", out}, 1},
		{"force", []string{"member", "witness", "-secret", secret, "-o", out, "-force"}, 0},
		{"no name", []string{"member", "-secret", secret, "-o", out}, 2},
		{"no secret", []string{"member", "witness", "-o", out}, 2},
		{"bad name", []string{"member", "Witness!", "-secret", secret, "-o", filepath.Join(dir, "x")}, 1},
		{"missing secret file", []string{"member", "witness", "-secret", filepath.Join(dir, "nope"), "-o", filepath.Join(dir, "y")}, 1},
	} {
		if code := secretsFace(tc.args, io.Discard, io.Discard); code != tc.code {
			t.Errorf("%s: exit %d, want %d", tc.name, code, tc.code)
		}
	}
	host := filepath.Join(dir, "dh1.pem")
	if code := secretsFace([]string{"member", "dh1", "-secret", secret, "-o", host}, io.Discard, io.Discard); code != 0 {
		t.Fatal("secrets member dh1 failed")
	}
	if _, err := witnessCredentials(host); err == nil || !strings.Contains(err.Error(), `member "dh1"`) {
		t.Errorf("a host's credentials accepted for the witness: %v", err)
	}
}

func TestWitnessNeedsCredentials(t *testing.T) {
	if code := witnessMain([]string{"--stack", "whatever.yaml"}); code != 1 {
		t.Errorf("witness without --credentials: exit %d, want 1", code)
	}
}
