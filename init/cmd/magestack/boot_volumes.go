package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"magestack/init/api"
	"magestack/init/failover"
	"magestack/init/pid1"
	"magestack/init/roleenv"
	"magestack/init/stackfile"
	"magestack/init/volume"
)

// hostVolumes is this host's set of role volumes: the plan of the stack in
// force and the manager acting on it. It is roleenv's Volumes: an
// instance's volume is promoted and mounted before each start and demoted
// after each stop.
type hostVolumes struct {
	mgr      *volume.Manager
	mu       sync.Mutex
	plan     volume.Plan
	watching bool
	// fence answers for the cluster: whose copies are outdated.
	fence volumeFence
	// inSync is, per volume, when the watcher last saw both copies
	// connected and UpToDate: a write the peer acknowledged after it may
	// be missing here (what `failover --force` risks).
	inSync map[string]time.Time
}

// volumeFence is what volumes need of the cluster; nil functions on a
// host without a pair.
type volumeFence struct {
	host, peer string
	// outdated returns the host whose copy of the instance's volume the
	// cluster records as outdated, and since when ("" for none).
	outdated func(instance string) (string, time.Time)
	// record sets (host) or clears ("") that record.
	record func(ctx context.Context, instance, host string) error
	// owner is the instance's owner in the ownership table.
	owner func(instance string) string
}

func (v *hostVolumes) spec(instance string) (volume.Spec, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.plan.Spec(instance)
}

func (v *hostVolumes) Up(ctx context.Context, instance string) (bool, error) {
	s, ok := v.spec(instance)
	if !ok {
		return false, nil
	}
	f := v.fenceHooks()
	if f.outdated != nil {
		if who, since := f.outdated(instance); who == f.host {
			// DRBD alone would promote it: it does not know the owner
			// went on writing without this copy.
			return true, fmt.Errorf("volume %s: this host's copy is outdated: its peer went on writing without it (recorded %s); it is not promoted. Bring the peer back: this copy resyncs and the instance starts (if it is gone for good: magestack volumes accept-outdated %[1]s --yes)",
				instance, since.UTC().Format(time.RFC3339))
		}
	}
	return true, v.mgr.Promote(ctx, s)
}

func (v *hostVolumes) Down(ctx context.Context, instance string) error {
	s, ok := v.spec(instance)
	if !ok {
		return nil
	}
	return v.mgr.Demote(ctx, s)
}

// Plan is the plan in force.
func (v *hostVolumes) Plan() volume.Plan {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.plan
}

// setPlan puts plan in force and reports whether it is the first (the
// watcher is to start).
func (v *hostVolumes) setPlan(plan volume.Plan) (first bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.plan = plan
	first = !v.watching && len(plan.Specs) > 0
	v.watching = v.watching || first
	return first
}

func (v *hostVolumes) setFence(f volumeFence) {
	v.mu.Lock()
	v.fence = f
	v.mu.Unlock()
}

func (v *hostVolumes) fenceHooks() volumeFence {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fence
}

// clusterVolumeFence keeps the volumes' outdated records in the cluster's
// settings, replicated by raft like the ownership table.
func clusterVolumeFence(m *clusterMember, host, peer string) volumeFence {
	return volumeFence{
		host: host,
		peer: peer,
		outdated: func(instance string) (string, time.Time) {
			s, ok := m.node.Setting(failover.OutdatedPrefix + instance)
			if !ok {
				return "", time.Time{}
			}
			return s.Value, s.Since
		},
		record: func(ctx context.Context, instance, outdated string) error {
			_, err := m.ctl.SubmitSetting(ctx, failover.OutdatedPrefix+instance, outdated, m.node.LeaderAddr())
			return err
		},
		owner: func(instance string) string {
			o, _ := m.node.Get(instance)
			return o.Owner
		},
	}
}

