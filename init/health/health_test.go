package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A port that was open and is now closed: connection refused.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "all good: database up")
		case "/slow":
			time.Sleep(2 * time.Second)
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			http.Error(w, "broken", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()

	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsSrv.Close()

	tests := []struct {
		name   string
		check  Check
		ok     bool
		reason string // substring of the reason
	}{
		{"exec true", Check{Exec: []string{"/bin/busybox", "true"}}, true, "exit 0"},
		{"exec false", Check{Exec: []string{"/bin/busybox", "false"}}, false, "exit status 1"},
		{"exec output in reason", Check{Exec: []string{"/bin/busybox", "sh", "-c", "echo db down; exit 3"}}, false, "db down"},
		{"exec missing binary", Check{Exec: []string{"/nonexistent/probe"}}, false, "no such file"},
		{"exec timeout", Check{Exec: []string{"/bin/busybox", "sleep", "5"}, Timeout: 200 * time.Millisecond}, false, "timed out after 200ms"},
		{"tcp open", Check{TCP: ln.Addr().String()}, true, "connected"},
		{"tcp refused", Check{TCP: closedAddr}, false, "refused"},
		{"http ok", Check{HTTP: srv.URL + "/ok"}, true, "status 200"},
		{"http body match", Check{HTTP: srv.URL + "/ok", BodyContains: "database up"}, true, "status 200"},
		{"http body mismatch", Check{HTTP: srv.URL + "/ok", BodyContains: "database down"}, false, `does not contain "database down"`},
		{"http 500", Check{HTTP: srv.URL + "/fail"}, false, "status 500, want 200..399"},
		{"http 500 accepted by range", Check{HTTP: srv.URL + "/fail", StatusMin: 500, StatusMax: 599}, true, "status 500"},
		{"http redirect not followed", Check{HTTP: srv.URL + "/redirect", StatusMin: 200, StatusMax: 299}, false, "status 302"},
		{"http timeout", Check{HTTP: srv.URL + "/slow", Timeout: 200 * time.Millisecond}, false, "timed out"},
		{"https self-signed refused", Check{HTTP: tlsSrv.URL + "/"}, false, "certificate"},
		{"https self-signed accepted", Check{HTTP: tlsSrv.URL + "/", TLSSkipVerify: true}, true, "status 200"},
		{"http refused", Check{HTTP: "http://" + closedAddr + "/"}, false, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.check.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			start := time.Now()
			r := tt.check.Probe(context.Background())
			if r.OK != tt.ok {
				t.Errorf("OK = %v, want %v (reason %q)", r.OK, tt.ok, r.Reason)
			}
			if !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("reason %q does not contain %q", r.Reason, tt.reason)
			}
			if time.Since(start) > 3*time.Second {
				t.Errorf("probe took %v", time.Since(start))
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		check Check
		err   string
	}{
		{"nothing", Check{}, "one of exec, tcp or http"},
		{"two kinds", Check{TCP: "127.0.0.1:1", HTTP: "http://x/"}, "only one"},
		{"bad tcp", Check{TCP: "localhost"}, `tcp "localhost"`},
		{"bad scheme", Check{HTTP: "ftp://x/"}, "scheme"},
		{"no host", Check{HTTP: "http:///x"}, "no host"},
		{"range", Check{TCP: "a:1", StatusMin: 500, StatusMax: 200}, "status_min 500"},
		{"negative", Check{TCP: "a:1", Interval: -1}, "interval"},
		{"empty exec", Check{Exec: []string{""}}, "empty command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.err)
			}
		})
	}
}

