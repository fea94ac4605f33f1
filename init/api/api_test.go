package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"magestack/init/supervise"
)

const busybox = "/bin/busybox"

// TestMain doubles as an unprivileged API client for the peer-credential test.
func TestMain(m *testing.M) {
	if sock := os.Getenv("MAGESTACK_API_TEST_CLIENT"); sock != "" {
		_, err := NewClient(sock).Status(context.Background())
		fmt.Print(err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fixture is a real supervisor with real processes behind a real server.
type fixture struct {
	sup    *supervise.Supervisor
	socket string
	client *Client
}

func startServer(t *testing.T, opts Options, units map[string]string) *fixture {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("needs %s: %v", busybox, err)
	}
	sup := supervise.New(slog.New(slog.NewTextHandler(io.Discard, nil)), supervise.Options{})
	for name, script := range units {
		if err := sup.Add(supervise.Spec{Name: name, Command: []string{busybox, "sh", "-c", script}, StopGrace: 2 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sup.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if opts.Socket == "" {
		opts.Socket = filepath.Join(t.TempDir(), "run", "api.sock")
	}
	opts.Units = sup
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := NewServer(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not shut down")
		}
		sctx, c := context.WithTimeout(context.Background(), 20*time.Second)
		defer c()
		sup.StopAll(sctx)
	})
	waitFor(t, "socket", func() bool { _, err := os.Stat(opts.Socket); return err == nil })
	wctx, wc := context.WithTimeout(context.Background(), 15*time.Second)
	defer wc()
	if err := sup.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return &fixture{sup: sup, socket: opts.Socket, client: NewClient(opts.Socket)}
}

func (f *fixture) pid(t *testing.T, name string) int {
	st, err := f.sup.Unit(name)
	if err != nil {
		t.Fatal(err)
	}
	return st.PID
}

func TestStatusActionsAndErrors(t *testing.T) {
	timeline := func() any {
		return []map[string]any{{"step": "mounts", "ms": 3}, {"step": "netconf", "ms": 40}}
	}
	f := startServer(t, Options{Timeline: timeline}, map[string]string{
		"db1":  "echo db up; exec sleep 1000",
		"web1": "exec sleep 1000",
	})
	ctx := context.Background()

	st, err := f.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Units) != 2 {
		t.Fatalf("status has %d units", len(st.Units))
	}
	for _, u := range st.Units {
		if u.State != supervise.StateReady || u.PID == 0 {
			t.Errorf("%s: %s pid %d", u.Name, u.State, u.PID)
		}
	}

	// Restart: a new process.
	old := f.pid(t, "web1")
	reply, err := f.client.Action(ctx, "restart", "web1")
	if err != nil {
		t.Fatal(err)
	}
	if reply.Status.PID == old || reply.Unit != "web1" {
		t.Errorf("restart reply %+v, old pid %d", reply, old)
	}
	if syscall.Kill(old, 0) == nil {
		t.Errorf("old web1 pid %d alive after restart", old)
	}

	// Stop then start.
	if r, err := f.client.Action(ctx, "stop", "db1"); err != nil || r.Status.State != supervise.StateStopped {
		t.Fatalf("stop: %+v %v", r, err)
	}
	if _, err := f.client.Action(ctx, "start", "db1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "db1 ready again", func() bool {
		st, _ := f.sup.Unit("db1")
		return st.State == supervise.StateReady
	})

	// Bad requests: clear errors, nothing changed.
	before := f.pid(t, "web1")
	bad := []struct {
		method, path string
		code         int
		msg          string
	}{
		{"POST", "/v1/units/ghost/restart", 404, `unknown unit "ghost"`},
		{"POST", "/v1/units/web1/explode", 404, `unknown action "explode"`},
		{"GET", "/v1/units/web1/restart", 405, "restart needs POST"},
		{"POST", "/v1/units/we%20b1/restart", 400, `bad unit name "we b1"`},
		{"POST", "/v1/units/a/b/c/restart", 400, "want /v1/units/<role>[/<service>]/<action>"},
		{"POST", "/v1/units/web1/nginx/restart", 404, "services inside units are not reachable"},
		{"GET", "/v1/units/web1/logs?n=lots", 400, `n="lots"`},
		{"GET", "/v1/nothing", 404, "no endpoint GET /v1/nothing"},
	}
	for _, b := range bad {
		err := f.client.Do(ctx, b.method, b.path, nil, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != b.code || !strings.Contains(ae.Message, b.msg) {
			t.Errorf("%s %s = %v, want %d with %q", b.method, b.path, err, b.code, b.msg)
		}
	}
	if after := f.pid(t, "web1"); after != before {
		t.Errorf("a bad request changed web1: pid %d → %d", before, after)
	}

	// Events stream while things happen.
	ectx, ecancel := context.WithCancel(ctx)
	evs := make(chan supervise.Event, 100)
	edone := make(chan error, 1)
	go func() { edone <- f.client.Events(ectx, func(ev supervise.Event) { evs <- ev }) }()
	time.Sleep(200 * time.Millisecond) // subscribed
	if _, err := f.client.Action(ctx, "restart", "db1"); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	waitFor(t, "restart events", func() bool {
		for len(evs) > 0 {
			if ev := <-evs; ev.Unit == "db1" {
				kinds = append(kinds, ev.Kind)
			}
		}
		return slices.Contains(kinds, "stopped") && slices.Contains(kinds, "started")
	})
	ecancel()
	if err := <-edone; err != nil {
		t.Errorf("events ended with %v", err)
	}

	// Boot timeline passes through.
	raw, err := f.client.Boot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var steps []map[string]any
	if err := json.Unmarshal(raw, &steps); err != nil || len(steps) != 2 || steps[1]["step"] != "netconf" {
		t.Errorf("boot = %s (%v)", raw, err)
	}
}

func TestLogsAndFollow(t *testing.T) {
	f := startServer(t, Options{}, map[string]string{
		"mail1": `i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.1; done`,
	})
	ctx := context.Background()
	waitFor(t, "ticks", func() bool {
		var b bytes.Buffer
		f.client.Logs(ctx, "mail1", 0, false, &b)
		return strings.Contains(b.String(), "stdout tick 2")
	})
	var b bytes.Buffer
	if err := f.client.Logs(ctx, "mail1", 2, false, &b); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); len(lines) != 2 {
		t.Errorf("n=2 gave %d lines: %q", len(lines), b.String())
	}
	// Follow sees lines written after it began.
	fctx, cancel := context.WithCancel(ctx)
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- f.client.Logs(fctx, "mail1", 1, true, out) }()
	waitFor(t, "followed lines", func() bool { return strings.Count(out.String(), "\n") >= 4 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after cancel")
	}
	ticks := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[1] != "stdout" || f[2] != "tick" || ticks[f[3]] {
			t.Errorf("followed line %q (duplicate or malformed)", l)
		}
		ticks[f[3]] = true
	}
}