// readyFor says whether target's copy of every volume of the pair is
// UpToDate, as this host sees it (its own disk, or its peer's over the
// link), and not recorded as outdated.
func (v *hostVolumes) readyFor(target string) error {
	f := v.fenceHooks()
	all, err := v.mgr.States()
	if err != nil {
		return err
	}
	var behind []string
	for _, s := range v.Plan().Specs {
		st, known := all[s.Minor]
		if !known {
			behind = append(behind, fmt.Sprintf("%s is not set up on this host", s.Name))
			continue
		}
		if s.Peer == nil {
			behind = append(behind, fmt.Sprintf("%s is not replicated: %s would start it on its own, different copy", s.Name, target))
			continue
		}
		disk := st.PeerDisk
		if target == f.host {
			disk = st.Disk
		}
		if disk != "UpToDate" {
			what := fmt.Sprintf("%s's copy of %s is %s (link %s", target, s.Name, disk, st.Connection)
			if st.Syncing() {
				what += fmt.Sprintf(", resync %.1f%% done, eta %s", st.Synced, st.Finish)
			}
			behind = append(behind, what+")")
			continue
		}
		if f.outdated != nil {
			if who, _ := f.outdated(s.Name); who == target {
				behind = append(behind, fmt.Sprintf("%s's copy of %s is recorded as outdated", target, s.Name))
			}
		}
	}
	if len(behind) > 0 {
		return fmt.Errorf("its data is not in sync: %s; wait for the resync (magestack volumes)", strings.Join(behind, "; "))
	}
	return nil
}

// releaseAll takes every volume down (shutdown).
func (v *hostVolumes) releaseAll(ctx context.Context) error {
	var errs []error
	for _, s := range v.Plan().Specs {
		errs = append(errs, v.mgr.Release(ctx, s))
	}
	return errors.Join(errs...)
}

// volumePaths: backing files on the data disk, filesystems mounted where
// roleenv binds instances' /data from.
func volumePaths() volume.Paths {
	return volume.Paths{Backing: filepath.Join(stateDir, "volumes"), Mount: roleenv.DefaultVolumeRoot}
}

// volumes returns the host's volumes, nil without a data disk: there is
// nothing to keep or replicate, and instances' /data are plain directories
// in memory.
func (b *bootEnv) volumes() *hostVolumes {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.vols == nil && isMountPoint(stateDir) {
		b.vols = &hostVolumes{mgr: volume.NewManager(b.log)}
	}
	return b.vols
}

// volumeErrors are the volumes that could not be set up, by instance.
type volumeErrors map[string]error

// of is instance's error, nil when its volume is fine.
func (e volumeErrors) of(instance string) error { return e[instance] }

