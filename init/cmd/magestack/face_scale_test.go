package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/init/api"
	"magestack/init/configsource"
	"magestack/init/reconcile"
	"magestack/init/roleenv"
	"magestack/init/scaleoverride"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services/lbsync"
)

const scaleStack = `stack: scale
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
internal: 172.16.0.0/24
roles:
  web: {count: %d}
`

func scaleRev(web int) (configsource.Revision, *stackfile.Stack) {
	data := fmt.Sprintf(scaleStack, web)
	st, err := stackfile.Parse("stack.yaml", []byte(data))
	if err != nil {
		panic(err)
	}
	return configsource.Revision{ID: fmt.Sprintf("rev-web%d", web), Data: []byte(data), Source: "test"}, st
}

// recorder stands in for the instance appliers.
type recorder struct {
	mu     sync.Mutex
	calls  []string
	failOn string
}

func (f *recorder) appliers() reconcile.Appliers {
	call := func(c string) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, c)
		if c == f.failOn {
			return errors.New("injected failure")
		}
		return nil
	}
	return reconcile.Appliers{
		StartInstance: func(ctx context.Context, s *stackfile.Stack, in stackfile.Instance) error {
			return call("start " + in.Name)
		},
		StopInstance: func(ctx context.Context, in stackfile.Instance) error { return call("stop " + in.Name) },
		Firewall:     func(ctx context.Context, s *stackfile.Stack) error { return call("firewall") },
	}
}

func (f *recorder) take() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.calls, ", ")
	f.calls = nil
	return s
}

func doJSON(t *testing.T, h http.Handler, method, path string, body any, out any) int {
	t.Helper()
	var rd bytes.Buffer
	if body != nil {
		json.NewEncoder(&rd).Encode(body)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, &rd))
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, rec.Code, rec.Body.String(), err)
		}
	}
	return rec.Code
}

