package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/failover"
	"magestack/init/heartbeat"
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

// The cluster-wide switches show in status, and no table at all when
// there are none.
func TestWriteClusterShowsSettings(t *testing.T) {
	var b bytes.Buffer
	since := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	writeCluster(&b, clusterStatus{State: "Leader", Leader: "dh1", Settings: []cluster.Setting{{Key: "maintenance/shop/www", Value: "on", Since: since}}})
	if !regexp.MustCompile(`(?m)^maintenance/shop/www\s+on\s+2026-11-26 04:00:00$`).MatchString(b.String()) {
		t.Errorf("status lacks the maintenance setting:\n%s", b.String())
	}
	b.Reset()
	writeCluster(&b, clusterStatus{State: "Leader", Leader: "dh1"})
	if strings.Contains(b.String(), "SETTING") {
		t.Errorf("an empty settings table was printed:\n%s", b.String())
	}
}

func TestWriteClusterShowsHeartbeatDrops(t *testing.T) {
	var b bytes.Buffer
	writeCluster(&b, clusterStatus{State: "Leader", Leader: "dh1", HeartbeatDrops: heartbeat.Drops{Forged: 3, Replayed: 2}})
	if !strings.Contains(b.String(), "heartbeats dropped: forged 3, replayed 2") {
		t.Errorf("status lacks the dropped heartbeats:\n%s", b.String())
	}
	b.Reset()
	writeCluster(&b, clusterStatus{State: "Leader", Leader: "dh1"})
	if strings.Contains(b.String(), "dropped") {
		t.Errorf("status shows drops when there are none:\n%s", b.String())
	}
}

func TestWatchdogTimeout(t *testing.T) {
	for _, tt := range []struct{ dead, want time.Duration }{
		{0, 3 * time.Second},
		{time.Second, 3 * time.Second},
		{1500 * time.Millisecond, 4 * time.Second},
		{3 * time.Second, 9 * time.Second},
		{10 * time.Second, 30 * time.Second},
		{time.Hour, time.Minute},
	} {
		if got := watchdogTimeout(tt.dead); got != tt.want {
			t.Errorf("watchdogTimeout(%v) = %v, want %v", tt.dead, got, tt.want)
		}
	}
}
