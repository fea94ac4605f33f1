package configsource

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		raw  string
		want Source
		err  string
	}{
		{raw: "/etc/magestack/stack.yaml", want: Source{Kind: KindPath, Path: "/etc/magestack/stack.yaml"}},
		{raw: "file:///etc/s.yaml", want: Source{Kind: KindPath, Path: "/etc/s.yaml"}},
		{raw: "https://h/s.yaml", want: Source{Kind: KindHTTP, URL: "https://h/s.yaml"}},
		{raw: "git+https://host/repo.git#main:stacks/shop1.yaml", want: Source{Kind: KindGit, URL: "https://host/repo.git", Ref: "main", File: "stacks/shop1.yaml"}},
		{raw: "git+file:///srv/r.git#v1.2", want: Source{Kind: KindGit, URL: "file:///srv/r.git", Ref: "v1.2", File: "stack.yaml"}},
		{raw: "git+ssh://git@h/r.git", want: Source{Kind: KindGit, URL: "ssh://git@h/r.git", File: "stack.yaml"}},
		{raw: "git+ssh://git@h/r.git#:/a/b.yaml", want: Source{Kind: KindGit, URL: "ssh://git@h/r.git", File: "a/b.yaml"}},
		{raw: "", err: "empty config source"},
		{raw: "ftp://h/x", err: `config source "ftp://h/x": scheme "ftp" unsupported (want a path, http(s)://, or git+https/http/ssh/file://)`},
		{raw: "git+https:///r.git", err: `config source "git+https:///r.git": repository URL has no host`},
		{raw: "git+https://h/r.git#ma..in:x", err: `config source "git+https://h/r.git#ma..in:x": "ma..in" is not a valid Git ref`},
		{raw: "https://", err: `config source "https://": URL has no host`},
	}
	for _, tt := range tests {
		got, err := Parse(tt.raw)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("Parse(%q) error = %v, want %q", tt.raw, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.raw, err)
			continue
		}
		tt.want.Raw = tt.raw
		if got != tt.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tt.raw, got, tt.want)
		}
	}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestFetchPath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "stack.yaml")
	data := []byte("stack: s\n")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	rev, err := Fetch(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rev.Data, data) || rev.ID != sha(data) || rev.Source != p || rev.Time.IsZero() {
		t.Errorf("revision %+v", rev)
	}
	if _, err := Fetch(context.Background(), filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Fetch(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("directory: %v", err)
	}
	f := New(Options{MaxSize: 4})
	if _, err := f.Fetch(context.Background(), p); err == nil || !strings.Contains(err.Error(), "larger than 4 bytes") {
		t.Errorf("size limit: %v", err)
	}
}

func certPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

func TestFetchHTTPConditional(t *testing.T) {
	content := "stack: a\n"
	var bodies int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		etag := `"` + sha([]byte(content))[:16] + `"`
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		bodies++
		io.WriteString(w, content)
	}))
	defer srv.Close()
	f := New(Options{CABundle: certPEM(srv)})
	ctx := context.Background()
	a1, err := f.Fetch(ctx, srv.URL+"/s.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := f.Fetch(ctx, srv.URL+"/s.yaml")
	if err != nil || a2.ID != a1.ID || string(a2.Data) != content || bodies != 1 {
		t.Errorf("unchanged poll: %v %s bodies=%d", err, a2.ID, bodies)
	}
	content = "stack: b\n"
	b, err := f.Fetch(ctx, srv.URL+"/s.yaml")
	if err != nil || b.ID == a1.ID || string(b.Data) != content || bodies != 2 {
		t.Errorf("changed file: %v %q bodies=%d", err, b.Data, bodies)
	}
}

func TestFetchHTTP(t *testing.T) {
	data := []byte("stack: web\n")
	mux := http.NewServeMux()
	mux.HandleFunc("/stack.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", "Wed, 25 Nov 2026 10:00:00 GMT")
		w.Write(data)
	})
	mux.HandleFunc("/big.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("#"), 2000))
	})
	mux.HandleFunc("/slow.yaml", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	ctx := context.Background()

	f := New(Options{CABundle: certPEM(srv), MaxSize: 1000})
	rev, err := f.Fetch(ctx, srv.URL+"/stack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rev.Data, data) || rev.ID != sha(data) || rev.Time.UTC().Format(time.RFC3339) != "2026-11-25T10:00:00Z" {
		t.Errorf("revision %+v", rev)
	}
	if _, err := f.Fetch(ctx, srv.URL+"/nope.yaml"); err == nil || !strings.Contains(err.Error(), "HTTP status 404 Not Found") {
		t.Errorf("404: %v", err)
	}
	if _, err := f.Fetch(ctx, srv.URL+"/big.yaml"); err == nil || !strings.Contains(err.Error(), "larger than 1000 bytes") {
		t.Errorf("size limit: %v", err)
	}
	if _, err := New(Options{}).Fetch(ctx, srv.URL+"/stack.yaml"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate accepted: %v", err)
	}
	start := time.Now()
	slow := New(Options{CABundle: certPEM(srv), Timeout: 300 * time.Millisecond})
	if _, err := slow.Fetch(ctx, srv.URL+"/slow.yaml"); err == nil {
		t.Error("slow server: no timeout error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %s", d)
	}
}

