package reconcile

import (
	"context"
	"encoding/pem"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/init/configsource"
	"magestack/init/configstore"
)

// TestGitRepositoryLifecycle runs the story against a real Git
// repository served by `git http-backend` over TLS: boot from it, commit a
// scale-up (only web2 starts), commit a broken file (rejected, running
// stack unchanged), then "reboot" with the repository down (last good).
func TestGitRepositoryLifecycle(t *testing.T) {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git binary not installed (needed to build the fixture repository)")
	}
	out, err := exec.Command(gitBin, "--exec-path").Output()
	if err != nil {
		t.Skipf("git --exec-path: %v", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Skipf("git-http-backend not installed: %v", err)
	}
	dir := t.TempDir()
	bare, work := filepath.Join(dir, "stacks.git"), filepath.Join(dir, "work")
	git := func(cwd string, args ...string) {
		t.Helper()
		cmd := exec.Command(gitBin, args...)
		cmd.Dir = cwd
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.net",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.net", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	commit := func(content string) {
		t.Helper()
		os.MkdirAll(filepath.Join(work, "stacks"), 0o755)
		os.WriteFile(filepath.Join(work, "stacks", "shop1.yaml"), []byte(content), 0o644)
		git(work, "add", "-A")
		git(work, "commit", "-q", "-m", "change")
		git(work, "push", "-q", "origin", "main")
	}
	git("", "init", "-q", "--bare", "-b", "main", bare)
	git("", "init", "-q", "-b", "main", work)
	git(work, "remote", "add", "origin", bare)
	commit(base)

	srv := httptest.NewTLSServer(&cgi.Handler{
		Path: backend, Root: "/git",
		Env: []string{"GIT_PROJECT_ROOT=" + dir, "GIT_HTTP_EXPORT_ALL=1"},
	})
	defer srv.Close()
	source := "git+" + srv.URL + "/git/stacks.git#main:stacks/shop1.yaml"
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	fetcher := configsource.New(configsource.Options{CABundle: ca})
	storeDir := filepath.Join(dir, "store")
	store, _ := configstore.Open(storeDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Boot from the repository.
	rev, _, origin, err := Initial(ctx, nil, fetcher, source, store)
	if err != nil || origin != FromSource {
		t.Fatalf("boot: %s %v", origin, err)
	}
	f := newFake()
	r := New(nil, store, f.appliers())
	if _, err := r.Apply(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if len(f.instances) != 7 {
		t.Fatalf("booted instances %v", f.instances)
	}
	f.calls = nil
	w := r.Watcher(ctx, fetcher, source, time.Hour)
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }() // no apply may outlive the test's temp dirs
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; calls %v", what, f.calls)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// web 1 -> 2: only web2 starts (and the firewall learns it).
	commit(edit("count: 1", "count: 2"))
	w.Poke()
	waitFor("web2", func() bool { s, _ := r.Running(); return s.Roles["web"].Count == 2 })
	if got := strings.Join(f.calls, ", "); got != "firewall, start web2" {
		t.Errorf("scale-up touched %q", got)
	}
	_, good := r.Running()

	// A broken commit is rejected; the running stack stays.
	f.calls = nil
	commit(edit("count: 1", "count: 2") + "roles:\n  web: {count: 3}\n")
	w.Poke()
	waitFor("the rejection", func() bool { st, _ := store.Status(); return st.LastRejected != nil })
	st, _ := store.Status()
	if !strings.Contains(st.LastRejected.Error, "stacks/shop1.yaml:8:1: roles: key written twice") {
		t.Errorf("rejection reason %q", st.LastRejected.Error)
	}
	if _, running := r.Running(); running.ID != good.ID || len(f.calls) != 0 {
		t.Errorf("broken revision changed the running stack: %s %v", running.ID, f.calls)
	}

	// Reboot with the repository unreachable: the last good revision.
	cancel()
	<-done
	srv.Close()
	rev, s, origin, err := Initial(context.Background(), nil, configsource.New(configsource.Options{CABundle: ca, Timeout: 5 * time.Second}), source, store)
	if origin != FromLastGood || rev.ID != good.ID || s.Roles["web"].Count != 2 || err == nil {
		t.Errorf("reboot: origin %s rev %s web %d err %v", origin, rev.ID, s.Roles["web"].Count, err)
	}
}
