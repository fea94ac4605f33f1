package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/init/api"
	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/reconcile"
	"magestack/init/stackfile"
)

func runConfig(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := configFace(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const cfgGood = "stack: shop1\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\"}\nroles:\n  web: {count: 1}\n"

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", cfgGood)
	bad := writeFile(t, dir, "bad.yaml", "stack: shop1\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\"}\nroles:\n  web: {count: -1}\n  wbe: {}\n")

	code, out, _ := runConfig(t, "", "validate", good)
	if code != 0 || out != good+": ok\n" {
		t.Errorf("good file: %d %q", code, out)
	}
	code, _, errs := runConfig(t, "", "validate", good, bad)
	want := bad + ":5:9: roles.web.count: must be ≥ 0, got -1\n" + bad + ":6:3: roles.wbe: unknown role (did you mean \"web\"?)\n"
	if code != 1 || errs != want {
		t.Errorf("bad file: %d\n%s\nwant\n%s", code, errs, want)
	}
	code, out, _ = runConfig(t, "", "validate", "-o", "json", bad)
	var res []validateResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if code != 1 || len(res) != 1 || res[0].Valid || len(res[0].Errors) != 2 || res[0].Errors[0].Line != 5 || res[0].Errors[0].Col != 9 || res[0].Errors[0].Path != "roles.web.count" {
		t.Errorf("json: %d %s", code, out)
	}
	if code, _, errs := runConfig(t, "stack: [\n", "validate", "-"); code != 1 || !strings.HasPrefix(errs, "-:") {
		t.Errorf("stdin: %d %q", code, errs)
	}
	if code, _, _ := runConfig(t, "", "validate"); code != 2 {
		t.Errorf("no file: exit %d, want 2", code)
	}
}

func TestConfigShow(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	// No store yet: the built-in default stack.
	code, out, errs := runConfig(t, "", "show", "-dir", store)
	if code != 0 {
		t.Fatalf("show: %d %s", code, errs)
	}
	s, err := stackfile.Parse("shown", []byte(out))
	if err != nil || !stackfile.Equal(s, stackfile.Default()) {
		t.Errorf("show of the default stack does not parse back to it: %v\n%s", err, out)
	}
	good := writeFile(t, dir, "good.yaml", strings.Replace(cfgGood, "count: 1", "count: 2", 1))
	code, out, _ = runConfig(t, "", "show", good, "-instances")
	if code != 0 || !strings.Contains(out, "web2.i      web      172.16.0.101  dh1") {
		t.Errorf("instances: %d\n%s", code, out)
	}
	code, out, _ = runConfig(t, "", "show", "-o", "json", good)
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil || code != 0 || m["stack"] != "shop1" || m["internal"] != "172.16.0.0/24" {
		t.Errorf("json: %d %v %s", code, err, out)
	}
}

func TestConfigDiff(t *testing.T) {
	dir := t.TempDir()
	one := writeFile(t, dir, "one.yaml", cfgGood)
	two := writeFile(t, dir, "two.yaml", strings.Replace(cfgGood, "count: 1", "count: 2", 1))
	code, out, _ := runConfig(t, "", "diff", one, two)
	if code != 1 || out != "+ instance web2 (172.16.0.101 on dh1)\n~ firewall ruleset: instances\n" {
		t.Errorf("diff: %d %q", code, out)
	}
	if code, out, _ := runConfig(t, "", "diff", one, one); code != 0 || out != "no changes\n" {
		t.Errorf("same: %d %q", code, out)
	}
	code, out, _ = runConfig(t, "", "diff", "-o", "json", one, two)
	var c stackfile.Changes
	if err := json.Unmarshal([]byte(out), &c); err != nil || len(c.Added) != 1 || c.Added[0].Name != "web2" {
		t.Errorf("json: %v %s", err, out)
	}
	bad := writeFile(t, dir, "bad.yaml", "stack: [\n")
	if code, _, errs := runConfig(t, "", "diff", one, bad); code != 2 || !strings.Contains(errs, "new: "+bad+":") {
		t.Errorf("invalid new file: %d %q", code, errs)
	}
}

func cfgRev(content string) configsource.Revision {
	h := sha256.Sum256([]byte(content))
	return configsource.Revision{ID: hex.EncodeToString(h[:]), Data: []byte(content), Source: "git+file:///srv/stacks.git#main", Time: time.Now()}
}

func TestConfigHistoryStatusRollback(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	st, err := configstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := cfgRev(cfgGood)
	b := cfgRev(strings.Replace(cfgGood, "count: 1", "count: 2", 1))
	broken := cfgRev("stack: [\n")
	st.MarkApplied(a)
	st.MarkApplied(b)
	st.MarkRejected(broken, errors.New("broken.yaml:2: YAML syntax: did not find expected node content"))

	code, out, _ := runConfig(t, "", "history", "-dir", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || !strings.Contains(lines[1], "rejected  "+broken.ID[:12]) || !strings.Contains(lines[1], "YAML syntax") || !strings.Contains(lines[3], "applied   "+a.ID[:12]) {
		t.Errorf("history: %d\n%s", code, out)
	}
	code, out, _ = runConfig(t, "", "status", "-dir", dir)
	if code != 0 || !strings.Contains(out, "applied:  "+b.ID[:12]) || !strings.Contains(out, "rejected: "+broken.ID[:12]) {
		t.Errorf("status: %d\n%s", code, out)
	}
	// diff against the last good revision (b): back to one web instance.
	one := filepath.Join(t.TempDir(), "one.yaml")
	os.WriteFile(one, []byte(cfgGood), 0o644)
	if code, out, _ := runConfig(t, "", "diff", "-dir", dir, one); code != 1 || out != "- instance web2 (172.16.0.101 on dh1)\n~ firewall ruleset: instances\n" {
		t.Errorf("diff against last good: %d %q", code, out)
	}

	code, out, errs := runConfig(t, "", "rollback", "-dir", dir, a.ID[:10])
	if code != 0 || !strings.Contains(out, "last good revision is now "+a.ID) {
		t.Fatalf("rollback: %d %s %s", code, out, errs)
	}
	if lg, err := st.LastGood(); err != nil || lg.ID != a.ID {
		t.Errorf("last good after rollback: %v %s", err, lg.ID)
	}
	code, _, errs = runConfig(t, "", "rollback", "-dir", dir, broken.ID[:10])
	if code != 1 || !strings.Contains(errs, "cannot be rolled back to: revision "+broken.ID[:12]+":1: YAML syntax") {
		t.Errorf("rollback to a broken revision: %d %s", code, errs)
	}
	if lg, _ := st.LastGood(); lg.ID != a.ID {
		t.Errorf("failed rollback moved last good to %s", lg.ID)
	}
	code, out, _ = runConfig(t, "", "history", "-o", "json", "-dir", dir)
	var h []configstore.Entry
	if err := json.Unmarshal([]byte(out), &h); err != nil || code != 0 || len(h) != 4 || h[3].Result != configstore.RolledBack {
		t.Errorf("history json: %v %s", err, out)
	}
}

func TestConfigFetchPath(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", cfgGood)
	code, out, errs := runConfig(t, "", "fetch", good)
	if code != 0 || !strings.Contains(out, "revision ") || !strings.HasSuffix(out, "valid\n") {
		t.Errorf("fetch: %d %q %q", code, out, errs)
	}
	bad := writeFile(t, dir, "bad.yaml", "stack: shop1\n")
	if code, _, errs := runConfig(t, "", "fetch", bad); code != 1 || !strings.Contains(errs, "hosts: at least one host is required") {
		t.Errorf("fetch invalid: %d %q", code, errs)
	}
	if code, _, _ := runConfig(t, "", "fetch", filepath.Join(dir, "missing.yaml")); code != 2 {
		t.Errorf("fetch missing: %d", code)
	}
}

// TestConfigLive drives apply, diff, status and rollback through a real
// API server on a unix socket, backed by a Reconciler (its appliers are not
// wired here, so changes are reported as skipped) and a store.
func TestConfigLive(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "api.sock")
	src := writeFile(t, dir, "stack.yaml", cfgGood)
	store, _ := configstore.Open(filepath.Join(dir, "store"))
	fetcher := configsource.New(configsource.Options{})
	r := reconcile.New(nil, store, reconcile.Appliers{})
	first, err := fetcher.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Options{Socket: sock})
	(&reconcile.Live{Reconciler: r, Fetcher: fetcher, Source: src, Store: store}).Register(srv)
	ln, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.ServeListener(ctx, ln)

	code, out, errs := runConfig(t, "", "status", "-socket", sock)
	if code != 0 || !strings.Contains(out, "running:  "+first.ID[:12]) || !strings.Contains(out, "source:   "+src) {
		t.Fatalf("status: %d %q %q", code, out, errs)
	}
	two := writeFile(t, dir, "two.yaml", strings.Replace(cfgGood, "count: 1", "count: 2", 1))
	if code, out, _ := runConfig(t, "", "diff", "-socket", sock, two); code != 1 || !strings.HasPrefix(out, "+ instance web2 (172.16.0.101 on dh1)\n") {
		t.Errorf("live diff: %d %q", code, out)
	}
	bad := writeFile(t, dir, "bad.yaml", "stack: s\nrolez: {}\n")
	if code, _, errs := runConfig(t, "", "diff", "-socket", sock, bad); code != 2 || !strings.Contains(errs, bad+":2:1: rolez: unknown key (did you mean \"roles\"?)") {
		t.Errorf("live diff of an invalid file: %d %q", code, errs)
	}

	// Commit-equivalent: the source changes, apply picks it up now.
	os.WriteFile(src, []byte(strings.Replace(cfgGood, "count: 1", "count: 2", 1)), 0o644)
	code, out, errs = runConfig(t, "", "apply", "-socket", sock)
	if code != 0 || !strings.Contains(out, "+ instance web2") || !strings.Contains(out, "not applied (no applier wired): start web2") {
		t.Errorf("apply: %d %q %q", code, out, errs)
	}
	if s, _ := r.Running(); s.Roles["web"].Count != 2 {
		t.Errorf("running web count %d", s.Roles["web"].Count)
	}
	// A broken revision: refused with its position, running stack unchanged.
	_, good := r.Running()
	os.WriteFile(src, []byte("stack: s\nhosts: []\n"), 0o644)
	code, _, errs = runConfig(t, "", "apply", "-socket", sock)
	if code != 1 || !strings.Contains(errs, "stack.yaml:2:1: hosts: at least one host is required") {
		t.Errorf("broken apply: %d %q", code, errs)
	}
	if _, running := r.Running(); running.ID != good.ID {
		t.Errorf("broken revision replaced the running one")
	}
	code, out, _ = runConfig(t, "", "status", "-socket", sock, "-o", "json")
	var st reconcile.StatusReply
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || st.Store.LastRejected == nil || st.Running.ID != good.ID {
		t.Errorf("status json: %v %s", err, out)
	}
	// Live rollback to the first revision.
	code, out, errs = runConfig(t, "", "rollback", "-socket", sock, first.ID[:12])
	if code != 0 || !strings.Contains(out, "- instance web2") {
		t.Errorf("rollback: %d %q %q", code, out, errs)
	}
	if _, running := r.Running(); running.ID != first.ID {
		t.Errorf("running %s after rollback, want %s", running.ID, first.ID)
	}
	if code, _, errs := runConfig(t, "", "rollback", "-socket", sock, "abcdef12"); code != 1 || !strings.Contains(errs, "not in the store") {
		t.Errorf("rollback to unknown: %d %q", code, errs)
	}
}