func TestScaleAPI(t *testing.T) {
	b := &bootEnv{log: slog.New(slog.DiscardHandler)}
	f := &recorder{}
	r := reconcile.New(b.log, nil, f.appliers())
	rev, st := scaleRev(1)
	r.Booted(st, rev)
	store := scaleoverride.Open(filepath.Join(t.TempDir(), scaleoverride.FileName))
	srv := api.NewServer(api.Options{Log: b.log})
	b.wireScaleStore(r, srv, nil, store)
	h := srv.Handler()

	for _, tc := range []struct {
		req  ScaleRequest
		want string
	}{
		{ScaleRequest{Role: "db", Count: 2}, "role db cannot scale"},
		{ScaleRequest{Role: "web", Count: 0}, "at least 1"},
		{ScaleRequest{Role: "nosuch", Count: 2}, `unknown role "nosuch"`},
		{ScaleRequest{Role: "web", Count: 151}, "at most 150"},
	} {
		var e struct{ Error string }
		if code := doJSON(t, h, "POST", "/v1/scale", tc.req, &e); code != http.StatusBadRequest || !strings.Contains(e.Error, tc.want) {
			t.Errorf("scale %+v: %d %q, want 400 saying %q", tc.req, code, e.Error, tc.want)
		}
	}
	if calls := f.take(); calls != "" {
		t.Errorf("refused requests changed the stack: %s", calls)
	}

	var rep ScaleReply
	if code := doJSON(t, h, "POST", "/v1/scale", ScaleRequest{Role: "web", Count: 3}, &rep); code != 200 || rep.Error != "" {
		t.Fatalf("scale web=3: %d %+v", code, rep)
	}
	if calls := f.take(); calls != "firewall, start web2, start web3" {
		t.Errorf("scale web=3 calls: %s", calls)
	}
	if rep.Running != 3 || rep.StackFile != 1 || rep.Override == nil || rep.Override.Count != 3 || rep.Override.Base != 1 {
		t.Errorf("scale web=3 reply: %+v override %+v", rep, rep.Override)
	}
	var roles []ScaleRole
	doJSON(t, h, "GET", "/v1/scale", nil, &roles)
	if len(roles) != 1 || roles[0].Running != 3 || roles[0].Override == nil {
		t.Errorf("GET /v1/scale = %+v", roles)
	}

	// A revision not touching web's count keeps the override; one changing
	// it ends the override.
	rev2 := rev
	rev2.ID, rev2.Data = "rev-web1-b", append([]byte(string(rev.Data)), []byte("sites: [{group: g, name: n, domains: [a.example]}]\n")...)
	if _, err := r.Apply(context.Background(), rev2); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Running(); s.Roles["web"].Count != 3 {
		t.Errorf("after an unrelated revision web count = %d, want the override's 3", s.Roles["web"].Count)
	}
	rev4, _ := scaleRev(4)
	if _, err := r.Apply(context.Background(), rev4); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Running(); s.Roles["web"].Count != 4 {
		t.Errorf("after the stack file set web to 4, running count = %d", s.Roles["web"].Count)
	}
	if list, _ := store.List(); len(list) != 0 {
		t.Errorf("override kept after the stack file changed web's count: %+v", list)
	}
	f.take()

	// A failing start rolls back and restores the previous overrides.
	f.failOn = "start web6"
	rep = ScaleReply{}
	doJSON(t, h, "POST", "/v1/scale", ScaleRequest{Role: "web", Count: 6}, &rep)
	if !strings.Contains(rep.Error, "web=6") || !strings.Contains(rep.Error, "injected failure") || len(rep.RolledBack) == 0 {
		t.Errorf("failing scale reply: %+v", rep)
	}
	if s, _ := r.Running(); s.Roles["web"].Count != 4 {
		t.Errorf("after a failed scale running count = %d, want 4", s.Roles["web"].Count)
	}
	if list, _ := store.List(); len(list) != 0 {
		t.Errorf("a failed scale left an override: %+v", list)
	}

	// Scaling to the stack file's count removes the override.
	f.failOn = ""
	rep = ScaleReply{}
	doJSON(t, h, "POST", "/v1/scale", ScaleRequest{Role: "web", Count: 2}, &rep)
	if rep.Error != "" || rep.Override == nil || rep.Running != 2 {
		t.Errorf("scale web=2: %+v", rep)
	}
	rep = ScaleReply{}
	doJSON(t, h, "POST", "/v1/scale", ScaleRequest{Role: "web", Count: 4}, &rep)
	if rep.Error != "" || rep.Override != nil || rep.Running != 4 {
		t.Errorf("scale back to the file's count: %+v", rep)
	}
}

func TestScaleFaceRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"db=2"}, "role db cannot scale"},
		{[]string{"web=x"}, "not a whole number"},
		{[]string{"web=1", "web=2"}, "one ROLE=COUNT at a time"},
		{[]string{"web"}, "want ROLE=COUNT"},
	} {
		var out, errb bytes.Buffer
		if rc := scaleFace(append(tc.args, "-socket", filepath.Join(t.TempDir(), "none.sock")), &out, &errb); rc != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("scale %v: rc %d stderr %q, want 2 and %q", tc.args, rc, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if rc := scaleFace([]string{"web=2", "-socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "is magestack running") {
		t.Errorf("no API: rc %d stderr %q", rc, errb.String())
	}
}

// TestLBSyncFollowsInstances runs a real HAProxy as the supervised lb1 and
// checks that a started web instance joins its backend and a stopping one
// is gone from it before its instance is stopped.
func TestLBSyncFollowsInstances(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (Debian package haproxy): ", err)
	}
	_, st1 := scaleRev(1)
	_, st2 := scaleRev(2)
	insts, _ := st2.Instances()
	var web1, web2 stackfile.Instance
	for _, in := range insts {
		switch in.Name {
		case "web1":
			web1 = in
		case "web2":
			web2 = in
		}
	}
	sup, sock, client, names := startTestLB(t, bin, web1)
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b := &bootEnv{log: log}
	lbs := b.newLBSync(sup, st1, "dh1")
	lbs.socket = func(int) string { return sock }
	running := st1
	lbs.runningStack = func() *stackfile.Stack { return running }
	var inLBAtStop []string
	f := &recorder{}
	inner := f.appliers()
	stop := inner.StopInstance
	inner.StopInstance = func(ctx context.Context, in stackfile.Instance) error {
		inLBAtStop = names()
		return stop(ctx, in)
	}
	a := lbs.wrap(inner)

	if err := a.StartInstance(ctx, st2, web2); err != nil {
		t.Fatal(err)
	}
	if got := names(); !slices.Equal(got, []string{"web1", "web2"}) {
		t.Errorf("after web2 started, lb1 has %v", got)
	}
	running = st2
	if err := a.StopInstance(ctx, web2); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(inLBAtStop, []string{"web1"}) {
		t.Errorf("when web2's instance was stopped, lb1 still had %v", inLBAtStop)
	}
	// The repair pass puts back what HAProxy lost (e.g. after its restart).
	if err := client.Remove(ctx, "web", "web1", time.Second); err != nil {
		t.Fatal(err)
	}
	lbs.converge(ctx, st1)
	if got := names(); !slices.Equal(got, []string{"web1"}) {
		t.Errorf("after the repair pass lb1 has %v, want web1 back", got)
	}
	if calls := f.take(); calls != "start web2, stop web2" {
		t.Errorf("inner applier calls: %s", calls)
	}
}

// startTestLB runs HAProxy as unit lb1 of a supervisor, with web1 in its
// web backend; names lists the backend's servers.
func startTestLB(t *testing.T, bin string, web1 stackfile.Instance) (sup *supervise.Supervisor, sock string, client *lbsync.Client, names func() []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	sock = filepath.Join(dir, "admin.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`global
	stats socket %s mode 600 level admin
defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
frontend http
	bind %s
	default_backend web
backend web
	balance roundrobin
	option httpchk GET /magestack-fpm-ping
	server web1 %s:80 %s
`, sock, front, web1.Addr, lbsync.CheckArgs)
	if err := os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sup = supervise.New(slog.New(slog.DiscardHandler), supervise.Options{})
	if err := sup.Add(supervise.Spec{Name: "lb1", Command: []string{bin, "-db", "-f", filepath.Join(dir, "haproxy.cfg")}}); err != nil {
		t.Fatal(err)
	}
	if err := sup.Start(ctx, "lb1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.StopAll(context.Background()) })
	if err := sup.WaitReady(ctx, "lb1"); err != nil {
		t.Fatal(err)
	}
	client = lbsync.UnixClient("lb1", sock)
	names = func() []string {
		t.Helper()
		var list []lbsync.ServerState
		var err error
		for range 100 { // HAProxy may still be binding its socket
			if list, err = client.Servers(ctx, "web"); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range list {
			if s.Maint() {
				t.Errorf("%s left in maintenance", s.Name)
			}
			out = append(out, s.Name)
		}
		return out
	}
	names()
	return sup, sock, client, names
}

// On a pair the lb admits every web instance of the revision in force,
// wherever it runs: HAProxy's checks tell which answer.
func TestPairLBSyncAdmitsEveryWebInstance(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (Debian package haproxy): ", err)
	}
	_, st1 := scaleRev(1)
	_, st2 := scaleRev(2)
	insts, _ := st1.Instances()
	web1 := insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == "web1" })]
	sup, sock, _, names := startTestLB(t, bin, web1)
	b := &bootEnv{log: slog.New(slog.DiscardHandler)}
	rt := newRoleRuntime(b.log, sup, roleenv.Options{}, st1, 0, nil)
	rt.built["lb1"] = st1 // this host runs lb1
	lbs := b.newPairLBSync(sup, rt)
	lbs.socket = func(int) string { return sock }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lbs.converge(ctx, st2)
	if got := names(); !slices.Equal(got, []string{"web1", "web2"}) {
		t.Errorf("after the revision with two web instances lb1 has %v", got)
	}
	lbs.converge(ctx, st1)
	if got := names(); !slices.Equal(got, []string{"web1"}) {
		t.Errorf("after the revision back to one lb1 has %v", got)
	}
	// An lb this host does not run is left alone.
	delete(rt.built, "lb1")
	lbs.converge(ctx, st2)
	if got := names(); !slices.Equal(got, []string{"web1"}) {
		t.Errorf("an lb run elsewhere was changed: %v", got)
	}
}
