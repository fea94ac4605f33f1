package main

// The reconciler's UpdateInstance on a single host: a stack-file change
// that only alters a running role's configuration files (its sites, users
// or TLS certificate) is applied as new files plus a reload, config test
// first, instead of re-creating the role. Anything else, or a role whose
// services cannot reload, is re-created as before.

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"magestack/init/failover"
	"magestack/init/roleexec"
	"magestack/init/stackfile"
	"magestack/services"
	"magestack/services/render"
)

// reloadFields are the instance changes (stackfile.InstanceChange.Fields)
// that new configuration files and a reload apply.
var reloadFields = map[string]bool{"sites": true, "users": true, "tls": true}

type instanceFunc func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error

// updateByReload returns the UpdateInstance applier for the instances
// here says this host runs; stop and start re-create an instance when a
// reload cannot apply the change.
func (b *bootEnv) updateByReload(here func(stackfile.Instance) bool, stop func(context.Context, stackfile.Instance) error, start instanceFunc) func(context.Context, *stackfile.Stack, stackfile.InstanceChange) error {
	return func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error {
		if !here(ch.New) {
			return nil
		}
		recreate := func(why string) error {
			b.log.Info("config: re-creating instance", "instance", ch.New.Name, "changed", strings.Join(ch.Fields, ","), "why", why)
			if err := stop(ctx, ch.Old); err != nil {
				return err
			}
			return start(ctx, s, ch.New)
		}
		if slices.Contains(ch.Fields, "volume") && b.volumes() != nil {
			// A DRBD volume grows online under the running instance; a
			// shrink is refused here, before the instance is touched.
			failed, err := b.ensureVolumes(ctx, s, b.Hostname(), ch.New.Name)
			if err == nil {
				err = failed.of(ch.New.Name)
			}
			if err != nil {
				return fmt.Errorf("update %s: %w", ch.New.Name, err)
			}
			b.log.Info("config: volume grown online", "instance", ch.New.Name, "size", int64(s.Roles[ch.New.Role].Volume))
			ch.Fields = slices.DeleteFunc(slices.Clone(ch.Fields), func(f string) bool { return f == "volume" })
			if len(ch.Fields) == 0 {
				return nil
			}
		}
		for _, f := range ch.Fields {
			if !reloadFields[f] {
				return recreate(f + " changes need a new environment")
			}
		}
		if len(render.Reloadable(ch.New.Role)) == 0 {
			return recreate("role " + ch.New.Role + " has no service that reloads in place")
		}
		t, _, err := b.runningInstance(ch.New.Name)
		if err != nil {
			return recreate(err.Error())
		}
		files, err := b.renderedFiles(s, ch.New)
		if err != nil {
			return fmt.Errorf("update %s: %w", ch.New.Name, err)
		}
		old, err := b.replaceFiles(ctx, t, files)
		if err != nil {
			b.restoreFiles(ctx, t, old)
			return fmt.Errorf("update %s: %w", ch.New.Name, err)
		}
		if len(old) == 0 {
			return nil // nothing this role reads changed
		}
		if _, oerr := b.reloadServices(ctx, t, ""); oerr != nil {
			// Back to the files the running services were started with.
			b.restoreFiles(ctx, t, old)
			return fmt.Errorf("update %s (%s): %s", ch.New.Name, strings.Join(ch.Fields, ","), oerr.msg)
		}
		b.log.Info("config: instance reloaded with new configuration", "instance", ch.New.Name, "changed", strings.Join(ch.Fields, ","), "files", len(old))
		return nil
	}
}

// pairUpdate is the UpdateInstance applier of a paired host: the host that
// runs an instance applies the change to it (a reload, or a new
// environment), and every host starts instances from the new revision
// from then on, so a takeover after the change brings up the changed
// instance. Instances added or removed go through pairInstances; changes
// that move an instance (host, address, image, volume) are not applied to
// a running pair (the cluster owns placement and never fails back).
func (b *bootEnv) pairUpdate(rt *roleRuntime) func(context.Context, *stackfile.Stack, stackfile.InstanceChange) error {
	update := b.updateByReload(func(inst stackfile.Instance) bool { return rt.Runs(inst.Name) },
		func(ctx context.Context, inst stackfile.Instance) error { return rt.Stop(ctx, inst.Name) },
		func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error {
			rt.SetStack(s)
			return rt.Start(ctx, inst.Name)
		})
	return func(ctx context.Context, s *stackfile.Stack, ch stackfile.InstanceChange) error {
		if err := update(ctx, s, ch); err != nil {
			return err
		}
		rt.SetStack(s)
		return nil
	}
}

