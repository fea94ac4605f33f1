package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"

	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/stackfile"
)

// fakeSystem stands in for the roles, firewall and VPN packages: it keeps
// the state their appliers would change, so tests can check that a failed
// revision leaves exactly the old state.
type fakeSystem struct {
	calls     []string
	instances map[string]string // name -> "role settings fingerprint"
	firewall  string            // fingerprint of the stack the ruleset was built from
	allow     map[netip.Prefix]bool
	peers     string
	failOn    string // a call that fails, e.g. "start web2"
	panicOn   string
}

func newFake() *fakeSystem {
	return &fakeSystem{instances: map[string]string{}, allow: map[netip.Prefix]bool{}}
}

func fingerprint(s *stackfile.Stack, role string) string {
	r := s.Roles[role]
	return fmt.Sprintf("%s/%v/%v", r.Image, r.Memory, r.Settings)
}

func (f *fakeSystem) call(name string) error {
	f.calls = append(f.calls, name)
	if name == f.panicOn {
		panic("applier bug")
	}
	if name == f.failOn {
		f.failOn = "" // one fault: the undo of the same call succeeds
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeSystem) appliers() Appliers {
	return Appliers{
		StopInstance: func(ctx context.Context, in stackfile.Instance) error {
			if err := f.call("stop " + in.Name); err != nil {
				return err
			}
			delete(f.instances, in.Name)
			return nil
		},
		StartInstance: func(ctx context.Context, s *stackfile.Stack, in stackfile.Instance) error {
			if err := f.call("start " + in.Name); err != nil {
				return err
			}
			f.instances[in.Name] = fingerprint(s, in.Role)
			return nil
		},
		UpdateInstance: func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error {
			if err := f.call("update " + ch.New.Name); err != nil {
				return err
			}
			f.instances[ch.New.Name] = fingerprint(s, ch.New.Role)
			return nil
		},
		Firewall: func(ctx context.Context, s *stackfile.Stack) error {
			if err := f.call("firewall"); err != nil {
				return err
			}
			insts, _ := s.Instances()
			f.firewall = fmt.Sprintf("%s %s %d", s.Internal, s.Public.VIP, len(insts))
			return nil
		},
		Allow: func(ctx context.Context, add, remove []netip.Prefix) error {
			if err := f.call("allow"); err != nil {
				return err
			}
			for _, p := range add {
				f.allow[p] = true
			}
			for _, p := range remove {
				delete(f.allow, p)
			}
			return nil
		},
		VPN: func(ctx context.Context, s *stackfile.Stack, c *stackfile.Changes) error {
			if err := f.call("vpn"); err != nil {
				return err
			}
			var names []string
			for _, p := range s.VPN.Peers {
				names = append(names, p.Name+"="+p.Key)
			}
			f.peers = strings.Join(names, ",")
			return nil
		},
	}
}

// state is everything the fake system holds, for before/after comparison.
func (f *fakeSystem) state() string {
	var allow []string
	for p := range f.allow {
		allow = append(allow, p.String())
	}
	slices.Sort(allow)
	return fmt.Sprintf("inst=%v fw=%q allow=%v peers=%q", f.instances, f.firewall, allow, f.peers)
}

const keyA = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
const keyB = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

const base = `stack: shop1
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
public: {vip: 10.0.2.50/24, allow: [203.0.113.0/24]}
vpn: {peers: [{name: alice, key: "` + keyA + `"}]}
roles:
  web: {count: 1, settings: {php: "256M"}}
`

func revOf(content string) configsource.Revision {
	h := sha256.Sum256([]byte(content))
	return configsource.Revision{ID: hex.EncodeToString(h[:]), Data: []byte(content), Source: "git+file:///srv/stacks.git#main:stack.yaml", Time: time.Now()}
}

func edit(from, to string) string {
	if !strings.Contains(base, from) {
		panic(from)
	}
	return strings.Replace(base, from, to, 1)
}

// booted returns a reconciler that has applied base through the fakes.
func booted(t *testing.T) (*Reconciler, *fakeSystem, *configstore.Store) {
	t.Helper()
	store, err := configstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	r := New(nil, store, f.appliers())
	if _, err := r.Apply(context.Background(), revOf(base)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "firewall, allow, vpn, start fw1, start mail1, start db1, start web1, start lb1, start acc1, start monitor1" {
		t.Fatalf("boot calls: %s", got)
	}
	f.calls = nil
	return r, f, store
}

func TestApplyChangesOnlyWhatDiffers(t *testing.T) {
	tests := []struct {
		name, doc string
		calls     string
	}{
		{"web 1 to 2 starts only web2", edit("count: 1", "count: 2"), "firewall, start web2"},
		{"a service setting updates web1 in place", edit("256M", "512M"), "update web1"},
		{"an image change recreates db1", edit("roles:\n", "roles:\n  db: {image: mariadb-11}\n"), "stop db1, start db1"},
		{"an allow-list change touches only the set", edit("203.0.113.0/24", "198.51.100.0/24"), "allow"},
		{"a new VPN peer touches only the VPN", edit("peers: [", `peers: [{name: bob, key: "`+keyB+`"}, `), "vpn"},
		{"a comment changes nothing", "# just a comment\n" + base, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, f, store := booted(t)
			rev := revOf(tt.doc)
			res, err := r.Apply(context.Background(), rev)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(f.calls, ", "); got != tt.calls {
				t.Errorf("calls: %q, want %q", got, tt.calls)
			}
			if len(res.Skipped) != 0 || len(res.RolledBack) != 0 {
				t.Errorf("result %+v", res)
			}
			if _, running := r.Running(); running.ID != rev.ID {
				t.Errorf("running %s, want %s", running.ID, rev.ID)
			}
			if lg, _ := store.LastGood(); lg.ID != rev.ID {
				t.Errorf("last good %s, want %s", lg.ID, rev.ID)
			}
		})
	}
}

func TestFailedApplyRollsBackToLastGood(t *testing.T) {
	for _, tt := range []struct {
		name, doc, failOn, panicOn string
		calls                      string
	}{
		{"start of the new instance fails", edit("count: 1", "count: 2"), "start web2", "",
			"firewall, start web2, stop web2, firewall"},
		{"firewall fails after an instance was stopped", edit("roles:\n", "roles:\n  monitor: {count: 0}\n"), "firewall", "",
			"stop monitor1, firewall, firewall, start monitor1"},
		{"recreated instance fails to start", edit("roles:\n", "roles:\n  db: {image: mariadb-11}\n"), "start db1", "",
			"stop db1, start db1, stop db1, start db1"}, // stop the half-started new one, start the old one
		{"applier panics", edit("256M", "512M"), "", "update web1",
			"update web1, update web1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, f, store := booted(t)
			before := f.state()
			_, goodRev := r.Running()
			f.failOn, f.panicOn = tt.failOn, tt.panicOn
			if tt.panicOn != "" {
				// The undo repeats the same call: let the second one pass.
				orig := f.appliers().UpdateInstance
				calls := 0
				r.apply.UpdateInstance = func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error {
					calls++
					if calls > 1 {
						f.panicOn = ""
					}
					return orig(ctx, s, ch)
				}
			}
			res, err := r.Apply(context.Background(), revOf(tt.doc))
			if err == nil || !strings.Contains(err.Error(), "failed to apply and was rolled back") {
				t.Fatalf("err = %v", err)
			}
			if got := strings.Join(f.calls, ", "); got != tt.calls {
				t.Errorf("calls: %q, want %q", got, tt.calls)
			}
			f.failOn = ""
			if after := f.state(); after != before {
				t.Errorf("state after rollback:\n%s\nwant\n%s", after, before)
			}
			if _, running := r.Running(); running.ID != goodRev.ID {
				t.Errorf("running revision moved to %s", running.ID)
			}
			if lg, _ := store.LastGood(); lg.ID != goodRev.ID {
				t.Errorf("last good moved to %s", lg.ID)
			}
			st, _ := store.Status()
			if st.LastRejected == nil || st.LastRejected.Error == "" || strings.Contains(st.LastRejected.Error, "\n") {
				t.Errorf("rejection not recorded as one line: %+v", st.LastRejected)
			}
			if len(res.RolledBack) == 0 {
				t.Errorf("no undo reported: %+v", res)
			}
		})
	}
}

