package main

// `magestack reload <instance>[/<service>]`: a role's service rereads its
// configuration without the role (or the service) restarting. The
// service's own config test runs first, inside the role; a failing test
// refuses the reload with the checker's message and the running service
// keeps its previous configuration.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"magestack/init/api"
	"magestack/init/roleexec"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services"
	"magestack/services/render"
)

func reloadMain(args []string) int { return reloadFace(args, os.Stdout, os.Stderr) }

// ReloadReply is POST /v1/reload/<instance>[/<service>].
type ReloadReply struct {
	Unit     string            `json:"unit"`
	Services []ReloadedService `json:"services"`
}

// ReloadedService is one service's check and reload.
type ReloadedService struct {
	Service     string   `json:"service"`
	Check       []string `json:"check"`
	CheckOutput string   `json:"check_output,omitempty"`
	Reloaded    bool     `json:"reloaded"`
	PID         int      `json:"pid,omitempty"` // main process inside the role (unchanged by a reload)
	Output      string   `json:"output,omitempty"`
}

// checkTimeout bounds one config test or reload command (slow under TCG).
const checkTimeout = 2 * time.Minute

func reloadFace(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("reload", "<instance>[/<service>] [-o json] [--socket PATH]", stderr, true)
	pos, err := c.parse(args)
	var unit string
	if err == nil {
		unit, err = checkUnitArg(pos)
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*checkTimeout+30*time.Second)
	defer cancel()
	var r ReloadReply
	if err := api.NewClient(*c.socket).Do(ctx, http.MethodPost, "/v1/reload/"+unit, nil, &r); err != nil {
		return apiError(stderr, "reload", err)
	}
	if c.json() {
		writeJSON(stdout, r)
		return 0
	}
	for _, s := range r.Services {
		fmt.Fprintf(stdout, "%s/%s: config test passed (%s), reloaded (pid %d)\n", r.Unit, s.Service, strings.Join(s.Check, " "), s.PID)
	}
	return 0
}

// roleTarget is a running role instance on this host.
type roleTarget struct {
	inst  stackfile.Instance
	pid   int // role-init's host pid
	ready bool
}

// runningInstance finds a role instance this host runs now.
func (b *bootEnv) runningInstance(name string) (roleTarget, int, error) {
	b.mu.Lock()
	sup := b.sup
	b.mu.Unlock()
	if sup == nil {
		return roleTarget{}, http.StatusServiceUnavailable, fmt.Errorf("roles are not started yet")
	}
	st := b.Stack()
	insts, err := st.Instances()
	if err != nil {
		return roleTarget{}, http.StatusInternalServerError, err
	}
	var inst *stackfile.Instance
	var names []string
	for i := range insts {
		names = append(names, insts[i].Name)
		if insts[i].Name == name {
			inst = &insts[i]
		}
	}
	if inst == nil {
		return roleTarget{}, http.StatusNotFound, fmt.Errorf("instance %q: not in stack %s (instances: %s)", name, st.Name, strings.Join(names, ", "))
	}
	b.mu.Lock()
	m := b.cluster
	b.mu.Unlock()
	if m != nil {
		// On a pair the table says where it runs: point there.
		if o, ok := m.node.Get(name); ok && o.Owner != b.Hostname() {
			where := "no host (it is being moved)"
			if o.Owner != "" {
				where = o.Owner
			}
			return roleTarget{}, http.StatusConflict, fmt.Errorf("instance %s runs on %s, not on this host (%s): run the command there", name, where, b.Hostname())
		}
	}
	us, err := sup.Unit(name)
	if err != nil {
		return roleTarget{}, http.StatusNotFound, fmt.Errorf("instance %s: not run by this host (%s): %w", name, b.Hostname(), err)
	}
	if us.PID == 0 || (us.State != supervise.StateReady && us.State != supervise.StateRunning) {
		return roleTarget{}, http.StatusConflict, fmt.Errorf("instance %s is %s: it must be running", name, us.State)
	}
	return roleTarget{inst: *inst, pid: us.PID, ready: us.State == supervise.StateReady}, 0, nil
}

// execIn runs argv inside the role through the host's reaper.
func (b *bootEnv) execIn(ctx context.Context, t roleTarget, argv []string) (roleexec.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	return roleexec.Run(ctx, t.pid, argv, roleexec.Options{Start: b.reaper.Start})
}

// opError is a refusal with the HTTP status that fits it.
type opError struct {
	code int
	msg  string
}

func (e *opError) Error() string { return e.msg }

