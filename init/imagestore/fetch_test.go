package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/images/manifest"
)

// imageServer is an image server on loopback: a manifest and files, with
// every request recorded and optional faults.
type imageServer struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	files    map[string][]byte // served bytes by file name
	manifest []byte
	requests []string // "GET /web.squashfs range=bytes=5-"
	// cut, when > 0, makes the next request for an image send only that
	// many bytes and then drop the connection.
	cut int
	// stall, with cut, holds the connection open instead of dropping it.
	stall chan struct{}
}

func newImageServer(t *testing.T) *imageServer {
	s := &imageServer{t: t, files: map[string][]byte{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		s.mu.Lock()
		if s.stall != nil {
			close(s.stall)
			s.stall = nil
		}
		s.mu.Unlock()
		s.srv.Close()
	})
	return s
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// publish serves images name -> content with a manifest at their true
// digests; lie lists names whose served bytes differ from the manifest's.
func (s *imageServer) publish(images map[string]string, lie ...string) {
	s.t.Helper()
	m := &manifest.Manifest{Version: manifest.Version}
	files := map[string][]byte{}
	for name, content := range images {
		file := name + ".squashfs"
		m.Images = append(m.Images, manifest.Image{Name: name, File: file, Size: int64(len(content)), SHA256: digestOf([]byte(content))})
		served := []byte(content)
		if slices.Contains(lie, name) {
			served = bytes.ToUpper(served) // same size, other bytes
		}
		files[file] = served
	}
	b, err := m.Marshal()
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.files, s.manifest = files, b
	s.mu.Unlock()
}

func (s *imageServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+rangeNote(r)))
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == manifest.FileName {
		b := s.manifest
		s.mu.Unlock()
		w.Write(b)
		return
	}
	b, ok := s.files[name]
	cut, stall := s.cut, s.stall
	s.cut = 0
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if cut > 0 {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		w.Write(b[:cut])
		w.(http.Flusher).Flush()
		if stall != nil {
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		}
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	w.Header().Set("ETag", `"sha256:`+digestOf(b)+`"`)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

func rangeNote(r *http.Request) string {
	if v := r.Header.Get("Range"); v != "" {
		return "range=" + v
	}
	return ""
}

func (s *imageServer) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

func (s *imageServer) opts(cache string, names ...string) FetchOptions {
	return FetchOptions{URL: s.srv.URL, CacheDir: cache, Names: names, Backoff: 10 * time.Millisecond, Attempts: 3}
}

func readPath(t *testing.T, st *Store, name string) string {
	t.Helper()
	p := st.Path(name)
	if p == "" {
		t.Fatalf("no verified image %s", name)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFetchManifestFirstOnlyWantedImages(t *testing.T) {
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web image v1", "db": "db image v1", "monitor": "monitor image v1"})
	cache := t.TempDir()
	st, res, err := Fetch(context.Background(), nil, srv.opts(cache, "monitor", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readPath(t, st, "monitor"); got != "monitor image v1" {
		t.Fatalf("monitor = %q", got)
	}
	if got, want := srv.log(), []string{"GET /manifest.json", "GET /monitor.squashfs", "GET /web.squashfs"}; !slices.Equal(got, want) {
		t.Fatalf("requests %q, want %q", got, want)
	}
	if st.Path("db") != "" {
		t.Fatal("an image not wanted is in the store")
	}
	if res.Sources["monitor"] != FromServer || res.ServerErr != nil || len(res.Missing) != 0 {
		t.Fatalf("result %+v", res)
	}
	if dir := filepath.Dir(st.Path("web")); dir != cache {
		t.Fatalf("image served from %s, not the cache %s", dir, cache)
	}
	cm, err := manifest.Read(cache)
	if err != nil {
		t.Fatalf("cache manifest: %v", err)
	}
	var names []string
	for _, im := range cm.Images {
		names = append(names, im.Name)
	}
	if strings.Join(names, ",") != "monitor,web" {
		t.Fatalf("cache manifest lists %v", names)
	}
}

func TestFetchBadDigestRefusedAndNotKept(t *testing.T) {
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web image", "db": "db image"}, "web")
	cache := t.TempDir()
	st, res, err := Fetch(context.Background(), nil, srv.opts(cache, "web", "db"))
	de := digestErrorFor(err, "web")
	if de == nil {
		t.Fatalf("want a digest error naming web, got %v", err)
	}
	if !strings.Contains(err.Error(), "image web") || !strings.Contains(err.Error(), "/web.squashfs") || de.KeptPrevious {
		t.Fatalf("error %q does not name the image and its URL, or claims a kept image", err)
	}
	if st.Path("web") != "" || st.Path("db") == "" {
		t.Fatalf("web path %q (want none), db path %q (want one)", st.Path("web"), st.Path("db"))
	}
	if !slices.Equal(res.Missing, []string{"web"}) {
		t.Fatalf("missing %v", res.Missing)
	}
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), de.Want) {
			t.Fatalf("the refused bytes stayed in the cache as %s", e.Name())
		}
	}
	// A fresh full download that fails is not retried: the server's file is wrong.
	if n := strings.Count(strings.Join(srv.log(), "\n"), "GET /web.squashfs"); n != 1 {
		t.Fatalf("web fetched %d times, want 1", n)
	}
}

func TestFetchBadNewDigestKeepsPrevious(t *testing.T) {
	ctx := context.Background()
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web v1"})
	cache := t.TempDir()
	if _, _, err := Fetch(ctx, nil, srv.opts(cache, "web")); err != nil {
		t.Fatal(err)
	}
	srv.publish(map[string]string{"web": "web v2"}, "web")
	st, res, err := Fetch(ctx, nil, srv.opts(cache, "web"))
	de := digestErrorFor(err, "web")
	if de == nil || !de.KeptPrevious || !strings.Contains(err.Error(), "keeping the previously verified image") {
		t.Fatalf("want a digest error keeping the previous image, got %v", err)
	}
	if got := readPath(t, st, "web"); got != "web v1" {
		t.Fatalf("web = %q, want the previous v1", got)
	}
	if len(res.Missing) != 0 || res.Sources["web"] != FromCache {
		t.Fatalf("result %+v", res)
	}
	// The v1 file is still in use: the next offline boot must find it.
	srv.srv.Close()
	st, _, err = Fetch(ctx, nil, srv.opts(cache, "web"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readPath(t, st, "web"); got != "web v1" {
		t.Fatalf("offline web = %q", got)
	}
}

func TestFetchServerGoneUsesCache(t *testing.T) {
	ctx := context.Background()
	srv := newImageServer(t)
	srv.publish(map[string]string{"monitor": "monitor image"})
	cache := t.TempDir()
	if _, _, err := Fetch(ctx, nil, srv.opts(cache, "monitor")); err != nil {
		t.Fatal(err)
	}
	srv.srv.Close()
	st, res, err := Fetch(ctx, nil, srv.opts(cache, "monitor"))
	if err != nil {
		t.Fatal(err)
	}
	if res.ServerErr == nil || res.Sources["monitor"] != FromCache {
		t.Fatalf("result %+v: want the cache used with the server error recorded", res)
	}
	if got := readPath(t, st, "monitor"); got != "monitor image" {
		t.Fatalf("monitor = %q", got)
	}
	// An image never cached cannot come from anywhere.
	st, res, err = Fetch(ctx, nil, srv.opts(cache, "monitor", "web"))
	if err == nil || !strings.Contains(err.Error(), "image web: not in the cache and the image server is unreachable") {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(res.Missing, []string{"web"}) || st.Path("monitor") == "" {
		t.Fatalf("result %+v", res)
	}
}

func TestFetchCorruptCacheRefetchedOrRefusedOffline(t *testing.T) {
	ctx := context.Background()
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web image bytes"})
	cache := t.TempDir()
	st, _, err := Fetch(ctx, nil, srv.opts(cache, "web"))
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func() {
		p := st.Path("web")
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("WEB image bytes"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	corrupt()
	st, res, err := Fetch(ctx, nil, srv.opts(cache, "web"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readPath(t, st, "web"); got != "web image bytes" || res.Sources["web"] != FromServer {
		t.Fatalf("web = %q from %s, want refetched from the server", got, res.Sources["web"])
	}
	if n := strings.Count(strings.Join(srv.log(), "\n"), "GET /web.squashfs"); n != 2 {
		t.Fatalf("web fetched %d times, want 2 (first boot, then after the corruption)", n)
	}
	corrupt()
	srv.srv.Close()
	st, res, err = Fetch(ctx, nil, srv.opts(cache, "web"))
	if digestErrorFor(err, "web") == nil || st.Path("web") != "" || !slices.Equal(res.Missing, []string{"web"}) {
		t.Fatalf("offline with a corrupt cache: err %v, path %q, result %+v", err, st.Path("web"), res)
	}
}

func TestFetchNewDigestReplacesAndPrunes(t *testing.T) {
	ctx := context.Background()
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web v1", "db": "db v1"})
	cache := t.TempDir()
	st, _, err := Fetch(ctx, nil, srv.opts(cache, "web", "db"))
	if err != nil {
		t.Fatal(err)
	}
	oldWeb, oldDB := st.Path("web"), st.Path("db")
	srv.publish(map[string]string{"web": "web v2", "db": "db v1"})
	st, _, err = Fetch(ctx, nil, srv.opts(cache, "web"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readPath(t, st, "web"); got != "web v2" {
		t.Fatalf("web = %q", got)
	}
	for _, p := range []string{oldWeb, oldDB} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s no longer in use but still cached (%v)", p, err)
		}
	}
}

func TestFetchResumesAfterDroppedConnection(t *testing.T) {
	content := strings.Repeat("0123456789", 10000)
	for _, tc := range []struct {
		name  string
		stall bool
	}{{"dropped", false}, {"stalled", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newImageServer(t)
			srv.publish(map[string]string{"web": content})
			srv.mu.Lock()
			srv.cut = 40000
			if tc.stall {
				srv.stall = make(chan struct{})
			}
			srv.mu.Unlock()
			opts := srv.opts(t.TempDir(), "web")
			opts.Stall = 300 * time.Millisecond
			st, _, err := Fetch(context.Background(), nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := readPath(t, st, "web"); got != content {
				t.Fatalf("web: %d bytes, not the published image", len(got))
			}
			want := []string{"GET /manifest.json", "GET /web.squashfs", "GET /web.squashfs range=bytes=40000-"}
			if got := srv.log(); !slices.Equal(got, want) {
				t.Fatalf("requests %q, want %q", got, want)
			}
		})
	}
}

func TestFetchRetriesUntilServerComes(t *testing.T) {
	srv := newImageServer(t)
	// No manifest yet: 404 until published.
	srv.mu.Lock()
	srv.files = nil
	srv.mu.Unlock()
	h := srv.srv.Config.Handler
	var calls int
	var mu sync.Mutex
	srv.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 4 {
			srv.publish(map[string]string{"web": "web"})
		}
		if n < 4 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
	opts := srv.opts(t.TempDir(), "web")
	opts.Attempts = 1
	opts.RetryFor = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, res, err := Fetch(ctx, nil, opts)
	if err != nil || st.Path("web") == "" {
		t.Fatalf("err %v, result %+v", err, res)
	}
}

func TestFetchNotListed(t *testing.T) {
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web"})
	_, res, err := Fetch(context.Background(), nil, srv.opts(t.TempDir(), "monitor"))
	if err == nil || !strings.Contains(err.Error(), "image monitor: not listed in "+srv.srv.URL+"/manifest.json") {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(res.Missing, []string{"monitor"}) {
		t.Fatalf("missing %v", res.Missing)
	}
}

func TestFetchBadManifestNamesIt(t *testing.T) {
	srv := newImageServer(t)
	srv.mu.Lock()
	srv.manifest = []byte(`{"version": 1, "images": [{"name": "web", "file": "../x", "size": 1, "sha256": "00"}]}`)
	srv.mu.Unlock()
	_, res, err := Fetch(context.Background(), nil, srv.opts(t.TempDir(), "web"))
	if res.ServerErr == nil || !strings.Contains(res.ServerErr.Error(), "manifest.json") || err == nil {
		t.Fatalf("server err %v, err %v", res.ServerErr, err)
	}
	if n := len(srv.log()); n != 1 {
		t.Fatalf("a manifest the server sent invalid was asked %d times", n)
	}
}

func TestFetchNothingWantedAsksNothing(t *testing.T) {
	srv := newImageServer(t)
	srv.publish(map[string]string{"web": "web"})
	st, _, err := Fetch(context.Background(), nil, srv.opts(t.TempDir()))
	if err != nil || len(st.Names()) != 0 || len(srv.log()) != 0 {
		t.Fatalf("err %v, images %v, requests %q: a host needing no image must not fetch", err, st.Names(), srv.log())
	}
	opts := srv.opts(t.TempDir())
	opts.All = true
	st, _, err = Fetch(context.Background(), nil, opts)
	if err != nil || strings.Join(st.Names(), ",") != "web" {
		t.Fatalf("All: err %v, images %v", err, st.Names())
	}
}