func TestInvalidRevisionIsRejectedWithoutTouchingAnything(t *testing.T) {
	r, f, store := booted(t)
	_, good := r.Running()
	_, err := r.Apply(context.Background(), revOf(edit("count: 1", "count: -1")))
	if err == nil || !strings.Contains(err.Error(), "stack.yaml:7:9: roles.web.count: must be ≥ 0, got -1") {
		t.Fatalf("err = %v", err)
	}
	if len(f.calls) != 0 {
		t.Errorf("appliers called: %v", f.calls)
	}
	st, _ := store.Status()
	if st.Current == nil || st.Current.ID != good.ID || st.LastRejected == nil || !strings.Contains(st.LastRejected.Error, "roles.web.count") {
		t.Errorf("status %+v", st)
	}
}

func TestUnwiredAppliersAreReportedAsSkipped(t *testing.T) {
	store, _ := configstore.Open(t.TempDir())
	r := New(nil, store, Appliers{})
	res, err := r.Apply(context.Background(), revOf(base))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Skipped, "firewall") || !slices.Contains(res.Skipped, "start web1") || len(res.Applied) != 0 {
		t.Errorf("result %+v", res)
	}
	h, _ := store.History()
	if len(h) != 1 || !strings.HasPrefix(h[0].Note, "not applied (no applier wired): firewall, allow-list, vpn, cluster, start fw1") {
		t.Errorf("history does not say what was left undone: %+v", h)
	}
}

