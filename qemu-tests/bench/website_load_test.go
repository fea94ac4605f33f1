package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func msList(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one value is every percentile", msList(7), 1, 7 * time.Millisecond},
		{"one value p99", msList(7), 99, 7 * time.Millisecond},
		{"median of odd count", msList(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even count: lower middle (nearest rank)", msList(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 1..100 is 99", hundred, 99, 99 * time.Millisecond},
		{"p50 of 1..100 is 50", hundred, 50, 50 * time.Millisecond},
		{"p100 is the max", hundred, 100, 100 * time.Millisecond},
		{"p99 of 10 values is the max", msList(1, 1, 1, 1, 1, 1, 1, 1, 1, 500), 99, 500 * time.Millisecond},
		{"p90 of 10 values is the 9th", msList(1, 2, 3, 4, 5, 6, 7, 8, 9, 500), 90, 9 * time.Millisecond},
		{"tiny p is the min", msList(4, 5, 6), 0.001, 4 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestStats(t *testing.T) {
	// Unsorted input: stats sorts a copy and leaves the caller's slice alone.
	lat := msList(30, 10, 20, 40)
	r := loadResult{Elapsed: 2 * time.Second, Latencies: lat, Failures: 3}
	s, err := r.stats()
	if err != nil {
		t.Fatal(err)
	}
	want := latencyStats{Requests: 4, Failures: 3, RPS: 2, P50: 20 * time.Millisecond, P99: 40 * time.Millisecond,
		Max: 40 * time.Millisecond, Mean: 25 * time.Millisecond, ElapsedSeconds: 2}
	if s != want {
		t.Errorf("stats = %+v, want %+v", s, want)
	}
	if lat[0] != 30*time.Millisecond {
		t.Errorf("caller's latencies reordered: %v", lat)
	}

	_, err = loadResult{Elapsed: time.Second, Failures: 2, FirstErr: fmt.Errorf("502 Bad Gateway")}.stats()
	if err == nil || !strings.Contains(err.Error(), "2 failed") || !strings.Contains(err.Error(), "502") {
		t.Errorf("no answers: err = %v, want the failure count and first error", err)
	}
}

// TestRunLoad drives a local server: every answered request is counted
// once, connections are kept alive (one per client), and bad answers are
// failures, not latencies.
func TestRunLoad(t *testing.T) {
	var served, conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.URL.Query().Has("bad") {
			http.Error(w, "nope", http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, "magestack default site on test")
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	res, err := runLoad(context.Background(), loadSpec{URL: srv.URL + "/", Concurrency: 3, Duration: 300 * time.Millisecond, Want: "default site"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := res.stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.Failures != 0 {
		t.Errorf("%d failures: %v", s.Failures, res.FirstErr)
	}
	// The server may have answered one last request per client after the
	// run ended (cancelled in flight, counted by neither side).
	if n := served.Load(); int64(s.Requests) > n || int64(s.Requests) < n-3 {
		t.Errorf("client counted %d answers, server served %d", s.Requests, n)
	}
	// Keep-alive: a connection serves many requests. The run's end cancels
	// requests in flight, which may close their connections and start a
	// dial or two that never serve anything: allow one more per client.
	if c := conns.Load(); c > 6 || int64(s.Requests) < 10*c {
		t.Errorf("%d connections for 3 keep-alive clients and %d requests", c, s.Requests)
	}
	if s.P50 > s.P99 || s.P99 > s.Max || s.RPS <= 0 {
		t.Errorf("inconsistent stats %+v", s)
	}

	for _, tc := range []struct{ url, want string }{
		{srv.URL + "/?bad=1", ""},
		{srv.URL + "/", "not in the page"},
	} {
		res, err := runLoad(context.Background(), loadSpec{URL: tc.url, Concurrency: 2, Duration: 100 * time.Millisecond, Want: tc.want})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Latencies) != 0 || res.Failures == 0 || res.FirstErr == nil {
			t.Errorf("%s want %q: %d answers, %d failures (%v): bad answers must be failures", tc.url, tc.want, len(res.Latencies), res.Failures, res.FirstErr)
		}
	}

	if _, err := runLoad(context.Background(), loadSpec{URL: srv.URL, Concurrency: 0, Duration: time.Second}); err == nil {
		t.Error("concurrency 0 accepted")
	}
}
