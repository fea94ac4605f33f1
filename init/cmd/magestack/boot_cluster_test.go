package main

import (
	"bytes"
	"strings"
	"testing"

	"magestack/init/failover"
)

// TestWriteClusterSaysWhatThisHostRuns: an operator reads from status
// whether this host serves (and holds the VIP) or stands by.
func TestWriteClusterSaysWhatThisHostRuns(t *testing.T) {
	for _, tt := range []struct {
		local failover.Status
		want  string
	}{
		{failover.Status{}, "this host runs no instance: standby\n"},
		{failover.Status{Running: []string{"fw1", "lb1"}, HoldsVIP: true}, "this host runs fw1 lb1 and holds the website's address\n"},
		{failover.Status{Running: []string{"mail1"}}, "this host runs mail1\n"},
	} {
		var b bytes.Buffer
		writeCluster(&b, clusterStatus{State: "Follower", Leader: "dh2", Voters: []string{"dh1", "dh2", "witness"}, Majority: true, Local: tt.local})
		if !strings.Contains(b.String(), "cluster: this host follower, leader dh2") || !strings.Contains(b.String(), tt.want) {
			t.Errorf("status for %+v:\n%s\nwant a line %q", tt.local, b.String(), tt.want)
		}
	}
}