// all joins every error.
func (e volumeErrors) all() error {
	var errs []error
	for _, err := range e {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ensureVolumes sets up the volumes this host holds in st (created,
// grown, attached, connected to the peer): every one before roles start,
// or only instance's when a revision starts or changes that instance
// ("" for all). A volume that fails is reported (and returned by
// instance): its instance stays down, for it must not run on an empty
// directory; the others go on. err is for the plan as a whole.
func (b *bootEnv) ensureVolumes(ctx context.Context, st *stackfile.Stack, host, instance string) (volumeErrors, error) {
	v := b.volumes()
	if v == nil {
		if instance == "" {
			b.log.Warn("volumes: no data disk: role data lives in memory and is not replicated")
		}
		return nil, nil
	}
	sec := b.stackSecret()
	plan, err := volume.PlanFor(st, host, volumePaths(), sec.Secret)
	if err != nil {
		return nil, err
	}
	if _, has := plan.Spec(instance); len(plan.Specs) == 0 || (instance != "" && !has) {
		v.setPlan(plan)
		return nil, nil
	}
	if plan.Unreplicated != "" {
		b.log.Warn("volumes: not replicated", "reason", plan.Unreplicated)
	}
	if err := b.loadModule(ctx, "drbd"); err != nil {
		return nil, err
	}
	if plan.Ports() != nil {
		if err := setDRBDHandler(); err != nil {
			// Without the handler a Primary that loses its peer keeps its
			// writes frozen: safe, and said.
			b.log.Error("volumes: DRBD's fence-peer handler is not in place", "err", err)
		}
	}
	// DRBD binds the pair-link address to listen; the cluster step would
	// put it there later.
	if h, _, ok := st.HostByName(host); ok && h.PairLink != nil {
		if err := configurePairLink(*h.PairLink); err != nil {
			b.log.Warn("volumes: the pair link is not up; replication waits for it", "err", err)
		}
	}
	failed := volumeErrors{}
	for _, s := range plan.Specs {
		if instance != "" && s.Name != instance {
			continue
		}
		if err := v.mgr.Ensure(ctx, s); err != nil {
			b.log.Error("volume: not ready; its instance stays down", "volume", s.Name, "err", err)
			failed[s.Name] = err
		}
	}
	if v.setPlan(plan) {
		pid1.Go(b.log, "volume watch", func() { v.watch(b.ctx, b.log) })
	}
	return failed, nil
}

// watch logs every change of a volume's DRBD state (link, roles, disks,
// resync end), sets up again a volume that is not (or is no longer)
// attached or connected, and clears fence records that are obsolete.
func (v *hostVolumes) watch(ctx context.Context, log *slog.Logger) {
	last := map[string]volume.State{}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	lastTry, lastFence := map[string]time.Time{}, map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f := v.fenceHooks()
		all, err := v.mgr.States()
		if err != nil {
			continue
		}
		for _, s := range v.Plan().Specs {
			st, known := all[s.Minor]
			// Set-up failed at boot, the disk was detached after an I/O
			// error, or DRBD left a replicated volume StandAlone (the
			// peer's address was not up yet, a network error): set it up
			// again, spaced. After a split brain DRBD drops the link again
			// at once and says so: no data is discarded by trying.
			if !known || st.Disk == "Diskless" || (s.Peer != nil && st.Connection == "StandAlone") {
				if time.Since(lastTry[s.Name]) > 10*time.Second {
					lastTry[s.Name] = time.Now()
					cctx, cancel := context.WithTimeout(ctx, time.Minute)
					if err := v.mgr.Ensure(cctx, s); err != nil {
						log.Warn("volume: not ready; trying again", "volume", s.Name, "err", err)
					}
					cancel()
				}
				if !known || st.Disk == "Diskless" {
					continue
				}
			}
			prev, seen := last[s.Name]
			last[s.Name] = st
			if st.InSync() {
				v.sawInSync(s.Name, time.Now())
			}
			if seen && (prev.Connection != st.Connection || prev.Role != st.Role || prev.PeerRole != st.PeerRole ||
				prev.Disk != st.Disk || prev.PeerDisk != st.PeerDisk) {
				log.Info("volume: state", "volume", s.Name, "link", st.Connection, "role", st.Role+"/"+st.PeerRole,
					"disk", st.Disk+"/"+st.PeerDisk, "out_of_sync_kib", st.OutOfSync)
				if prev.Syncing() && !st.Syncing() {
					log.Info("volume: resync done", "volume", s.Name, "disk", st.Disk+"/"+st.PeerDisk)
				}
			}
			// Writes frozen after the fence handler gave up (the cluster had
			// no majority to record the peer's copy as outdated): try
			// again, spaced, and let them go on once the record is in,
			// e.g. after an operator's `failover --force` made this host
			// the cluster alone.
			if st.Frozen && st.Role == "Primary" && st.Connection != "Connected" && f.record != nil &&
				time.Since(lastFence[s.Name]) > 10*time.Second {
				lastFence[s.Name] = time.Now()
				v.unfreeze(ctx, s, f, log)
			}
			// Both copies are connected and UpToDate again: the record is
			// obsolete. Only the host that kept writing may say so: the
			// outdated host's own view lags (it may still show the link it
			// has not yet noticed is gone, and clear a record just made).
			// That host may be Secondary by now (a planned move).
			if f.outdated != nil && st.InSync() {
				if who, _ := f.outdated(s.Name); who != "" && who != f.host {
					cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					if err := f.record(cctx, s.Name, ""); err != nil {
						log.Warn("volume: the peer is in sync again, but the cluster did not take it", "volume", s.Name, "err", err)
					} else {
						log.Info("volume: both copies are in sync again; outdated record cleared", "volume", s.Name, "was", who)
					}
					cancel()
				}
			}
		}
	}
}

// fenceRefusal is why this host may not record its peer's copy as
// outdated at all (as opposed to the cluster not taking the record yet);
// code is the fence handler's HTTP answer.
type fenceRefusal struct {
	code int
	why  string
}

func (e *fenceRefusal) Error() string { return e.why }

// outdatePeer records in the cluster that the peer's copy of instance's
// volume is outdated: what lets a Primary that lost its link go on writing.
// Only the instance's owner may (a host that lost the instance must not
// mark the new owner's copy stale).
func (f volumeFence) outdatePeer(ctx context.Context, instance string) error {
	switch {
	case f.record == nil:
		return &fenceRefusal{http.StatusServiceUnavailable, "this host is not in a cluster yet"}
	case f.peer == "":
		return &fenceRefusal{http.StatusConflict, "this host has no peer"}
	}
	if owner := f.owner(instance); owner != f.host {
		return &fenceRefusal{http.StatusConflict, fmt.Sprintf("%s is owned by %q, not this host", instance, owner)}
	}
	return f.record(ctx, instance, f.peer)
}

// unfreeze resumes a Primary's frozen writes once the cluster records the
// peer's copy as outdated: the fence handler's work, for a record that
// could not be made in its time.
func (v *hostVolumes) unfreeze(ctx context.Context, s volume.Spec, f volumeFence, log *slog.Logger) {
	if who, _ := f.outdated(s.Name); who != f.peer {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f.outdatePeer(rctx, s.Name)
		cancel()
		if err != nil {
			log.Warn("volume: writes stay frozen: the peer's copy cannot be recorded as outdated yet", "volume", s.Name, "err", err)
			return
		}
	}
	if err := v.mgr.ResumeIO(ctx, s); err != nil {
		log.Error("volume: writes stay frozen", "volume", s.Name, "err", err)
	}
}

func (v *hostVolumes) sawInSync(instance string, at time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.inSync == nil {
		v.inSync = map[string]time.Time{}
	}
	v.inSync[instance] = at
}

// lastInSync is when both copies of instance's volume were last seen
// connected and UpToDate since this host started (zero: not seen).
func (v *hostVolumes) lastInSync(instance string) time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.inSync[instance]
}

// setDRBDHandler makes the kernel's DRBD module run this binary's
// drbd-handler face for its events (fence-peer, split-brain).
func setDRBDHandler() error {
	const param = "/sys/module/drbd/parameters/usermode_helper"
	if cur, err := os.ReadFile(param); err == nil && strings.TrimSpace(string(cur)) == drbdHandlerLink {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(drbdHandlerLink), 0o755); err != nil {
		return err
	}
	os.Remove(drbdHandlerLink)
	if err := os.Symlink(exe, drbdHandlerLink); err != nil {
		return err
	}
	return os.WriteFile(param, []byte(drbdHandlerLink), 0)
}

// serveVolumeEvent takes the DRBD handler's events. fence-peer: this host
// is Primary and lost its peer; its writes are frozen until the cluster
// records the peer's copy as outdated, which only the instance's owner
// may do (a host that lost the instance must not mark the new owner's
// copy stale). The answer's status is the handler's verdict.
func (b *bootEnv) serveVolumeEvent(w http.ResponseWriter, r *http.Request) {
	var req volumeEventRequest
	if !api.ReadJSON(w, r, 1024, "volume event", &req) {
		return
	}
	v := b.volumes()
	var spec volume.Spec
	found := false
	if v != nil {
		for _, s := range v.Plan().Specs {
			if s.Minor == req.Minor || (req.Resource != "" && s.Resource() == req.Resource) {
				spec, found = s, true
			}
		}
	}
	if !found {
		api.WriteError(w, http.StatusNotFound, fmt.Sprintf("no volume %q (minor %d) here", req.Resource, req.Minor))
		return
	}
	switch req.Event {
	case "fence-peer":
	case "split-brain", "pri-lost-after-sb":
		b.log.Error("volume: split brain: both copies wrote without the other; DRBD keeps both and stays disconnected",
			"volume", spec.Name, "event", req.Event, "see", "docs/operations.md: split brain")
		api.WriteJSON(w, http.StatusOK, map[string]string{})
		return
	default:
		b.log.Info("volume: DRBD event", "volume", spec.Name, "event", req.Event)
		api.WriteJSON(w, http.StatusOK, map[string]string{})
		return
	}
	f := v.fenceHooks()
	ctx, cancel := context.WithTimeout(r.Context(), 45*time.Second)
	defer cancel()
	for {
		err := f.outdatePeer(ctx, spec.Name)
		if err == nil {
			break
		}
		var refused *fenceRefusal
		if errors.As(err, &refused) {
			b.log.Error("volume: writes stay frozen: the link to the peer broke", "volume", spec.Name, "why", err)
			api.WriteError(w, refused.code, "fence-peer: "+err.Error())
			return
		}
		if ctx.Err() != nil {
			b.log.Error("volume: writes stay frozen: the cluster did not record the peer's copy as outdated", "volume", spec.Name, "err", err)
			api.WriteError(w, http.StatusServiceUnavailable, "fence-peer: "+err.Error())
			return
		}
		time.Sleep(time.Second)
	}
	b.log.Warn("volume: the peer's copy is outdated (recorded in the cluster); writes go on here alone",
		"volume", spec.Name, "peer", f.peer)
	api.WriteJSON(w, http.StatusOK, map[string]string{"outdated": f.peer})
}

// volumeRequest reads an operator's request naming one of this host's
// volumes; false when it answered with the error.
func (b *bootEnv) volumeRequest(w http.ResponseWriter, r *http.Request) (*hostVolumes, volume.Spec, bool) {
	var req struct {
		Volume string `json:"volume"`
	}
	if !api.ReadJSON(w, r, 1024, "volume request", &req) {
		return nil, volume.Spec{}, false
	}
	v := b.volumes()
	if v == nil {
		api.WriteError(w, http.StatusNotFound, "this host has no volumes (no data disk)")
		return nil, volume.Spec{}, false
	}
	s, ok := v.spec(req.Volume)
	if !ok {
		api.WriteError(w, http.StatusNotFound, fmt.Sprintf("no volume %q on this host", req.Volume))
		return nil, volume.Spec{}, false
	}
	return v, s, true
}

// serveVolumeAcceptOutdated clears the record that this host's copy is
// outdated (`magestack volumes accept-outdated`): the operator knows the
// host that wrote on is gone for good and takes the older copy.
func (b *bootEnv) serveVolumeAcceptOutdated(w http.ResponseWriter, r *http.Request) {
	v, s, ok := b.volumeRequest(w, r)
	if !ok {
		return
	}
	f := v.fenceHooks()
	if f.outdated == nil {
		api.WriteError(w, http.StatusConflict, "this host is not in a cluster yet")
		return
	}
	who, since := f.outdated(s.Name)
	if who != f.host {
		api.WriteError(w, http.StatusConflict, fmt.Sprintf("%s: this host's copy is not recorded as outdated (record: %q)", s.Name, who))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := f.record(ctx, s.Name, ""); err != nil {
		api.WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: the cluster did not take it: %v", s.Name, err))
		return
	}
	b.log.Error("volume: the operator accepted this host's outdated copy; the peer's writes since the break are lost unless it returns",
		"volume", s.Name, "outdated_since", since.UTC().Format(time.RFC3339))
	api.WriteJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf("%s: this host's copy may be promoted now (writes made on the peer since %s are not in it)", s.Name, since.UTC().Format(time.RFC3339))})
}

// serveVolumeDiscard resolves a split brain against this host's copy of a
// volume (`magestack volumes discard`).
func (b *bootEnv) serveVolumeDiscard(w http.ResponseWriter, r *http.Request) {
	v, s, ok := b.volumeRequest(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 50*time.Second)
	defer cancel()
	if err := v.mgr.DiscardLocal(ctx, s); err != nil {
		api.WriteError(w, http.StatusConflict, err.Error())
		return
	}
	b.log.Warn("volume: split brain resolved by the operator: this host's copy discarded", "volume", s.Name)
	api.WriteJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf("%s: this host's copy is discarded and resyncs from %s (magestack volumes shows the progress)", s.Name, s.Peer.Remote.Addr())})
}