func TestMonitorObserve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ok := func(at time.Duration) Result { return Result{OK: true, At: t0.Add(at), Reason: "fine"} }
	bad := func(at time.Duration) Result { return Result{At: t0.Add(at), Reason: "refused"} }
	tests := []struct {
		name    string
		results []Result
		want    []State
	}{
		{"failures in start period not counted",
			[]Result{bad(time.Second), bad(2 * time.Second), bad(3 * time.Second), bad(4 * time.Second)},
			[]State{Starting, Starting, Starting, Starting}},
		{"after start period three failures",
			[]Result{bad(6 * time.Second), bad(7 * time.Second), bad(8 * time.Second)},
			[]State{Starting, Starting, Unhealthy}},
		{"success ends grace at once",
			[]Result{ok(time.Second), bad(2 * time.Second), bad(3 * time.Second), bad(4 * time.Second)},
			[]State{Healthy, Healthy, Healthy, Unhealthy}},
		{"fast probes while starting count once per interval",
			[]Result{bad(6 * time.Second), bad(6100 * time.Millisecond), bad(6200 * time.Millisecond), bad(6900 * time.Millisecond), bad(7 * time.Second), bad(8 * time.Second)},
			[]State{Starting, Starting, Starting, Starting, Starting, Unhealthy}},
		{"success resets failures",
			[]Result{ok(time.Second), bad(2 * time.Second), bad(3 * time.Second), ok(4 * time.Second), bad(5 * time.Second), bad(6 * time.Second)},
			[]State{Healthy, Healthy, Healthy, Healthy, Healthy, Healthy}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMonitor(Check{TCP: "a:1", Retries: 3, StartPeriod: 5 * time.Second, Interval: time.Second}, t0)
			for i, r := range tt.results {
				st := m.Observe(r)
				if st.State != tt.want[i] {
					t.Fatalf("after result %d: state %s, want %s", i, st.State, tt.want[i])
				}
				if st.State == Unhealthy && !strings.Contains(st.Reason, "refused (3 consecutive failures)") {
					t.Errorf("unhealthy reason %q", st.Reason)
				}
			}
		})
	}
}

func TestMonitorRunAgainstListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(ln)
	m := NewMonitor(Check{HTTP: "http://" + ln.Addr().String() + "/", Interval: 50 * time.Millisecond, Retries: 2, Timeout: 500 * time.Millisecond}, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var states []State
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx, func(s Status) {
			states = append(states, s.State)
			if s.State == Healthy && len(states) == 1 {
				srv.Close() // the service dies after its first healthy probe
			}
		})
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("monitor did not report unhealthy within 10s")
	}
	want := []State{Healthy, Healthy, Unhealthy}
	if fmt.Sprint(states) != fmt.Sprint(want) {
		t.Errorf("states %v, want %v", states, want)
	}
}

// countingStarter starts and waits like PID 1's reaper does, counting.
type countingStarter struct{ n int }

func (c *countingStarter) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	c.n++
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		cmd.Wait()
		ch <- unix.WaitStatus(cmd.ProcessState.Sys().(syscall.WaitStatus))
	}()
	return ch, nil
}

func TestExecProbeThroughStarter(t *testing.T) {
	tests := []struct {
		argv   []string
		ok     bool
		reason string
	}{
		{[]string{"/bin/busybox", "true"}, true, "exit 0"},
		{[]string{"/bin/busybox", "sh", "-c", "echo nope; exit 2"}, false, "exit status 2: nope"},
		{[]string{"/bin/busybox", "sleep", "5"}, false, "timed out after 200ms"},
		{[]string{"/nonexistent/probe"}, false, "no such file"},
	}
	for _, tt := range tests {
		st := &countingStarter{}
		c := Check{Exec: tt.argv, Timeout: 200 * time.Millisecond, Starter: st}
		r := c.Probe(context.Background())
		if r.OK != tt.ok || !strings.Contains(r.Reason, tt.reason) {
			t.Errorf("%v: ok=%v %q, want %v %q", tt.argv, r.OK, r.Reason, tt.ok, tt.reason)
		}
		if st.n != 1 {
			t.Errorf("%v: starter used %d times", tt.argv, st.n)
		}
	}
}
