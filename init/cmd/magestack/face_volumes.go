package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/api"
	"magestack/init/volume"
)

// volumeStatus is one volume as `magestack volumes` and the status
// section "volumes" show it.
type volumeStatus struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Used   int64  `json:"used,omitempty"` // bytes in use; only where mounted (Primary)
	Device string `json:"device"`
	Peer   string `json:"peer,omitempty"` // replication peer address; "" unreplicated
	Error  string `json:"error,omitempty"`
	// Outdated names the host whose copy the cluster records as outdated
	// (the owner wrote without it); that host does not promote it.
	Outdated string `json:"outdated,omitempty"`
	// Generation is the copy's data generation (DRBD's current UUID):
	// equal on both hosts when in sync; after a split brain, compare them
	// to see which host has which data.
	Generation string `json:"generation,omitempty"`
	// InSyncUntil is when this host last saw both copies connected and
	// UpToDate (zero: not since it started); on a pair whose link is down,
	// writes the peer acknowledged after it may be missing here.
	InSyncUntil time.Time `json:"in_sync_until,omitzero"`
	volume.State
}

// volumeStatuses is the "volumes" status section: the plan joined with
// what the kernel says.
func (b *bootEnv) volumeStatuses(ctx context.Context) (any, error) {
	v := b.volumes()
	if v == nil {
		return nil, nil
	}
	f := v.fenceHooks()
	all, err := v.mgr.States()
	var out []volumeStatus
	for _, s := range v.Plan().Specs {
		vs := volumeStatus{Name: s.Name, Size: s.Size, Device: s.Device()}
		if s.Peer != nil {
			vs.Peer = s.Peer.Remote.String()
			vs.InSyncUntil = v.lastInSync(s.Name)
		}
		if f.outdated != nil {
			vs.Outdated, _ = f.outdated(s.Name)
		}
		st, known := all[s.Minor]
		switch {
		case err != nil:
			vs.Error = err.Error()
		case !known:
			vs.Error = "not set up (see the log)"
		default:
			vs.State = st
		}
		if known {
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			vs.Generation, _ = v.mgr.Generation(gctx, s.Minor)
			cancel()
		}
		var fs unix.Statfs_t
		if st.Role == "Primary" && unix.Statfs(s.Mount, &fs) == nil {
			vs.Used = int64(fs.Blocks-fs.Bfree) * fs.Bsize
		}
		out = append(out, vs)
	}
	return out, nil
}

func volumesMain(args []string) int { return ctlVolumes(args, os.Stdout, os.Stderr) }

func ctlVolumes(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("volumes", "[-o json] [--socket PATH] | discard INSTANCE --yes | accept-outdated INSTANCE --yes", stderr, true)
	yes := c.fs.Bool("yes", false, "discard, accept-outdated: confirm the writes the command says are lost")
	pos, err := c.parse(args)
	if err == nil && len(pos) > 0 && (pos[0] == "discard" || pos[0] == "accept-outdated") {
		return ctlVolumeOverride(c, pos[0], pos[1:], *yes, stdout, stderr)
	}
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := api.NewClient(*c.socket).Status(ctx)
	if err != nil {
		return apiError(stderr, "volumes", err)
	}
	vols, err := statusVolumes(st)
	if err != nil {
		fmt.Fprintf(stderr, "magestack volumes: %v\n", err)
		return 1
	}
	if c.json() {
		if vols == nil {
			vols = []volumeStatus{}
		}
		writeJSON(stdout, vols)
		return 0
	}
	if len(vols) == 0 {
		fmt.Fprintln(stdout, "no volumes on this host (no data disk, or no role with a volume)")
		return 0
	}
	writeVolumes(stdout, vols)
	return 0
}

// statusVolumes is the "volumes" section of a status reply (nil when the
// host has none).
func statusVolumes(st *api.StatusReply) ([]volumeStatus, error) {
	raw, ok := st.Sections["volumes"]
	if !ok {
		return nil, nil
	}
	var vols []volumeStatus
	if err := json.Unmarshal(raw, &vols); err != nil {
		return nil, fmt.Errorf("status section volumes: %w", err)
	}
	return vols, nil
}

// writeVolumes prints the volumes table: size and use, DRBD role and
// disk state on both sides, the link, and a running resync's progress.
func writeVolumes(w io.Writer, vols []volumeStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tSIZE\tUSED\tROLE\tDISK\tPEER-DISK\tLINK\tSYNC\tGENERATION")
	for _, v := range vols {
		used := "-"
		if v.Used > 0 {
			used = formatBytes(uint64(v.Used))
		}
		sync := "-"
		if v.Syncing() {
			sync = fmt.Sprintf("%.1f%% eta %s", v.Synced, orDash(v.Finish))
		} else if v.OutOfSync > 0 && v.Peer != "" {
			sync = fmt.Sprintf("%s out of sync", formatBytes(uint64(v.OutOfSync)<<10))
		}
		link := orDash(v.Connection)
		if v.Peer == "" && v.Error == "" {
			link = "unreplicated"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, formatBytes(uint64(v.Size)), used,
			orDash(v.Role), orDash(v.Disk), orDash(v.PeerDisk), link, sync, orDash(v.Generation))
	}
	tw.Flush()
	for _, v := range vols {
		if v.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", v.Name, v.Error)
		}
		if v.Outdated != "" {
			fmt.Fprintf(w, "%s: %s's copy is outdated (the owner wrote without it); it is not promoted until it has resynced\n", v.Name, v.Outdated)
		}
	}
}

// ctlVolumeOverride runs an operator's decision on a volume, on the host
// it concerns: discard (after a split brain, this host's writes since the
// link broke go and its copy resyncs from the peer's) or accept-outdated
// (this host's copy is recorded outdated and the peer that wrote on is not
// coming back: promote it anyway, losing those writes).
func ctlVolumeOverride(c *ctlFlags, what string, pos []string, yes bool, stdout, stderr io.Writer) int {
	if len(pos) != 1 {
		return usageError(c, stderr, fmt.Errorf("%s wants one instance, e.g. %s db1 --yes", what, what))
	}
	if !yes {
		risk := "this throws away every write made to %s on this host since the link broke, and resyncs it from the peer; compare the GENERATION both hosts show first"
		if what == "accept-outdated" {
			risk = "this lets this host promote its outdated copy of %s: every write the peer made since the link broke is lost unless the peer comes back (then the copies have split and one side must be discarded)"
		}
		fmt.Fprintf(stderr, "magestack volumes %s %s: "+risk+". Add --yes to do it.\n", what, pos[0], pos[0])
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rep map[string]string
	if err := api.NewClient(*c.socket).Do(ctx, "POST", "/v1/volumes/"+what, map[string]string{"volume": pos[0]}, &rep); err != nil {
		return apiError(stderr, "volumes "+what, err)
	}
	fmt.Fprintln(stdout, rep["message"])
	return 0
}