// pairInstances is the Instances applier of a paired host: the revision's
// instance list goes to the cluster, whose leader places the new instances
// and releases the removed ones; it returns once the table agrees and this
// host runs what it owns, and the lbs here follow.
func (b *bootEnv) pairInstances(m *clusterMember, lbs *lbSync) func(context.Context, *stackfile.Stack) error {
	return func(ctx context.Context, s *stackfile.Stack) error {
		value, err := failover.InstancesValue(s)
		if err != nil {
			return err
		}
		m.rt.SetStack(s)
		if _, err := m.ctl.SubmitSetting(ctx, failover.InstancesKey, value, m.node.LeaderAddr()); err != nil {
			return fmt.Errorf("instances: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, pairInstancesWait)
		defer cancel()
		for {
			missing := m.instancesPending(s)
			if missing == "" {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("instances: not in force within %v: %s", pairInstancesWait, missing)
			case <-time.After(200 * time.Millisecond):
			}
		}
		lbs.converge(ctx, s)
		return nil
	}
}

// pairInstancesWait bounds how long a revision waits for the cluster to
// place its new instances and for this host to start its share.
const pairInstancesWait = 3 * time.Minute

// instancesPending says what keeps the cluster from running exactly the
// instances of s ("" when nothing): an instance without an owner, a
// removed one still owned, or one of this host's not ready here.
func (m *clusterMember) instancesPending(s *stackfile.Stack) string {
	insts, err := s.Instances()
	if err != nil {
		return err.Error()
	}
	listed := map[string]bool{}
	for _, in := range insts {
		listed[in.Name] = true
	}
	self := m.ctl.Self()
	for _, o := range m.node.Table() {
		switch {
		case !listed[o.Instance] && o.Owner != "":
			return o.Instance + " is still owned by " + o.Owner
		case listed[o.Instance] && o.Owner == "":
			return o.Instance + " has no owner yet"
		case listed[o.Instance] && o.Owner == self && !m.rt.Ready(o.Instance):
			return o.Instance + " is not ready on this host yet"
		}
		delete(listed, o.Instance)
	}
	for name := range listed {
		return name + " is not placed yet"
	}
	return ""
}

// roleFile is one file as role-init would write it.
type roleFile struct {
	path    string
	mode    uint32
	content []byte
	existed bool // for a previous version: the file was there
}

// renderedFiles are the files a fresh start of inst would write.
func (b *bootEnv) renderedFiles(s *stackfile.Stack, inst stackfile.Instance) ([]roleFile, error) {
	role := s.Roles[inst.Role]
	image := services.ImageFor(inst.Role, role.Image, b.testImage())
	p, err := services.PayloadFor(image, inst.Role, role.Settings)
	if err != nil {
		return nil, err
	}
	render := b.roleOptions().Render
	if render == nil {
		return nil, fmt.Errorf("no renderer")
	}
	if p, err = render(p, s, inst); err != nil {
		return nil, err
	}
	si := services.Instance{Name: inst.Name, Role: inst.Role, FQDN: inst.Name + ".i", Stack: s.Name}
	var out []roleFile
	for _, f := range p.Files {
		c, err := f.Render(si)
		if err != nil {
			return nil, err
		}
		mode := uint32(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		out = append(out, roleFile{path: f.Path, mode: mode, content: c})
	}
	return out, nil
}

// replaceFiles writes the files that differ from what the role has and
// returns their previous versions.
func (b *bootEnv) replaceFiles(ctx context.Context, t roleTarget, files []roleFile) ([]roleFile, error) {
	var old []roleFile
	for _, f := range files {
		res, err := b.execIn(ctx, t, []string{"/bin/sh", "-c", `test -f "$1" || exit 3; cat "$1"`, "sh", f.path})
		if err != nil {
			return old, fmt.Errorf("reading %s: %w", f.path, err)
		}
		if len(res.Output) >= 60<<10 {
			return old, fmt.Errorf("%s: too large to update in place (%d bytes)", f.path, len(res.Output))
		}
		prev := roleFile{path: f.path, mode: f.mode, existed: res.ExitCode == 0, content: []byte(res.Output)}
		if prev.existed && bytes.Equal(prev.content, f.content) {
			continue
		}
		if res.ExitCode != 0 && res.ExitCode != 3 {
			return old, fmt.Errorf("reading %s: exit %d: %s", f.path, res.ExitCode, res.Output)
		}
		if err := b.writeRoleFile(ctx, t, f); err != nil {
			return old, err
		}
		old = append(old, prev)
	}
	return old, nil
}

func (b *bootEnv) writeRoleFile(ctx context.Context, t roleTarget, f roleFile) error {
	script := `mkdir -p "$(dirname "$1")" && cat > "$1.magestack-new" && chmod "$2" "$1.magestack-new" && mv -f "$1.magestack-new" "$1"`
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	res, err := roleexec.Run(ctx, t.pid, []string{"/bin/sh", "-c", script, "sh", f.path, strconv.FormatUint(uint64(f.mode), 8)},
		roleexec.Options{Start: b.reaper.Start, Stdin: bytes.NewReader(f.content)})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(res.Output))
	}
	if err != nil {
		return fmt.Errorf("writing %s in %s: %w", f.path, t.inst.Name, err)
	}
	return nil
}

// restoreFiles puts previous versions back (removing files that were not
// there), reporting what it could not.
func (b *bootEnv) restoreFiles(ctx context.Context, t roleTarget, old []roleFile) {
	for _, f := range old {
		var err error
		if f.existed {
			err = b.writeRoleFile(ctx, t, f)
		} else if _, err = b.execIn(ctx, t, []string{"/bin/rm", "-f", f.path}); err != nil {
			err = fmt.Errorf("removing %s: %w", f.path, err)
		}
		if err != nil {
			b.log.Error("config: restoring a file after a refused update", "instance", t.inst.Name, "err", err)
		}
	}
}