func TestServicesForwardedToRoleAPI(t *testing.T) {
	// The role's own supervisor (what role-init runs) behind its own socket.
	role := startServer(t, Options{}, map[string]string{"nginx": "echo nginx up; exec sleep 1000"})
	host := startServer(t, Options{ServiceSocket: func(unit string, pid int) string {
		if unit == "web1" {
			return role.socket
		}
		return "/nonexistent/api.sock"
	}}, map[string]string{"web1": "exec sleep 1000", "db1": "exec sleep 1000"})
	ctx := context.Background()

	st, err := host.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range st.Units {
		names = append(names, u.Name)
	}
	if fmt.Sprint(names) != "[db1 web1 web1/nginx]" && fmt.Sprint(names) != "[web1 web1/nginx db1]" {
		t.Errorf("units %v", names)
	}
	if !strings.Contains(st.Errors["db1"], "no socket at /nonexistent/api.sock") {
		t.Errorf("errors %v", st.Errors)
	}
	old := role.pid(t, "nginx")
	r, err := host.client.Action(ctx, "restart", "web1/nginx")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.PID == old || r.Status.PID == 0 {
		t.Errorf("web1/nginx pid %d → %d", old, r.Status.PID)
	}
	var b bytes.Buffer
	if err := host.client.Logs(ctx, "web1/nginx", 0, false, &b); err != nil || !strings.Contains(b.String(), "stdout nginx up") {
		t.Errorf("forwarded logs %q %v", b.String(), err)
	}
	// Following through the host streams lines as they come.
	fctx, fcancel := context.WithCancel(ctx)
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- host.client.Logs(fctx, "web1/nginx", 1, true, out) }()
	time.Sleep(200 * time.Millisecond)
	if _, err := host.client.Action(ctx, "restart", "web1/nginx"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "followed restart through the host", func() bool {
		return strings.Count(out.String(), "stdout nginx up") >= 1 && strings.Contains(out.String(), "started: pid")
	})
	fcancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("forwarded follow did not end after cancel")
	}
	err = host.client.Do(ctx, "POST", "/v1/units/web1/php/restart", nil, nil)
	if err == nil || !strings.Contains(err.Error(), `unknown unit "php"`) {
		t.Errorf("unknown service: %v", err)
	}
}

