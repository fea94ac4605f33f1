package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"magestack/images/manifest"
)

// writeImages puts files name -> content in dir with a manifest listing
// them at their true digests.
func writeImages(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	m := &manifest.Manifest{Version: manifest.Version}
	for name, content := range files {
		file := name + ".squashfs"
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(content))
		m.Images = append(m.Images, manifest.Image{Name: name, File: file, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])})
	}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
}

func TestLoadVerifies(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, map[string]string{"web": "web image", "db": "db image"})
	s := New(nil, "")
	names, err := s.Load(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "db,web" {
		t.Fatalf("verified %v", names)
	}
	if got, want := s.Path("web"), filepath.Join(dir, "web.squashfs"); got != want {
		t.Fatalf("Path(web) = %q, want %q", got, want)
	}
	if s.Path("lb") != "" {
		t.Fatal("an image not in the manifest has a path")
	}
}

func TestMismatchRefusedAndPreviousKept(t *testing.T) {
	ctx := context.Background()
	good := t.TempDir()
	writeImages(t, good, map[string]string{"web": "web v1", "db": "db v1"})
	s := New(nil, "")
	if _, err := s.Load(ctx, good); err != nil {
		t.Fatal(err)
	}

	// A second delivery: web verifies, db's file was altered after the
	// manifest was written.
	next := t.TempDir()
	writeImages(t, next, map[string]string{"web": "web v2", "db": "db v2"})
	os.WriteFile(filepath.Join(next, "db.squashfs"), []byte("db v2 tampered"), 0o644)
	names, err := s.Load(ctx, next)
	if strings.Join(names, ",") != "web" {
		t.Fatalf("verified %v, want web only", names)
	}
	var de *DigestError
	if !errors.As(err, &de) || de.Name != "db" || !de.KeptPrevious {
		t.Fatalf("err %v, want a DigestError for db keeping the previous image", err)
	}
	if !strings.Contains(err.Error(), "image db") || !strings.Contains(err.Error(), "keeping the previously verified image") {
		t.Fatalf("error does not name the image and outcome: %v", err)
	}
	if s.Path("web") != filepath.Join(next, "web.squashfs") {
		t.Errorf("web not updated: %s", s.Path("web"))
	}
	if s.Path("db") != filepath.Join(good, "db.squashfs") {
		t.Errorf("db did not keep its previous image: %s", s.Path("db"))
	}

	// The file a role runs from changes in place: it is no longer the
	// verified one and is not served.
	os.WriteFile(filepath.Join(next, "web.squashfs"), []byte("web v2 swapped"), 0o644)
	_, err = s.Load(ctx, next)
	if de = digestErrorFor(err, "web"); de == nil || de.KeptPrevious {
		t.Fatalf("err %v, want web refused with nothing kept", err)
	}
	if s.Path("web") != "" {
		t.Errorf("a tampered file is still served: %s", s.Path("web"))
	}
}

func TestCacheDirCopiesVerified(t *testing.T) {
	ctx := context.Background()
	src, cache := t.TempDir(), t.TempDir()
	writeImages(t, src, map[string]string{"web": "web image"})
	s := New(nil, cache)
	if _, err := s.Load(ctx, src); err != nil {
		t.Fatal(err)
	}
	p := s.Path("web")
	if filepath.Dir(p) != cache {
		t.Fatalf("served from %s, want the cache %s", p, cache)
	}
	if b, _ := os.ReadFile(p); string(b) != "web image" {
		t.Fatalf("cached copy holds %q", b)
	}
	// The source disappears: a new store finds the copy by digest.
	os.Remove(filepath.Join(src, "web.squashfs"))
	s2 := New(nil, cache)
	if _, err := s2.Load(ctx, src); err != nil {
		t.Fatalf("cached copy not used: %v", err)
	}
	// A bad delivery never reaches the cache.
	bad := t.TempDir()
	writeImages(t, bad, map[string]string{"db": "db image"})
	os.WriteFile(filepath.Join(bad, "db.squashfs"), []byte("db imagE"), 0o644)
	if _, err := s2.Load(ctx, bad); err == nil {
		t.Fatal("tampered db accepted")
	}
	ents, _ := os.ReadDir(cache)
	if len(ents) != 1 {
		t.Fatalf("cache holds %d entries, want only web's", len(ents))
	}
}

func TestLoadBadManifest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, manifest.FileName), []byte(`{"version":1,"images":[{"name":"web","file":"../x","size":1,"sha256":"00"}]}`), 0o644)
	_, err := New(nil, "").Load(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "manifest") {
		t.Fatalf("err %v", err)
	}
}

// digestErrorFor finds the DigestError about image name in a joined error.
func digestErrorFor(err error, name string) *DigestError {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return nil
	}
	for _, e := range j.Unwrap() {
		var de *DigestError
		if errors.As(e, &de) && de.Name == name {
			return de
		}
	}
	return nil
}

func TestPublish(t *testing.T) {
	ctx := context.Background()
	src, builtin, root := t.TempDir(), t.TempDir(), t.TempDir()
	writeImages(t, src, map[string]string{"web": "web image", "db": "db image"})
	os.Mkdir(filepath.Join(builtin, "busybox"), 0o755)
	os.Mkdir(filepath.Join(builtin, "web"), 0o755) // shadowed by the verified web image
	s := New(nil, "")
	if _, err := s.Load(ctx, src); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(root, builtin); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		links[e.Name()], _ = os.Readlink(filepath.Join(root, e.Name()))
	}
	want := map[string]string{
		"web.squashfs": filepath.Join(src, "web.squashfs"), "db.squashfs": filepath.Join(src, "db.squashfs"),
		"busybox": filepath.Join(builtin, "busybox"),
	}
	if len(links) != len(want) {
		t.Fatalf("links %v, want %v", links, want)
	}
	for k, v := range want {
		if links[k] != v {
			t.Errorf("%s -> %q, want %q", k, links[k], v)
		}
	}
	// db's file is swapped in place: after the reload its link is gone.
	os.WriteFile(filepath.Join(src, "db.squashfs"), []byte("other"), 0o644)
	s.Load(ctx, src)
	if err := s.Publish(root, builtin); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "db.squashfs")); !os.IsNotExist(err) {
		t.Errorf("unverified db still published: %v", err)
	}
}
