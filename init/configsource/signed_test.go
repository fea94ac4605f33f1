package configsource

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
)

func newKey(t *testing.T, name string) (*openpgp.Entity, string) {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@example.net", nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return e, b.String()
}

// TestSignedCommits builds a repository whose commits are signed (or not)
// with go-git and fetches it with a trusted-key list.
func TestSignedCommits(t *testing.T) {
	dir := t.TempDir()
	repo, err := git.PlainInit(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	alice, alicePub := newKey(t, "alice")
	_, bobPub := newKey(t, "bob")
	commit := func(content string, key *openpgp.Entity) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "stack.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := wt.Add("stack.yaml"); err != nil {
			t.Fatal(err)
		}
		h, err := wt.Commit("change", &git.CommitOptions{
			Author:  &object.Signature{Name: "t", Email: "t@example.net", When: time.Now()},
			SignKey: key,
		})
		if err != nil {
			t.Fatal(err)
		}
		return h.String()
	}
	signed := commit("stack: a\n", alice)
	source := "git+file://" + dir + "#master"
	ctx := context.Background()

	rev, err := New(Options{SignedBy: []string{bobPub, alicePub}}).Fetch(ctx, source)
	if err != nil {
		t.Fatalf("commit signed by a trusted key refused: %v", err)
	}
	if rev.ID != signed {
		t.Errorf("got %s, want %s", rev.ID, signed)
	}
	if _, err := New(Options{SignedBy: []string{bobPub}}).Fetch(ctx, source); !errors.Is(err, ErrUnsigned) {
		t.Errorf("commit signed by an untrusted key: %v", err)
	}
	commit("stack: b\n", nil)
	if _, err := New(Options{SignedBy: []string{alicePub}}).Fetch(ctx, source); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned commit: %v", err)
	}
}
