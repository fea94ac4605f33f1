package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/init/api"
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
