package main

// `magestack maintenance on|off|status [SITE]`: a site's maintenance mode.
// On, every web instance of the site answers with the maintenance page
// (503; the site's own maintenance/index.html, else magestack's rendered
// page) except to the client prefixes in the site's maintenanceallow list.
// PID 1 records the switch on its state disk, so web instances started
// later (a restart, web scaled up) come up in the same mode. On a paired
// host the switch is a cluster setting first: committed through raft, it
// reaches the peer (now, or when it rejoins), so the site stays in the
// mode whichever host runs it after a failover.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"magestack/init/api"
	"magestack/init/cluster"
	"magestack/init/failover"
	"magestack/init/pid1"
	"magestack/init/stackfile"
	"magestack/services/render"
)

func maintenanceMain(args []string) int { return maintenanceFace(args, os.Stdout, os.Stderr) }

// MaintenanceRequest is POST /v1/maintenance.
type MaintenanceRequest struct {
	Site string `json:"site"` // group/name, name or domain; "" on a one-site stack
	On   bool   `json:"on"`
}

// MaintenanceSite is one site's mode.
type MaintenanceSite struct {
	Site    string   `json:"site"`
	Domains []string `json:"domains"`
	Allow   []string `json:"allow,omitempty"`
	// On is the operator's switch as PID 1 keeps it.
	On bool `json:"on"`
	// Instances is what each running web instance here really serves:
	// true when its flag file is present.
	Instances map[string]bool   `json:"instances"`
	Errors    map[string]string `json:"errors,omitempty"`
}

