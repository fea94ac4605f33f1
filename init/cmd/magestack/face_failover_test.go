package main

import (
	"strings"
	"testing"
	"time"

	"magestack/init/volume"
)

func TestForceRisksNamesWhatEachVolumeMayLose(t *testing.T) {
	synced := time.Date(2026, 12, 7, 20, 31, 22, 0, time.UTC)
	for _, tc := range []struct {
		name string
		vol  volumeStatus
		want string // "" for no line
	}{
		{"unreplicated", volumeStatus{Name: "db1", State: volume.State{Disk: "UpToDate"}}, ""},
		{"recorded outdated here", volumeStatus{Name: "db1", Peer: "10.0.0.2:7840", Outdated: "dh2", State: volume.State{Disk: "UpToDate"}},
			"db1: stays down: the cluster records this host's copy as outdated"},
		{"peer still connected", volumeStatus{Name: "db1", Peer: "10.0.0.2:7840", State: volume.State{Disk: "UpToDate", Connection: "Connected"}},
			"db1: the peer's copy is still connected"},
		{"inconsistent here", volumeStatus{Name: "acc1", Peer: "10.0.0.2:7860", State: volume.State{Disk: "Inconsistent", Connection: "WFConnection"}},
			"acc1: stays down: this host's copy is Inconsistent"},
		{"never seen in sync", volumeStatus{Name: "db1", Peer: "10.0.0.2:7840", State: volume.State{Disk: "UpToDate", Connection: "WFConnection"}},
			"db1: starts from this host's copy; both copies were not seen in sync since this host started"},
		{"in sync until the loss", volumeStatus{Name: "db1", Peer: "10.0.0.2:7840", InSyncUntil: synced, State: volume.State{Disk: "UpToDate", Connection: "WFConnection"}},
			"db1: starts from this host's copy, which has every write up to 2026-12-07 20:31:22 UTC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := forceRisks("dh2", []volumeStatus{tc.vol})
			switch {
			case tc.want == "" && len(got) != 0:
				t.Fatalf("got %q, want no line", got)
			case tc.want != "" && (len(got) != 1 || !strings.HasPrefix(got[0], tc.want)):
				t.Fatalf("got %q, want one line starting %q", got, tc.want)
			}
		})
	}
}