// gitFixture is a bare repository plus a work tree that pushes to it,
// driven by the git binary.
type gitFixture struct {
	t    *testing.T
	bare string
	work string
}

func newGitFixture(t *testing.T) *gitFixture {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git binary not installed (needed to build fixture repositories)")
	}
	dir := t.TempDir()
	g := &gitFixture{t: t, bare: filepath.Join(dir, "stacks.git"), work: filepath.Join(dir, "work")}
	g.git("", "init", "-q", "--bare", "-b", "main", g.bare)
	g.git("", "init", "-q", "-b", "main", g.work)
	g.git(g.work, "remote", "add", "origin", g.bare)
	return g
}

func (g *gitFixture) git(dir string, args ...string) string {
	g.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.net",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.net", "GIT_CONFIG_NOSYSTEM=1", "HOME="+g.t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files, commits and pushes main; it returns the commit hash.
func (g *gitFixture) commit(files map[string]string) string {
	g.t.Helper()
	for name, content := range files {
		p := filepath.Join(g.work, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			g.t.Fatal(err)
		}
	}
	g.git(g.work, "add", "-A")
	g.git(g.work, "commit", "-q", "-m", "change")
	g.git(g.work, "push", "-q", "origin", "main")
	return g.git(g.work, "rev-parse", "HEAD")
}

func TestFetchGitFile(t *testing.T) {
	g := newGitFixture(t)
	first := g.commit(map[string]string{"stack.yaml": "stack: one\n", "stacks/shop1.yaml": "stack: shop1\n"})
	g.git(g.work, "tag", "-a", "-m", "release", "v1")
	g.git(g.work, "push", "-q", "origin", "v1")
	second := g.commit(map[string]string{"stacks/shop1.yaml": "stack: shop1\nroles: {web: {count: 2}}\n"})
	url := "git+file://" + g.bare
	ctx := context.Background()
	f := New(Options{})

	for _, tt := range []struct {
		source, id, data string
	}{
		{url + "#main:stacks/shop1.yaml", second, "stack: shop1\nroles: {web: {count: 2}}\n"},
		{url, second, "stack: one\n"},
		{url + "#v1:stacks/shop1.yaml", first, "stack: shop1\n"},
		{url + "#" + first[:10] + ":stacks/shop1.yaml", first, "stack: shop1\n"},
		{url + "#refs/heads/main:stack.yaml", second, "stack: one\n"},
	} {
		rev, err := f.Fetch(ctx, tt.source)
		if err != nil {
			t.Errorf("%s: %v", tt.source, err)
			continue
		}
		if rev.ID != tt.id || string(rev.Data) != tt.data || rev.Source != tt.source || rev.Time.IsZero() {
			t.Errorf("%s: got %s %q, want %s %q", tt.source, rev.ID, rev.Data, tt.id, tt.data)
		}
	}
	for _, tt := range []struct{ source, err string }{
		{url + "#main:missing.yaml", "missing.yaml at " + second[:12] + ": file not found"},
		{url + "#nosuchbranch:stack.yaml", `ref "nosuchbranch" not found`},
		{"git+file:///nonexistent/repo.git#main", "list refs"},
	} {
		if _, err := f.Fetch(ctx, tt.source); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want %q", tt.source, err, tt.err)
		}
	}
}