func TestRecreateWhenNoUpdateApplier(t *testing.T) {
	r, f, _ := booted(t)
	r.apply.UpdateInstance = nil
	if _, err := r.Apply(context.Background(), revOf(edit("256M", "512M"))); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "stop web1, start web1" {
		t.Errorf("calls %q", got)
	}
}

func TestRollbackToStoredRevision(t *testing.T) {
	r, f, _ := booted(t)
	_, first := r.Running()
	if _, err := r.Apply(context.Background(), revOf(edit("count: 1", "count: 3"))); err != nil {
		t.Fatal(err)
	}
	f.calls = nil
	if _, err := r.Rollback(context.Background(), first.ID[:12]); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "stop web3, stop web2, firewall" {
		t.Errorf("calls %q", got)
	}
	if _, running := r.Running(); running.ID != first.ID {
		t.Errorf("running %s", running.ID)
	}
}

func TestInitial(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, _ := configstore.Open(filepath.Join(dir, "store"))
	fetcher := configsource.New(configsource.Options{})
	srcPath := filepath.Join(dir, "stack.yaml")

	// Nothing anywhere: the built-in default.
	rev, s, origin, err := Initial(ctx, nil, fetcher, "", store)
	if origin != FromBuiltin || s.Name != "default" || err != nil || rev.ID == "" {
		t.Errorf("empty: %s %v %v", origin, s.Name, err)
	}
	// A valid source wins.
	os.WriteFile(srcPath, []byte(base), 0o644)
	rev, s, origin, err = Initial(ctx, nil, fetcher, srcPath, store)
	if origin != FromSource || s.Name != "shop1" || err != nil {
		t.Fatalf("source: %s %v", origin, err)
	}
	store.MarkApplied(rev)
	// Source unreachable (the repository is down at reboot): last good.
	os.Remove(srcPath)
	_, s, origin, err = Initial(ctx, nil, fetcher, srcPath, store)
	if origin != FromLastGood || s.Name != "shop1" || err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("unreachable: %s %v", origin, err)
	}
	// Source serves a broken file: recorded as rejected, last good used.
	os.WriteFile(srcPath, []byte("stack: [\n"), 0o644)
	_, _, origin, err = Initial(ctx, nil, fetcher, srcPath, store)
	if origin != FromLastGood || err == nil || !strings.Contains(err.Error(), "YAML syntax") {
		t.Errorf("broken: %s %v", origin, err)
	}
	if st, _ := store.Status(); st.LastRejected == nil {
		t.Error("broken boot revision not recorded as rejected")
	}
}