func TestSectionsAndHandlers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv := NewServer(Options{Socket: sock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv.AddStatus("firewall", func(ctx context.Context) (any, error) { return map[string]int{"rules": 42}, nil })
	srv.AddStatus("cluster", func(ctx context.Context) (any, error) { return nil, errors.New("no witness") })
	srv.AddStatus("broken", func(ctx context.Context) (any, error) { panic("oops") })
	srv.Handle("GET /v1/firewall", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, 200, map[string]string{"table": "magestack"})
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx)
	waitFor(t, "socket", func() bool { _, err := os.Stat(sock); return err == nil })
	c := NewClient(sock)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fwSection map[string]int
	json.Unmarshal(st.Sections["firewall"], &fwSection)
	if fwSection["rules"] != 42 || st.Errors["cluster"] != "no witness" || !strings.Contains(st.Errors["broken"], "panic: oops") {
		t.Errorf("sections %s errors %v", st.Sections, st.Errors)
	}
	var fw map[string]string
	if err := c.Do(ctx, "GET", "/v1/firewall", nil, &fw); err != nil || fw["table"] != "magestack" {
		t.Errorf("registered handler: %v %v", fw, err)
	}
	if err := c.Do(ctx, "POST", "/v1/units/web1/restart", nil, nil); err == nil || !strings.Contains(err.Error(), "supervises no units") {
		t.Errorf("units on a server without units: %v", err)
	}
	if _, err := c.Boot(ctx); err == nil || !strings.Contains(err.Error(), "no boot timeline") {
		t.Errorf("boot without timeline: %v", err)
	}
	// Units arrive later (PID 1 serves before the roles' supervisor exists).
	sup := supervise.New(slog.New(slog.NewTextHandler(io.Discard, nil)), supervise.Options{})
	sup.Add(supervise.Spec{Name: "web1", Command: []string{busybox, "true"}})
	srv.SetUnits(sup, nil)
	st, err = c.Status(ctx)
	if err != nil || len(st.Units) != 1 || st.Units[0].Name != "web1" || st.Units[0].State != supervise.StateStopped {
		t.Errorf("status after SetUnits: %+v %v", st, err)
	}
}

func TestListenSocketFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "magestack")
	sock := filepath.Join(dir, "api.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(sock)
	dst, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
		t.Errorf("socket %v, dir %v: want 0600 and 0700", st.Mode().Perm(), dst.Mode().Perm())
	}
	// A live socket is not replaced.
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Errorf("second Listen = %v", err)
	}
	// A stale one (server gone, file left) is.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := NewClient(sock).Status(context.Background()); err == nil || !strings.Contains(err.Error(), "stale socket") {
		t.Errorf("client on stale socket: %v", err)
	}
	ln, err = Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
	// Something else in the way is an error.
	os.WriteFile(sock, []byte("x"), 0o600)
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a file = %v", err)
	}
	// No socket at all: the operator is told.
	_, err = NewClient(filepath.Join(dir, "absent.sock")).Status(context.Background())
	if err == nil || err.Error() != "is magestack running? no socket at "+filepath.Join(dir, "absent.sock") {
		t.Errorf("absent socket: %v", err)
	}
}

func TestPeerCredentialsRefuseNonRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	dir, err := os.MkdirTemp("", "msapi")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")
	f := startServer(t, Options{Socket: sock}, map[string]string{"web1": "exec sleep 1000"})
	// Open the file modes so only the peer-credential check stands in the way.
	os.Chmod(dir, 0o755)
	os.Chmod(sock, 0o666)
	// A copy of the test binary nobody can execute.
	self, _ := os.Executable()
	exe := filepath.Join(dir, "client")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Dir(dir)); err != nil || st.Mode().Perm()&0o001 == 0 {
		t.Skipf("%s is not traversable by other users", filepath.Dir(dir))
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAGESTACK_API_TEST_CLIENT="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "uid 65534 may not use the magestack API") {
		t.Errorf("unprivileged client got %q", out)
	}
	// Root still gets in.
	if _, err := f.client.Status(context.Background()); err != nil {
		t.Errorf("root refused: %v", err)
	}
}
