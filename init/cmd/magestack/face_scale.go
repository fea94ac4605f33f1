package main

// `magestack scale web=N`, the scale overrides at boot and on new
// revisions (init/scaleoverride), and the lb following web instances as
// they come and go (services/lbsync).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"magestack/init/api"
	"magestack/init/configsource"
	"magestack/init/pid1"
	"magestack/init/reconcile"
	"magestack/init/scaleoverride"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services/lbsync"
	"magestack/services/render"
)

func init() {
	// Before the firewall: the ruleset, the roles and lb's rendered
	// backends are all built from the scaled stack.
	registerBootSteps(orderFirewall-1, "scale", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "scale", Run: b.scaleStep, Timeout: 10 * time.Second}}
	})
}

func scaleMain(args []string) int { return scaleFace(args, os.Stdout, os.Stderr) }

func scaleStore() *scaleoverride.Store {
	return scaleoverride.Open(filepath.Join(stateDir, scaleoverride.FileName))
}

// scaleStep puts the overrides still in force on the boot stack and ends
// the ones the stack file has superseded since.
func (b *bootEnv) scaleStep(ctx context.Context) error {
	st := b.Stack()
	if st == nil {
		return errors.New("scale: no stack loaded")
	}
	eff := b.scaleOverlay(scaleStore())(st)
	if eff != st {
		b.mu.Lock()
		b.stack = eff
		b.mu.Unlock()
	}
	return nil
}

// scaleOverlay applies the stored overrides to a stack as its stack file
// says (reconcile.SetOverlay): kept ones change counts, superseded ones
// are deleted. On a store problem the stack file's counts are used.
func (b *bootEnv) scaleOverlay(store *scaleoverride.Store) func(*stackfile.Stack) *stackfile.Stack {
	return func(s *stackfile.Stack) *stackfile.Stack {
		list, err := store.List()
		if err != nil {
			b.log.Error("scale: overrides unreadable; the stack file's counts apply", "err", err)
			return s
		}
		if len(list) == 0 {
			return s
		}
		eff, kept, superseded, err := scaleoverride.Apply(s, list)
		if err != nil {
			b.log.Error("scale: overrides not applicable; the stack file's counts apply", "err", err)
			return s
		}
		for _, o := range superseded {
			b.log.Info("scale: the stack file changed the count; local override ended", "role", o.Role, "override", o.Count, "was", o.Base, "file", s.Roles[o.Role].Count)
			if err := store.Delete(o.Role); err != nil {
				b.log.Error("scale: ending override", "role", o.Role, "err", err)
			}
		}
		for _, o := range kept {
			b.log.Info("scale: local override in force", "role", o.Role, "count", o.Count, "file", o.Base)
		}
		return eff
	}
}

// ScaleRequest is the body of POST /v1/scale.
type ScaleRequest struct {
	Role  string `json:"role"`
	Count int    `json:"count"`
}

// ScaleRole is one scalable role in GET /v1/scale.
type ScaleRole struct {
	Role      string                  `json:"role"`
	StackFile int                     `json:"stackFile"` // the count the stack file says
	Running   int                     `json:"running"`   // the count in force
	Override  *scaleoverride.Override `json:"override,omitempty"`
}