func maintenanceFace(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("maintenance", "[on|off|status] [SITE] [-o json] [--socket PATH]", stderr, true)
	pos, err := c.parse(args)
	if err != nil {
		return usageError(c, stderr, err)
	}
	verb, site := "status", ""
	if len(pos) > 0 {
		verb = pos[0]
	}
	if len(pos) > 1 {
		site = pos[1]
	}
	if len(pos) > 2 || (verb != "on" && verb != "off" && verb != "status") {
		return usageError(c, stderr, fmt.Errorf("want on, off or status and at most one SITE (group/name, name or domain), got %q", pos))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := api.NewClient(*c.socket)
	var sites []MaintenanceSite
	if verb == "status" {
		path := "/v1/maintenance"
		if site != "" {
			path += "?site=" + site
		}
		err = cl.Do(ctx, http.MethodGet, path, nil, &sites)
	} else {
		var one MaintenanceSite
		err = cl.Do(ctx, http.MethodPost, "/v1/maintenance", MaintenanceRequest{Site: site, On: verb == "on"}, &one)
		sites = []MaintenanceSite{one}
	}
	if err != nil {
		return apiError(stderr, "maintenance", err)
	}
	if c.json() {
		writeJSON(stdout, sites)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tMAINTENANCE\tINSTANCES\tALLOWED\tDOMAINS")
	rc := 0
	for _, s := range sites {
		var inst []string
		for _, n := range sortedKeys(s.Instances) {
			inst = append(inst, n+"="+onOff(s.Instances[n]))
		}
		for _, n := range sortedKeys(s.Errors) {
			inst = append(inst, n+"=?")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Site, onOff(s.On), dash(strings.Join(inst, ",")), dash(strings.Join(s.Allow, ",")), strings.Join(s.Domains, ","))
	}
	tw.Flush()
	for _, s := range sites {
		for _, n := range sortedKeys(s.Errors) {
			fmt.Fprintf(stderr, "magestack maintenance: %s on %s: %s\n", s.Site, n, s.Errors[n])
			rc = 1
		}
	}
	return rc
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// maintenanceStatePath is the file whose presence records s in
// maintenance mode: one file per site.
func (b *bootEnv) maintenanceStatePath(s stackfile.Site) string {
	dir := b.maintenanceDir
	if dir == "" {
		dir = filepath.Join(stateDir, "maintenance")
	}
	return filepath.Join(dir, s.Group, s.Name)
}

// maintenanceKey is a site's switch among the cluster settings.
func maintenanceKey(s stackfile.Site) string { return failover.MaintenancePrefix + render.SiteID(s) }

// maintenanceOn is the recorded switch; render asks it when a web
// instance starts.
func (b *bootEnv) maintenanceOn(s stackfile.Site) bool {
	_, err := os.Stat(b.maintenanceStatePath(s))
	return err == nil
}

func (b *bootEnv) setMaintenanceState(s stackfile.Site, on bool) error {
	p := b.maintenanceStatePath(s)
	if !on {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("maintenance state %s: %w", p, err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("maintenance state: %w", err)
	}
	if err := os.WriteFile(p, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("maintenance state: %w", err)
	}
	return nil
}

// webTargets are the web instances of the stack this host runs now.
func (b *bootEnv) webTargets() ([]roleTarget, error) {
	insts, err := b.Stack().Instances()
	if err != nil {
		return nil, err
	}
	var out []roleTarget
	for _, in := range insts {
		if in.Role != "web" {
			continue
		}
		// One still starting may not have its root yet (nothing to exec
		// there); it renders its flags from the recorded switches, and
		// the cluster's follower checks it once it is ready.
		if t, _, err := b.runningInstance(in.Name); err == nil && t.ready {
			out = append(out, t)
		}
	}
	return out, nil
}

// flagInRole sets, clears or (set nil) reads the site's flag file inside
// one web instance, with the role's own rights.
func (b *bootEnv) flagInRole(ctx context.Context, t roleTarget, s stackfile.Site, set *bool) (bool, error) {
	flag := render.MaintenanceFlag(s)
	script := `test -f "$1"`
	if set != nil && *set {
		script = `mkdir -p "$(dirname "$1")" && echo on > "$1" && test -f "$1"`
	} else if set != nil {
		script = `rm -f "$1" && ! test -e "$1"`
	}
	res, err := b.execIn(ctx, t, []string{"/bin/sh", "-c", script, "sh", flag})
	if err != nil {
		return false, err
	}
	if set == nil {
		return res.ExitCode == 0, nil
	}
	if res.ExitCode != 0 {
		return !*set, fmt.Errorf("%s %s: exit %d: %s", map[bool]string{true: "creating", false: "removing"}[*set], flag, res.ExitCode, strings.TrimSpace(res.Output))
	}
	return *set, nil
}

// switchMaintenance records the switch, then applies it in every web
// instance this host runs; it returns those instances and what failed.
func (b *bootEnv) switchMaintenance(ctx context.Context, s stackfile.Site, on bool) ([]roleTarget, []string, error) {
	// Recorded first: an instance starting meanwhile renders the new mode.
	if err := b.setMaintenanceState(s, on); err != nil {
		return nil, nil, err
	}
	targets, err := b.webTargets()
	if err != nil {
		return nil, nil, err
	}
	if len(targets) == 0 {
		b.log.Info("maintenance: no web instance runs on this host; the mode applies when one starts", "site", render.SiteID(s), "on", on)
	}
	var failed []string
	for _, t := range targets {
		if _, err := b.flagInRole(ctx, t, s, &on); err != nil {
			failed = append(failed, t.inst.Name+": "+err.Error())
		}
	}
	b.log.Info("maintenance mode", "site", render.SiteID(s), "on", on, "instances", len(targets), "failed", len(failed))
	return targets, failed, nil
}

// followClusterMaintenance keeps a paired host's switches as the cluster
// settings say, each time changed fires: after the peer switched a site,
// when raft replays its log at boot, and when this host started an
// instance (which then gets the flags its image may not render itself).
func (b *bootEnv) followClusterMaintenance(ctx context.Context, settings func() []cluster.Setting, changed <-chan struct{}) {
	checked := map[int]bool{} // role-init pids of web instances whose flags are in step
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		// A panic is reported and the next change is followed all the same.
		pid1.Safely(b.log, "maintenance: following the cluster", func() error {
			b.applyClusterMaintenance(actx, settings(), checked)
			return nil
		})
		cancel()
	}
}

// applyClusterMaintenance switches every site whose recorded mode differs
// from the cluster's, then sets the flags in web instances not checked
// yet (keyed by role-init pid in checked, so a restarted one is new).
func (b *bootEnv) applyClusterMaintenance(ctx context.Context, settings []cluster.Setting, checked map[int]bool) {
	st := b.Stack()
	if st == nil {
		return
	}
	on := map[string]bool{}
	for _, s := range settings {
		on[s.Key] = s.Value == "on"
	}
	sites := render.Sites(st)
	for _, s := range sites {
		want := on[maintenanceKey(s)]
		if b.maintenanceOn(s) == want {
			continue
		}
		b.log.Info("maintenance: following the cluster", "site", render.SiteID(s), "on", want)
		if _, failed, err := b.switchMaintenance(ctx, s, want); err != nil || len(failed) > 0 {
			b.log.Error("maintenance: following the cluster", "site", render.SiteID(s), "on", want, "err", err, "failed", failed)
		}
	}
	targets, err := b.webTargets()
	if err != nil {
		return
	}
	recorded := make([]bool, len(sites)) // read once, not once per instance
	for i, s := range sites {
		recorded[i] = b.maintenanceOn(s)
	}
	running := map[int]bool{}
	for _, t := range targets {
		running[t.pid] = true
		if checked[t.pid] {
			continue
		}
		ok := true
		for i, s := range sites {
			want := recorded[i]
			if _, err := b.flagInRole(ctx, t, s, &want); err != nil {
				b.log.Error("maintenance: setting the mode in a started instance", "instance", t.inst.Name, "site", render.SiteID(s), "err", err)
				ok = false
			}
		}
		checked[t.pid] = ok
	}
	for pid := range checked {
		if !running[pid] {
			delete(checked, pid)
		}
	}
}

func (b *bootEnv) maintenanceView(ctx context.Context, s stackfile.Site, targets []roleTarget) MaintenanceSite {
	v := MaintenanceSite{Site: render.SiteID(s), Domains: s.Domains, On: b.maintenanceOn(s), Instances: map[string]bool{}, Errors: map[string]string{}}
	for _, a := range s.MaintenanceAllow {
		v.Allow = append(v.Allow, a.String())
	}
	for _, t := range targets {
		on, err := b.flagInRole(ctx, t, s, nil)
		if err != nil {
			v.Errors[t.inst.Name] = err.Error()
			continue
		}
		v.Instances[t.inst.Name] = on
	}
	return v
}

func (b *bootEnv) serveMaintenanceStatus(w http.ResponseWriter, r *http.Request) {
	st := b.Stack()
	sites := render.Sites(st)
	if q := r.URL.Query().Get("site"); q != "" {
		s, err := render.FindSite(st, q)
		if err != nil {
			api.WriteError(w, http.StatusNotFound, err.Error())
			return
		}
		sites = []stackfile.Site{s}
	}
	targets, err := b.webTargets()
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := []MaintenanceSite{}
	for _, s := range sites {
		out = append(out, b.maintenanceView(r.Context(), s, targets))
	}
	api.WriteJSON(w, http.StatusOK, out)
}

func (b *bootEnv) serveMaintenanceSet(w http.ResponseWriter, r *http.Request) {
	var req MaintenanceRequest
	if !api.ReadJSON(w, r, 4096, "maintenance request", &req) {
		return
	}
	st := b.Stack()
	s, err := render.FindSite(st, req.Site)
	if err != nil {
		api.WriteError(w, http.StatusNotFound, "maintenance: "+err.Error())
		return
	}
	b.mu.Lock()
	m := b.cluster
	b.mu.Unlock()
	if m != nil {
		// The cluster first: a switch the peer would not get is refused,
		// and nothing changes here either.
		value := ""
		if req.On {
			value = "on"
		}
		if _, err := m.ctl.SubmitSetting(r.Context(), maintenanceKey(s), value, m.node.LeaderAddr()); err != nil {
			api.WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("maintenance %s %s: not switched: the cluster did not take it: %v", onOff(req.On), render.SiteID(s), err))
			return
		}
	}
	targets, failed, err := b.switchMaintenance(r.Context(), s, req.On)
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if len(failed) > 0 {
		api.WriteError(w, http.StatusInternalServerError, fmt.Sprintf("maintenance %s %s: recorded, but not applied in: %s", onOff(req.On), render.SiteID(s), strings.Join(failed, "; ")))
		return
	}
	api.WriteJSON(w, http.StatusOK, b.maintenanceView(r.Context(), s, targets))
}
