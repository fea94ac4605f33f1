package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"magestack/init/volume"
)

func TestWriteVolumes(t *testing.T) {
	vols := []volumeStatus{
		{Name: "db1", Size: 1 << 30, Used: 80 << 20, Peer: "10.99.0.2:7840", Generation: "A1B2",
			State: volume.State{Connection: "SyncSource", Role: "Primary", Disk: "UpToDate", PeerDisk: "Inconsistent", Synced: 42.5, Finish: "0:01:10", OutOfSync: 4096}},
		{Name: "acc1", Size: 1 << 30, Outdated: "dh2", Peer: "10.99.0.2:7860",
			State: volume.State{Connection: "WFConnection", Role: "Secondary", Disk: "UpToDate", PeerDisk: "DUnknown"}},
		{Name: "mail1", Size: 256 << 20, State: volume.State{Connection: "StandAlone", Role: "Primary", Disk: "UpToDate", PeerDisk: "DUnknown", OutOfSync: 9}},
		{Name: "monitor1", Size: 256 << 20, Error: "not set up (see the log)"},
	}
	var b bytes.Buffer
	writeVolumes(&b, vols)
	out := b.String()
	for _, want := range []string{
		`(?m)^VOLUME\s+SIZE\s+USED\s+ROLE\s+DISK\s+PEER-DISK\s+LINK\s+SYNC\s+GENERATION$`,
		`(?m)^db1\s+1\.00G\s+80\.0M\s+Primary\s+UpToDate\s+Inconsistent\s+SyncSource\s+42\.5% eta 0:01:10\s+A1B2$`,
		`(?m)^acc1\s+1\.00G\s+-\s+Secondary\s+UpToDate\s+DUnknown\s+WFConnection\s+-\s+-$`,
		// An unreplicated volume's bitmap is not data to sync.
		`(?m)^mail1\s+256\.0M\s+-\s+Primary\s+UpToDate\s+DUnknown\s+unreplicated\s+-\s+-$`,
		`(?m)^acc1: dh2's copy is outdated`,
		`(?m)^monitor1: not set up`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("no %s in:\n%s", want, out)
		}
	}
}

func TestVolumeOverridesNeedYes(t *testing.T) {
	for _, what := range []string{"discard", "accept-outdated"} {
		var out, errb bytes.Buffer
		if rc := ctlVolumes([]string{"--socket", "/nonexistent", what, "db1"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "Add --yes") {
			t.Errorf("%s without --yes: rc %d, %q", what, rc, errb.String())
		}
	}
}

// outdatePeer is the fence step the DRBD handler and the volume watcher
// share: only the owner, in a cluster, with a peer, records the peer's
// copy as outdated, and it records the peer.
func TestOutdatePeerOnlyByTheOwner(t *testing.T) {
	var recorded []string
	record := func(_ context.Context, instance, host string) error {
		recorded = append(recorded, instance+"="+host)
		return nil
	}
	owner := func(string) string { return "dh1" }
	for _, tc := range []struct {
		name     string
		f        volumeFence
		wantCode int // 0: recorded
	}{
		{"owner records the peer", volumeFence{host: "dh1", peer: "dh2", record: record, owner: owner}, 0},
		{"not the owner", volumeFence{host: "dh2", peer: "dh1", record: record, owner: owner}, http.StatusConflict},
		{"no peer", volumeFence{host: "dh1", record: record, owner: owner}, http.StatusConflict},
		{"no cluster yet", volumeFence{host: "dh1", peer: "dh2", owner: owner}, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recorded = nil
			err := tc.f.outdatePeer(context.Background(), "db1")
			var refused *fenceRefusal
			switch {
			case tc.wantCode == 0 && (err != nil || len(recorded) != 1 || recorded[0] != "db1=dh2"):
				t.Fatalf("err %v, recorded %v; want db1=dh2", err, recorded)
			case tc.wantCode != 0 && (!errors.As(err, &refused) || refused.code != tc.wantCode || len(recorded) != 0):
				t.Fatalf("err %v, recorded %v; want a refusal %d and no record", err, recorded, tc.wantCode)
			}
		})
	}
}