// ScaleReply answers POST /v1/scale.
type ScaleReply struct {
	ScaleRole
	Applied    []string `json:"applied,omitempty"`
	RolledBack []string `json:"rolledBack,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// scaleAPI serves /v1/scale over the reconciler.
type scaleAPI struct {
	b     *bootEnv
	r     *reconcile.Reconciler
	store *scaleoverride.Store
	mu    sync.Mutex // one scale at a time (the store read-modify-apply)
}

// stackFile is the running revision as its stack file says, without
// overrides.
func (s *scaleAPI) stackFile() (*stackfile.Stack, *stackfile.Stack, error) {
	running, rev := s.r.Running()
	if running == nil {
		return nil, nil, errors.New("no running stack yet")
	}
	file, err := stackfile.Parse("stack.yaml", rev.Data)
	if err != nil {
		return nil, nil, fmt.Errorf("running revision %s: %w", rev.ID, err)
	}
	return file, running, nil
}

func (s *scaleAPI) roles() ([]ScaleRole, error) {
	file, running, err := s.stackFile()
	if err != nil {
		return nil, err
	}
	list, err := s.store.List()
	if err != nil {
		return nil, err
	}
	sr := ScaleRole{Role: "web", StackFile: file.Roles["web"].Count, Running: running.Roles["web"].Count}
	if i := slices.IndexFunc(list, func(o scaleoverride.Override) bool { return o.Role == "web" }); i >= 0 {
		sr.Override = &list[i]
	}
	return []ScaleRole{sr}, nil
}

func (s *scaleAPI) register(srv *api.Server) {
	srv.AddStatus("scale", func(context.Context) (any, error) { return s.roles() })
	srv.Handle("GET /v1/scale", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		roles, err := s.roles()
		if err != nil {
			api.WriteError(w, http.StatusConflict, err.Error())
			return
		}
		api.WriteJSON(w, http.StatusOK, roles)
	}))
	srv.Handle("POST /v1/scale", http.HandlerFunc(s.serveScale))
}

func (s *scaleAPI) serveScale(w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		api.WriteError(w, http.StatusBadRequest, `want {"role": "web", "count": N}: `+err.Error())
		return
	}
	if err := scaleoverride.Check(req.Role, req.Count); err != nil {
		api.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.b.mu.Lock()
	paired := s.b.cluster != nil
	s.b.mu.Unlock()
	if paired {
		// An override is this host's alone: the peer's next revision would
		// take the instances away again.
		api.WriteError(w, http.StatusConflict, "scale: on a pair, change the count in the stack file (both hosts apply it, and the cluster places the instances); a local override would not reach the peer")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var prev []scaleoverride.Override
	stored := false
	var refused error // the request cannot be met on this stack
	// Derived under the reconciler's lock: no revision lands in between.
	// A client that gives up must not roll the stack back half-way.
	res, err := s.r.ApplyStack(context.WithoutCancel(r.Context()), func(rev configsource.Revision) (*stackfile.Stack, error) {
		file, err := stackfile.Parse("stack.yaml", rev.Data)
		if err != nil {
			return nil, fmt.Errorf("running revision %s: %w", rev.ID, err)
		}
		if prev, err = s.store.List(); err != nil {
			return nil, err
		}
		base := file.Roles[req.Role].Count
		if req.Count == base {
			err = s.store.Delete(req.Role) // back to what the stack file says
		} else {
			err = s.store.Set(scaleoverride.Override{Role: req.Role, Count: req.Count, Base: base, Set: time.Now().UTC()})
		}
		if err != nil {
			return nil, err
		}
		stored = true
		list, err := s.store.List()
		if err != nil {
			return nil, err
		}
		eff, _, _, err := scaleoverride.Apply(file, list)
		if err != nil {
			refused = err
			return nil, err
		}
		return eff, nil
	})
	if err != nil && stored {
		s.restore(prev)
	}
	if refused != nil {
		api.WriteError(w, http.StatusUnprocessableEntity, fmt.Sprintf("%s=%d: %v", req.Role, req.Count, refused))
		return
	}
	rep := ScaleReply{Applied: res.Applied, RolledBack: res.RolledBack}
	if err != nil {
		rep.Error = fmt.Sprintf("%s=%d: %v", req.Role, req.Count, err)
	}
	if roles, rerr := s.roles(); rerr == nil && len(roles) > 0 {
		rep.ScaleRole = roles[0]
	}
	api.WriteJSON(w, http.StatusOK, rep)
}

func (s *scaleAPI) restore(prev []scaleoverride.Override) {
	if err := s.store.Replace(prev); err != nil {
		s.b.log.Error("scale: restoring the previous overrides", "err", err)
	}
}

// wireScale connects `magestack scale` and the overrides to the running
// reconciler, and starts keeping lb's backends in step.
func (b *bootEnv) wireScale(r *reconcile.Reconciler, srv *api.Server, lbs *lbSync) {
	b.wireScaleStore(r, srv, lbs, scaleStore())
}

func (b *bootEnv) wireScaleStore(r *reconcile.Reconciler, srv *api.Server, lbs *lbSync, store *scaleoverride.Store) {
	r.SetOverlay(b.scaleOverlay(store))
	if srv != nil {
		(&scaleAPI{b: b, r: r, store: store}).register(srv)
	}
	if lbs != nil {
		running := func() *stackfile.Stack { s, _ := r.Running(); return s }
		lbs.mu.Lock()
		lbs.runningStack = running
		lbs.mu.Unlock()
		pid1.Go(b.log, "lb sync", func() { lbs.run(b.ctx, running) })
	}
}

// lbSync keeps every lb instance on this host balancing over the web
// instances admitted to traffic: a web instance is admitted once started
// and ready, and withdrawn (drained out of every lb) before it stops. A
// periodic pass repairs what a restarted HAProxy or lb lost. On a pair,
// where web instances may run on the other host, every web instance of
// the revision in force is admitted and HAProxy's health checks tell
// which answer.
type lbSync struct {
	log *slog.Logger
	sup *supervise.Supervisor
	// lbHere says whether this host runs an lb instance.
	lbHere func(stackfile.Instance) bool
	// everyWeb admits every web instance of the stack (pairs).
	everyWeb bool

	mu       sync.Mutex // serialises lb changes; guards the fields below
	admitted map[string]netip.Addr
	lastErr  string
	// runningStack is the reconciler's running stack (set by wireScale).
	runningStack func() *stackfile.Stack
	// socket is where an lb's admin socket is seen from here, given its
	// role-init's pid: through its mount namespace (tests point elsewhere).
	socket func(pid int) string
}

// lbSyncEvery is the repair pass's period.
const lbSyncEvery = 5 * time.Second

// newLBSync returns nil where PID 1 does not start instances itself (a
// paired host's cluster does) or has no supervisor.
func (b *bootEnv) newLBSync(sup *supervise.Supervisor, st *stackfile.Stack, host string) *lbSync {
	if sup == nil || pairedHost(st, host) {
		return nil
	}
	// The roles step waited for every instance to be ready.
	return &lbSync{log: b.log, sup: sup, admitted: webInstances(st), socket: haproxyAdminSocket,
		lbHere: func(in stackfile.Instance) bool { return in.Host == host }}
}

// webInstances are the stack's web instances by name, with their addresses.
func webInstances(st *stackfile.Stack) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	if insts, err := st.Instances(); err == nil {
		for _, in := range insts {
			if in.Role == "web" {
				out[in.Name] = in.Addr
			}
		}
	}
	return out
}

// haproxyAdminSocket is an lb's HAProxy admin socket seen from the host,
// through the mount namespace of its role-init (pid).
func haproxyAdminSocket(pid int) string {
	return fmt.Sprintf("/proc/%d/root%s", pid, render.AdminSocket)
}

// newPairLBSync keeps the lb instances this paired host runs balancing
// over every web instance of the revision in force.
func (b *bootEnv) newPairLBSync(sup *supervise.Supervisor, rt *roleRuntime) *lbSync {
	return &lbSync{log: b.log, sup: sup, admitted: map[string]netip.Addr{}, everyWeb: true, socket: haproxyAdminSocket,
		lbHere: func(in stackfile.Instance) bool { return rt.Runs(in.Name) }}
}

// wrap makes instance starts and stops go through the lb.
func (l *lbSync) wrap(a reconcile.Appliers) reconcile.Appliers {
	if l == nil || a.StartInstance == nil || a.StopInstance == nil {
		return a
	}
	start, stop := a.StartInstance, a.StopInstance
	a.StartInstance = func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error {
		if err := start(ctx, s, inst); err != nil {
			return err
		}
		switch inst.Role {
		case "web": // start returned once the instance was ready
			l.mu.Lock()
			l.admitted[inst.Name] = inst.Addr
			l.mu.Unlock()
			l.converge(ctx, s)
		case "lb":
			l.converge(ctx, s)
		}
		return nil
	}
	a.StopInstance = func(ctx context.Context, inst stackfile.Instance) error {
		if inst.Role == "web" {
			l.withdraw(ctx, inst)
		}
		return stop(ctx, inst)
	}
	return a
}

// lbClients are the HAProxy admin sockets of the lb instances of st
// running on this host, seen through their mount namespaces.
func (l *lbSync) lbClients(st *stackfile.Stack) []*lbsync.Client {
	insts, err := st.Instances()
	if err != nil {
		return nil
	}
	var out []*lbsync.Client
	for _, in := range insts {
		if in.Role != "lb" || !l.lbHere(in) {
			continue
		}
		u, err := l.sup.Unit(in.Name)
		if err != nil || u.PID == 0 || (u.State != supervise.StateReady && u.State != supervise.StateRunning) {
			continue
		}
		out = append(out, lbsync.UnixClient(in.Name, l.socket(u.PID)))
	}
	return out
}

// converge brings every lb to the admitted web set; failures are logged
// (once while they repeat) and retried by the next pass.
func (l *lbSync) converge(ctx context.Context, st *stackfile.Stack) {
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	admitted := l.admitted
	if l.everyWeb {
		admitted = webInstances(st)
	}
	want := make([]lbsync.Server, 0, len(admitted))
	for name, addr := range admitted {
		want = append(want, lbsync.Server{Name: name, Addr: netip.AddrPortFrom(addr, 80)})
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
	var errs []string
	for _, c := range l.lbClients(st) {
		if _, err := c.Converge(ctx, l.log, render.WebBackend(st), want, lbsync.DefaultDrainTimeout); err != nil {
			errs = append(errs, err.Error())
		}
	}
	msg := strings.Join(errs, "; ")
	if msg != "" && msg != l.lastErr {
		l.log.Warn("lb sync: backends not in step yet; retrying", "err", msg)
	}
	l.lastErr = msg
}

// withdraw drains inst out of every lb before it stops. A lb that cannot
// be reached does not hold the stop up: its health checks take the
// server out, and the repair pass deletes it.
func (l *lbSync) withdraw(ctx context.Context, inst stackfile.Instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.admitted, inst.Name)
	ctx, cancel := context.WithTimeout(ctx, lbsync.DefaultDrainTimeout+30*time.Second)
	defer cancel()
	if l.runningStack == nil {
		return
	}
	st := l.runningStack()
	if st == nil {
		return
	}
	for _, c := range l.lbClients(st) {
		if err := c.Remove(ctx, render.WebBackend(st), inst.Name, lbsync.DefaultDrainTimeout); err != nil {
			l.log.Warn("lb sync: withdrawing a web instance", "instance", inst.Name, "err", err)
			continue
		}
		l.log.Info("lb sync: web instance drained out of lb", "instance", inst.Name, "lb", c.LB)
	}
}

func (l *lbSync) run(ctx context.Context, running func() *stackfile.Stack) {
	t := time.NewTicker(lbSyncEvery)
	defer t.Stop()
	for {
		l.converge(ctx, running())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

const scaleUsage = `usage: magestack scale [ROLE=COUNT] [-o json] [-socket PATH]

  scale web=3    run 3 web instances now: new ones join lb once ready, leaving
                 ones are drained out of lb before they stop
  scale          the counts in force, the stack file's, and local overrides

A count set here is a local override kept on the host's data disk: it stays
in force through new revisions and reboots until the stack file changes that
role's count (the stack file then wins). Setting the stack file's count
removes the override. Only web scales (1..150).`

func scaleFace(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("scale", "[ROLE=COUNT] [-o json] [--socket PATH]", stderr, true)
	c.fs.Usage = func() { fmt.Fprintln(stderr, scaleUsage) }
	pos, err := c.parse(args)
	if err != nil {
		return usageError(c, stderr, err)
	}
	if len(pos) > 1 {
		return usageError(c, stderr, fmt.Errorf("one ROLE=COUNT at a time, got %d", len(pos)))
	}
	cl := api.NewClient(*c.socket)
	print := func(v any) {
		writeJSON(stdout, v)
	}
	if len(pos) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), api.Timeout)
		defer cancel()
		var roles []ScaleRole
		if err := cl.Do(ctx, http.MethodGet, "/v1/scale", nil, &roles); err != nil {
			return apiError(stderr, "scale", err)
		}
		if c.json() {
			print(roles)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLE\tRUNNING\tSTACK FILE\tOVERRIDE")
		for _, r := range roles {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Role, r.Running, r.StackFile, overrideText(r.Override))
		}
		tw.Flush()
		return 0
	}
	role, count, err := scaleoverride.ParseArg(pos[0])
	if err != nil {
		return usageError(c, stderr, err)
	}
	// Starting instances waits for each to be ready; draining waits for
	// their sessions.
	ctx, cancel := context.WithTimeout(context.Background(), reconcile.DefaultTimeout+time.Minute)
	defer cancel()
	var rep ScaleReply
	if err := cl.Do(ctx, http.MethodPost, "/v1/scale", ScaleRequest{Role: role, Count: count}, &rep); err != nil {
		return apiError(stderr, "scale", err)
	}
	if c.json() {
		print(rep)
	} else {
		for _, a := range rep.Applied {
			fmt.Fprintln(stdout, "  "+a)
		}
		for _, a := range rep.RolledBack {
			fmt.Fprintln(stdout, "  undone: "+a)
		}
		if rep.Error == "" {
			fmt.Fprintf(stdout, "%s: %d instances (stack file: %d; override: %s)\n", rep.Role, rep.Running, rep.StackFile, overrideText(rep.Override))
		}
	}
	if rep.Error != "" {
		fmt.Fprintf(stderr, "magestack scale: %s\n", rep.Error)
		return 1
	}
	return 0
}

func overrideText(o *scaleoverride.Override) string {
	if o == nil {
		return "none"
	}
	return fmt.Sprintf("%d (set %s, until the stack file changes %s's count from %d)", o.Count, o.Set.Format(time.RFC3339), o.Role, o.Base)
}