func opErrorf(code int, format string, args ...any) *opError {
	return &opError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (b *bootEnv) serveReload(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("unit")
	instName, svc, _ := strings.Cut(name, "/")
	for _, n := range []string{instName, svc} {
		if n != "" && !supervise.ValidName(n) {
			api.WriteError(w, http.StatusBadRequest, fmt.Sprintf("reload %q: %q is not a valid name", name, n))
			return
		}
	}
	t, code, err := b.runningInstance(instName)
	if err != nil {
		api.WriteError(w, code, "reload "+name+": "+err.Error())
		return
	}
	reply, oerr := b.reloadServices(r.Context(), t, svc)
	if oerr != nil {
		api.WriteError(w, oerr.code, oerr.msg)
		return
	}
	api.WriteJSON(w, http.StatusOK, reply)
}

// reloadServices checks and then reloads svc of the running instance t
// ("": every service of its role that reloads in place).
func (b *bootEnv) reloadServices(ctx context.Context, t roleTarget, svc string) (ReloadReply, *opError) {
	instName := t.inst.Name
	name := instName
	if svc != "" {
		name += "/" + svc
	}
	// The role's own supervisor knows its services and their main pids
	// (as the role sees them).
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rs, err := api.NewClient(b.roleOptions().ServiceSocket(instName, t.pid)).Status(sctx)
	cancel()
	if err != nil {
		return ReloadReply{}, opErrorf(http.StatusBadGateway, "reload %s: asking %s's supervisor: %v", name, instName, err)
	}
	running := map[string]supervise.UnitStatus{}
	for _, u := range rs.Units {
		running[u.Name] = u
	}
	var targets []string
	if svc != "" {
		if _, ok := running[svc]; !ok {
			return ReloadReply{}, opErrorf(http.StatusNotFound, "reload %s: %s has no service %q", name, instName, svc)
		}
		if _, err := render.ReloadFor(t.inst.Role, svc); err != nil {
			return ReloadReply{}, opErrorf(http.StatusBadRequest, "reload %s: %v", name, err)
		}
		targets = []string{svc}
	} else {
		for _, s := range render.Reloadable(t.inst.Role) {
			if _, ok := running[s]; ok {
				targets = append(targets, s)
			}
		}
		if len(targets) == 0 {
			return ReloadReply{}, opErrorf(http.StatusBadRequest, "reload %s: role %s has no service that reloads in place (restart it instead)", name, t.inst.Role)
		}
	}
	reply := ReloadReply{Unit: instName}
	// Every check first: a role's services are reloaded together or not at all.
	for _, s := range targets {
		spec, _ := render.ReloadFor(t.inst.Role, s)
		us := running[s]
		if us.PID == 0 || (us.State != supervise.StateReady && us.State != supervise.StateRunning) {
			return ReloadReply{}, opErrorf(http.StatusConflict, "reload %s/%s: the service is %s, not running: nothing to reload (start it: magestack start %s/%s)", instName, s, us.State, instName, s)
		}
		res, err := b.execIn(ctx, t, spec.Check)
		if err != nil {
			return ReloadReply{}, opErrorf(http.StatusInternalServerError, "reload %s/%s: running its config test: %v", instName, s, err)
		}
		if res.ExitCode != 0 {
			b.log.Warn("reload refused: config test failed", "unit", instName+"/"+s, "check", strings.Join(spec.Check, " "), "output", res.Output)
			return ReloadReply{}, opErrorf(http.StatusUnprocessableEntity, "reload %s/%s refused: config test `%s` failed (exit %d); %s keeps running its previous configuration:\n%s",
				instName, s, strings.Join(spec.Check, " "), res.ExitCode, s, strings.TrimSpace(res.Output))
		}
		reply.Services = append(reply.Services, ReloadedService{Service: s, Check: spec.Check, CheckOutput: strings.TrimSpace(res.Output), PID: us.PID})
	}
	for i := range reply.Services {
		rsv := &reply.Services[i]
		spec, _ := render.ReloadFor(t.inst.Role, rsv.Service)
		argv := spec.Command
		if spec.Signal != "" {
			if _, err := services.Signal(spec.Signal); err != nil {
				return ReloadReply{}, opErrorf(http.StatusInternalServerError, "reload %s/%s: %v", instName, rsv.Service, err)
			}
			// kill inside the role: the pid is the role's view of it.
			argv = []string{"/bin/sh", "-c", `kill -s "$1" "$2"`, "sh", strings.TrimPrefix(spec.Signal, "SIG"), strconv.Itoa(rsv.PID)}
		}
		res, err := b.execIn(ctx, t, argv)
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("`%s` exited %d: %s", strings.Join(argv, " "), res.ExitCode, strings.TrimSpace(res.Output))
		}
		if err != nil {
			return ReloadReply{}, opErrorf(http.StatusInternalServerError, "reload %s/%s: config test passed but the reload failed: %v", instName, rsv.Service, err)
		}
		rsv.Reloaded, rsv.Output = true, strings.TrimSpace(res.Output)
		b.log.Info("service reloaded", "unit", instName+"/"+rsv.Service, "pid", rsv.PID)
	}
	return reply, nil
}
