package main

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

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

// ensureVolumes sets up every volume this host holds in st (created,
// grown, attached, connected to the peer) before roles start. A volume
// that fails is reported and its instance stays down: it must not run on
// an empty directory.
func (b *bootEnv) ensureVolumes(ctx context.Context, st *stackfile.Stack, host string) error {
	v := b.volumes()
	if v == nil {
		b.log.Warn("volumes: no data disk: role data lives in memory and is not replicated")
		return nil
	}
	sec := b.stackSecret()
	plan, err := volume.PlanFor(st, host, volumePaths(), sec.Secret)
	if err != nil {
		return err
	}
	if len(plan.Specs) == 0 {
		return nil
	}
	if plan.Unreplicated != "" {
		b.log.Warn("volumes: not replicated", "reason", plan.Unreplicated)
	}
	if err := b.loadModule(ctx, "drbd"); err != nil {
		return err
	}
	// DRBD binds the pair-link address to listen; the cluster step would
	// put it there later.
	if h, _, ok := st.HostByName(host); ok && h.PairLink != nil {
		if err := configurePairLink(*h.PairLink); err != nil {
			b.log.Warn("volumes: the pair link is not up; replication waits for it", "err", err)
		}
	}
	var errs []error
	for _, s := range plan.Specs {
		if err := v.mgr.Ensure(ctx, s); err != nil {
			b.log.Error("volume: not ready; its instance stays down", "volume", s.Name, "err", err)
			errs = append(errs, err)
		}
	}
	v.mu.Lock()
	v.plan = plan
	first := !v.watching
	v.watching = true
	v.mu.Unlock()
	if first {
		pid1.Go(b.log, "volume watch", func() { v.watch(b.ctx, b.log) })
	}
	return errors.Join(errs...)
}

// watch logs every change of a volume's DRBD state (link, roles, disks,
// resync start and end) and reconnects a replicated volume DRBD left
// StandAlone (the peer's address was not up yet, a network error). After
// a split brain DRBD drops the link again at once and says so in the
// kernel log: no data is discarded by trying.
func (v *hostVolumes) watch(ctx context.Context, log *slog.Logger) {
	last := map[string]volume.State{}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	lastTry := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, s := range v.Plan().Specs {
			st, known, err := v.mgr.State(s.Minor)
			if err != nil || !known {
				continue
			}
			prev, seen := last[s.Name]
			last[s.Name] = st
			if seen && (prev.Connection != st.Connection || prev.Role != st.Role || prev.PeerRole != st.PeerRole ||
				prev.Disk != st.Disk || prev.PeerDisk != st.PeerDisk) {
				log.Info("volume: state", "volume", s.Name, "link", st.Connection, "role", st.Role+"/"+st.PeerRole,
					"disk", st.Disk+"/"+st.PeerDisk, "out_of_sync_kib", st.OutOfSync)
				if prev.Syncing() && !st.Syncing() {
					log.Info("volume: resync done", "volume", s.Name, "disk", st.Disk+"/"+st.PeerDisk)
				}
			}
			if s.Peer != nil && st.Connection == "StandAlone" && time.Since(lastTry[s.Name]) > 10*time.Second {
				lastTry[s.Name] = time.Now()
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				if err := v.mgr.Ensure(cctx, s); err != nil {
					log.Warn("volume: reconnect failed", "volume", s.Name, "err", err)
				}
				cancel()
			}
		}
	}
}