func TestWatcherAppliesNewRevisions(t *testing.T) {
	r, f, _ := booted(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "stack.yaml")
	os.WriteFile(src, []byte(base), 0o644)
	// The running revision came from another source string; the watcher
	// skips only the identical ID.
	w := r.Watcher(context.Background(), configsource.New(configsource.Options{}), src, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }() // no apply may outlive the test's temp dirs
	os.WriteFile(src, []byte(edit("count: 1", "count: 2")), 0o644)
	w.Poke()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, _ := r.Running(); s.Roles["web"].Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new revision not applied; calls %v", f.calls)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBootedRecordsLastGoodOnce(t *testing.T) {
	store, _ := configstore.Open(t.TempDir())
	r := New(nil, store, Appliers{})
	rev := revOf(base)
	s, err := stackfile.Parse("stack.yaml", rev.Data)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Booted(s, rev); err != nil {
			t.Fatal(err)
		}
	}
	if lg, err := store.LastGood(); err != nil || lg.ID != rev.ID {
		t.Errorf("last good %v %s", err, lg.ID)
	}
	if h, _ := store.History(); len(h) != 1 {
		t.Errorf("history %+v, want one applied entry", h)
	}
	if running, got := r.Running(); running != s || got.ID != rev.ID {
		t.Error("not adopted")
	}
	// An apply of the same revision afterwards changes nothing.
	f := newFake()
	r.apply = f.appliers()
	if _, err := r.Apply(context.Background(), rev); err != nil || len(f.calls) != 0 {
		t.Errorf("re-apply of the booted revision: %v %v", err, f.calls)
	}
}

func TestFailedFirstApplyStopsWhatItStarted(t *testing.T) {
	f := newFake()
	f.failOn = "start lb1"
	r := New(nil, nil, f.appliers())
	_, err := r.Apply(context.Background(), revOf(base))
	if err == nil {
		t.Fatal("no error")
	}
	want := "firewall, allow, vpn, start fw1, start mail1, start db1, start web1, start lb1, " +
		"stop lb1, stop web1, stop db1, stop mail1, stop fw1, allow"
	if got := strings.Join(f.calls, ", "); got != want {
		t.Errorf("calls:\n%s\nwant\n%s", got, want)
	}
	if len(f.instances) != 0 {
		t.Errorf("instances left running: %v", f.instances)
	}
	if s, _ := r.Running(); s != nil {
		t.Error("a failed first apply left a running stack")
	}
}