// TestFetchGitHTTPS serves the repository through the real `git
// http-backend` CGI behind TLS.
func TestFetchGitHTTPS(t *testing.T) {
	g := newGitFixture(t)
	backend := filepath.Join(strings.TrimSpace(g.git("", "--exec-path")), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Skipf("git-http-backend not installed: %v", err)
	}
	id := g.commit(map[string]string{"stacks/shop1.yaml": "stack: shop1\n"})
	srv := httptest.NewTLSServer(&cgi.Handler{
		Path: backend,
		Root: "/git",
		Env:  []string{"GIT_PROJECT_ROOT=" + filepath.Dir(g.bare), "GIT_HTTP_EXPORT_ALL=1"},
	})
	defer srv.Close()
	source := "git+" + srv.URL + "/git/stacks.git#main:stacks/shop1.yaml"
	rev, err := New(Options{CABundle: certPEM(srv)}).Fetch(context.Background(), source)
	if err != nil {
		t.Fatal(err)
	}
	if rev.ID != id || string(rev.Data) != "stack: shop1\n" {
		t.Errorf("got %s %q", rev.ID, rev.Data)
	}
	if _, err := New(Options{}).Fetch(context.Background(), source); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted TLS certificate accepted: %v", err)
	}
}

func TestWatchReportsOnlyChanges(t *testing.T) {
	g := newGitFixture(t)
	first := g.commit(map[string]string{"stack.yaml": "stack: a\n"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Revision, 10)
	w := New(Options{}).NewWatcher("git+file://"+g.bare+"#main", time.Hour, "", func(r Revision) { got <- r })
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	next := func() Revision {
		t.Helper()
		select {
		case r := <-got:
			return r
		case <-time.After(20 * time.Second):
			t.Fatal("no revision reported")
		}
		return Revision{}
	}
	if r := next(); r.ID != first {
		t.Fatalf("first revision %s, want %s", r.ID, first)
	}
	for range 5 {
		w.Poke() // unchanged: must not be reported
		time.Sleep(20 * time.Millisecond)
	}
	second := g.commit(map[string]string{"stack.yaml": "stack: b\n"})
	w.Poke()
	if r := next(); r.ID != second || string(r.Data) != "stack: b\n" {
		t.Fatalf("after a commit: %s %q, want %s", r.ID, r.Data, second)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
	if len(got) != 0 {
		t.Errorf("unchanged revision reported again: %+v", <-got)
	}
}

func TestWatchSinceSkipsRunningRevision(t *testing.T) {
	g := newGitFixture(t)
	first := g.commit(map[string]string{"stack.yaml": "stack: a\n"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Revision, 10)
	w := New(Options{}).NewWatcher("git+file://"+g.bare, time.Hour, first, func(r Revision) { got <- r })
	go w.Run(ctx)
	second := g.commit(map[string]string{"stack.yaml": "stack: b\n"})
	w.Poke()
	select {
	case r := <-got:
		if r.ID != second {
			t.Fatalf("reported %s, want only the new %s", r.ID, second)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no revision reported")
	}
}

// FuzzParseSource: any string either parses to a consistent Source or
// errors; never a panic.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"/etc/s.yaml", "https://h/s", "git+https://h/r.git#main:a/b.yaml", "git+ssh://u@h:22/r#:x", "git+file:///r#v1", "file:///x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := Parse(raw)
		if err != nil {
			return
		}
		switch s.Kind {
		case KindPath:
			if s.Path == "" {
				t.Fatalf("%q: path source without a path", raw)
			}
		case KindHTTP:
			if s.URL == "" {
				t.Fatalf("%q: http source without URL", raw)
			}
		case KindGit:
			if s.URL == "" || s.File == "" {
				t.Fatalf("%q: git source %+v", raw, s)
			}
		default:
			t.Fatalf("%q: kind %v", raw, s.Kind)
		}
	})
}

// TestFetchGitBoundsTheClone: a repository whose tree at the ref holds
// more than MaxClone bytes of objects is refused with an error naming the
// bound, and fetched once the bound allows it.
func TestFetchGitBoundsTheClone(t *testing.T) {
	g := newGitFixture(t)
	big := make([]byte, 2<<20)
	rand.Read(big) // incompressible: the pack is as large as the blob
	g.commit(map[string]string{"stack.yaml": "stack: one\n", "assets/big.bin": string(big)})
	source := "git+file://" + g.bare + "#main"
	if _, err := New(Options{MaxClone: 1 << 20}).Fetch(context.Background(), source); err == nil || !strings.Contains(err.Error(), "more than 1048576 bytes of objects") {
		t.Fatalf("clone of 2 MiB with a 1 MiB bound: %v", err)
	}
	rev, err := New(Options{}).Fetch(context.Background(), source)
	if err != nil || string(rev.Data) != "stack: one\n" {
		t.Fatalf("with the default bound: %q, %v", rev.Data, err)
	}
}
