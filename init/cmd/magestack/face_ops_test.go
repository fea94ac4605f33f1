package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/api"
	"magestack/init/cluster"
	"magestack/init/stackfile"
	"magestack/services/render"
)

func TestOpsFacesRefuseBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func([]string, io.Writer, io.Writer) int
		args []string
		want string
	}{
		{"maintenance", maintenanceFace, []string{"frobnicate"}, `want on, off or status and at most one SITE`},
		{"maintenance", maintenanceFace, []string{"on", "a", "b"}, `got ["on" "a" "b"]`},
		{"maintenance", maintenanceFace, []string{"-o", "yaml"}, `-o "yaml": want table or json`},
		{"reload", reloadFace, nil, "want one unit"},
		{"reload", reloadFace, []string{"web1/nginx/x"}, `unit "web1/nginx/x": want <role> or <role>/<service>`},
		{"reload", reloadFace, []string{"web 1"}, `"web 1" is not a valid name`},
	} {
		var out, errb bytes.Buffer
		if rc := tc.run(tc.args, &out, &errb); rc != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%s %q: rc %d, stderr %q; want 2 and %q", tc.name, tc.args, rc, errb.String(), tc.want)
		}
	}
}

// The CLI shows what PID 1 answers: the sites' modes as a table, and
// PID 1's refusal (a failed config test) as the error, exit 1.
func TestOpsFacesTalkToTheAPI(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv := api.NewServer(api.Options{Socket: sock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv.Handle("GET /v1/maintenance", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, []MaintenanceSite{{Site: "shop/www", Domains: []string{"shop.example.com"}, Allow: []string{"192.0.2.101/32"},
			On: true, Instances: map[string]bool{"web1": true, "web2": false}, Errors: map[string]string{"web3": "role exec: not running"}}})
	}))
	srv.Handle("POST /v1/reload/{unit...}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("unit") == "web1/nginx" {
			api.WriteError(w, http.StatusUnprocessableEntity, "reload web1/nginx refused: config test `nginx -t` failed (exit 1)")
			return
		}
		api.WriteJSON(w, http.StatusOK, ReloadReply{Unit: "lb1", Services: []ReloadedService{{Service: "haproxy", Check: []string{"haproxy", "-c"}, Reloaded: true, PID: 7}}})
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var out, errb bytes.Buffer
	// The server starts on its own goroutine: retry while the socket is not there yet.
	for range 50 {
		out.Reset()
		errb.Reset()
		maintenanceFace([]string{"--socket", sock}, &out, &errb)
		if !strings.Contains(errb.String(), "is magestack running") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "shop/www  on           web1=on,web2=off,web3=?  192.0.2.101/32  shop.example.com") {
		t.Errorf("maintenance status table:\n%s", out.String())
	}
	if !strings.Contains(errb.String(), "shop/www on web3: role exec: not running") {
		t.Errorf("maintenance status errors: %q", errb.String())
	}
	out.Reset()
	errb.Reset()
	if rc := reloadFace([]string{"web1/nginx", "--socket", sock}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "magestack reload: reload web1/nginx refused: config test `nginx -t` failed") {
		t.Errorf("refused reload: rc %d, stderr %q", rc, errb.String())
	}
	out.Reset()
	if rc := reloadFace([]string{"lb1", "--socket", sock}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "lb1/haproxy: config test passed (haproxy -c), reloaded (pid 7)") {
		t.Errorf("reload: rc %d, out %q", rc, out.String())
	}
}

// A paired host follows the cluster's maintenance switches: a site the
// peer switched on is recorded here (web instances started later render
// the mode), and cleared when the peer switches it off.
func TestMaintenanceFollowsTheCluster(t *testing.T) {
	st, err := stackfile.Parse("pair.yaml", []byte(`stack: shop
hosts: [{name: dh1, mac: "52:54:00:00:00:01"}]
sites:
  - {group: shop, name: www, domains: [www.shop.example]}
  - {group: shop, name: blog, domains: [blog.shop.example]}
`))
	if err != nil {
		t.Fatal(err)
	}
	b := &bootEnv{log: slog.New(slog.DiscardHandler), stack: st, maintenanceDir: t.TempDir()}
	www, blog := st.Sites[0], st.Sites[1]
	var mu sync.Mutex
	settings := []cluster.Setting{}
	set := func(s ...cluster.Setting) {
		mu.Lock()
		settings = s
		mu.Unlock()
	}
	get := func() []cluster.Setting {
		mu.Lock()
		defer mu.Unlock()
		return settings
	}
	changed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.followClusterMaintenance(ctx, get, changed); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitMode := func(what string, wantWWW, wantBlog bool) {
		t.Helper()
		changed <- struct{}{}
		deadline := time.Now().Add(10 * time.Second)
		for b.maintenanceOn(www) != wantWWW || b.maintenanceOn(blog) != wantBlog {
			if time.Now().After(deadline) {
				t.Fatalf("%s: www on=%v blog on=%v, want %v %v", what, b.maintenanceOn(www), b.maintenanceOn(blog), wantWWW, wantBlog)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	set(cluster.Setting{Key: "maintenance/shop/www", Value: "on"}, cluster.Setting{Key: "unrelated", Value: "x"})
	waitMode("www switched on by the peer", true, false)
	set(cluster.Setting{Key: "maintenance/shop/blog", Value: "on"})
	waitMode("www off, blog on", false, true)
	set()
	waitMode("all cleared", false, false)
}

// Operator commands see the stack in force: a site or instance a live
// revision added is found, not only what the host booted with.
func TestStackIsTheRevisionInForce(t *testing.T) {
	booted, _ := stackfile.Parse("a.yaml", []byte("stack: a\nhosts: [{name: dh1, mac: \"52:54:00:00:00:01\"}]\n"))
	next, _ := stackfile.Parse("b.yaml", []byte("stack: a\nhosts: [{name: dh1, mac: \"52:54:00:00:00:01\"}]\nsites: [{group: shop, name: new, domains: [new.example]}]\n"))
	b := &bootEnv{stack: booted}
	if b.Stack() != booted {
		t.Fatal("before the reconciler runs, Stack is the booted stack")
	}
	var inForce *stackfile.Stack
	b.running = func() *stackfile.Stack { return inForce }
	if b.Stack() != booted {
		t.Error("a reconciler with nothing in force yet hides the booted stack")
	}
	inForce = next
	if _, err := render.FindSite(b.Stack(), "new"); err != nil {
		t.Errorf("the site a revision added is not found: %v", err)
	}
}