func TestPollSettings(t *testing.T) {
	s := stackfile.Default()
	src, every, f := PollSettings(s, "/etc/magestack/stack.yaml", configsource.Options{})
	if src != "/etc/magestack/stack.yaml" || every != time.Minute || f == nil {
		t.Errorf("default stack: %q %s", src, every)
	}
	s2, err := stackfile.Parse("s.yaml", []byte(base+"config: {source: \"git+https://git.example/s.git#main\", poll: 15s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	src, every, _ = PollSettings(s2, "/etc/magestack/stack.yaml", configsource.Options{})
	if src != "git+https://git.example/s.git#main" || every != 15*time.Second {
		t.Errorf("stack with config.source: %q %s", src, every)
	}
}

func TestPollSettingsEnforceSignedBy(t *testing.T) {
	armored := armoredKey(t)
	doc := base + "config:\n  signedby:\n    - |\n" + indentLines(armored, "      ")
	s, err := stackfile.Parse("s.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	repo, _ := git.PlainInit(dir, false)
	wt, _ := repo.Worktree()
	os.WriteFile(filepath.Join(dir, "stack.yaml"), []byte(base), 0o644)
	wt.Add("stack.yaml")
	if _, err := wt.Commit("unsigned", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@example.net", When: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	src, _, f := PollSettings(s, "git+file://"+dir+"#master", configsource.Options{})
	if _, err := f.Fetch(context.Background(), src); !errors.Is(err, configsource.ErrUnsigned) {
		t.Errorf("unsigned commit with config.signedby set: %v", err)
	}
}

// armoredKey is a fresh OpenPGP public key, armored as config.signedby
// takes it.
func armoredKey(t *testing.T) string {
	t.Helper()
	e, err := openpgp.NewEntity("ops", "", "ops@example.net", nil)
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
	return b.String()
}

func indentLines(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// With an Instances applier (a pair), the instances added and removed go
// in one step, after the firewall, and a later failure undoes it with the
// old set.
func TestInstancesApplierTakesAddedAndRemoved(t *testing.T) {
	r, f, _ := booted(t)
	var sets []string
	r.apply.Instances = func(ctx context.Context, s *stackfile.Stack) error {
		insts, _ := s.Instances()
		var names []string
		for _, in := range insts {
			if in.Role == "web" {
				names = append(names, in.Name)
			}
		}
		sets = append(sets, strings.Join(names, " "))
		return f.call("instances")
	}
	res, err := r.Apply(context.Background(), revOf(edit("count: 1,", "count: 2,")))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "firewall, instances" {
		t.Errorf("calls %q, want the firewall then one instances step", got)
	}
	if !slices.Contains(res.Applied, "instances +web2") || len(res.Skipped) != 0 || !slices.Equal(sets, []string{"web1 web2"}) {
		t.Errorf("applied %v skipped %v sets %v", res.Applied, res.Skipped, sets)
	}
	// Scaling back fails in a later step: the old set is restored.
	f.calls, sets = nil, nil
	f.failOn = "update lb1"
	r.apply.UpdateInstance = func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error {
		return f.call("update " + ch.New.Name)
	}
	next := strings.Replace(edit("count: 1,", "count: 1, memory: 300MiB,"), "roles:\n", "roles:\n  lb: {memory: 200MiB}\n", 1)
	if _, err := r.Apply(context.Background(), revOf(next)); err == nil {
		t.Fatal("a failing revision applied")
	}
	if !slices.Equal(sets, []string{"web1", "web1 web2"}) {
		t.Errorf("instance sets %v, want web1 then web1 web2 again", sets)
	}
}

// A host whose last good revision names signers does not boot an unsigned
// revision, wherever it comes from: a forged file served at the config URL
// (or an unsigned commit) falls back to the last good revision.
func TestInitialBoundByLastGoodSigners(t *testing.T) {
	armored := armoredKey(t)
	signed := base + "config:\n  signedby:\n    - |\n" + indentLines(armored, "      ")
	dir := t.TempDir()
	store, err := configstore.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	good := configsource.Revision{ID: "600d600d600d", Source: "git+https://git.example/s.git#main", Data: []byte(signed)}
	if err := store.MarkApplied(good); err != nil {
		t.Fatal(err)
	}
	// The forged revision: a valid stack, no signers, one more role.
	forged := strings.Replace(base, "stack: shop1", "stack: shop1\n# forged", 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, forged) }))
	defer srv.Close()
	repo := filepath.Join(dir, "repo")
	r, _ := git.PlainInit(repo, false)
	wt, _ := r.Worktree()
	os.WriteFile(filepath.Join(repo, "stack.yaml"), []byte(forged), 0o644)
	wt.Add("stack.yaml")
	if _, err := wt.Commit("unsigned", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@example.net", When: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{srv.URL + "/stack.yaml", "git+file://" + repo + "#master"} {
		rev, s, origin, err := Initial(context.Background(), nil, configsource.New(configsource.Options{}), src, store)
		if origin != FromLastGood || rev.ID != good.ID || len(s.Config.SignedBy) != 1 {
			t.Errorf("%s: booted %s revision %s, want the last good one", src, origin, rev.ID)
		}
		if err == nil {
			t.Errorf("%s: no reason given for passing the source over", src)
		}
	}
}
