package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/api"
	"magestack/init/supervise"
)

func startCtlServer(t *testing.T) (string, *supervise.Supervisor) {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skipf("needs /bin/busybox: %v", err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup := supervise.New(quiet, supervise.Options{})
	sup.Add(supervise.Spec{Name: "db1", Command: []string{"/bin/busybox", "sh", "-c", "echo mariadb ready; exec sleep 1000"}})
	sup.Add(supervise.Spec{Name: "web1", After: []string{"db1"}, Command: []string{"/bin/busybox", "sh", "-c", "exec sleep 1000"}})
	sup.Add(supervise.Spec{Name: "acc1", Command: []string{"/bin/busybox", "sh", "-c", "exit 7"},
		Restart: supervise.RestartPolicy{Initial: time.Millisecond, CrashLoopCount: 2}})
	sup.StartAll(context.Background())
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv := api.NewServer(api.Options{Socket: sock, Units: sup, Log: quiet,
		Timeline: func() any {
			return []map[string]any{
				{"step": "mounts", "attempt": 1, "start_ms": 1790, "end_ms": 1794, "done": true, "ok": true},
				{"step": "netconf", "attempt": 1, "start_ms": 1794, "end_ms": 1845, "done": true, "ok": false, "error": "no carrier on eth0"},
				{"step": "netconf", "attempt": 2, "start_ms": 2845},
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	go srv.Serve(ctx)
	t.Cleanup(func() {
		cancel()
		c, done := context.WithTimeout(context.Background(), 20*time.Second)
		defer done()
		sup.StopAll(c)
	})
	wctx, wc := context.WithTimeout(ctx, 15*time.Second)
	defer wc()
	if err := sup.WaitReady(wctx, "db1", "web1"); err != nil {
		t.Fatal(err)
	}
	if _, err := sup.WaitUnit(wctx, "acc1", func(s supervise.UnitStatus) bool { return s.State == supervise.StateFailed }); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(sock); err == nil {
			return sock, sup
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func run(f func([]string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := f(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCtlFaces(t *testing.T) {
	sock, sup := startCtlServer(t)

	code, out, errs := run(ctlStatus, "--socket", sock)
	t.Log("\n" + out)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	header := regexp.MustCompile(`^UNIT +STATE +PID +UPTIME +RESTARTS +HEALTH +CPU +MEM +LAST-EXIT$`)
	if !header.MatchString(lines[0]) {
		t.Errorf("header %q", lines[0])
	}
	// Columns are aligned: STATE starts at the same offset on every row.
	col := strings.Index(lines[0], "STATE")
	for _, l := range lines[1:4] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("row not aligned with header: %q", l)
		}
	}
	for _, want := range []string{`(?m)^db1 +ready +\d+ +\d+s +0 +- `, `(?m)^acc1 +failed +- +- +1 +- +- +- +exit 7 `, `(?m)^acc1: crash loop: 2 exits`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status output lacks %s:\n%s", want, out)
		}
	}

	code, out, _ = run(ctlStatus, "-o", "json", "--socket", sock)
	var st api.StatusReply
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Units) != 3 {
		t.Errorf("status -o json: %d %q", code, out)
	}

	// restart with the flag after the unit.
	old, _ := sup.Unit("web1")
	code, out, errs = run(actionFace("restart"), "web1", "--socket", sock)
	now, _ := sup.Unit("web1")
	if code != 0 || now.PID == old.PID || !strings.HasPrefix(out, "web1: ready (pid ") && !strings.HasPrefix(out, "web1: running (pid ") {
		t.Errorf("restart: %d %q %q, pid %d → %d", code, out, errs, old.PID, now.PID)
	}
	code, out, _ = run(actionFace("stop"), "--socket", sock, "web1")
	if code != 0 || out != "web1: stopped\n" {
		t.Errorf("stop: %d %q", code, out)
	}

	code, out, _ = run(ctlLogs, "db1", "--socket", sock)
	if code != 0 || !strings.Contains(out, " stdout mariadb ready\n") {
		t.Errorf("logs: %d %q", code, out)
	}

	code, out, _ = run(ctlBoot, "--socket", sock)
	if code != 0 || !regexp.MustCompile(`^STEP +ATTEMPT +START-MS +END-MS +TOOK-MS +RESULT\nmounts +1 +1790 +1794 +4 +ok\nnetconf +1 +1794 +1845 +51 +error: no carrier on eth0\nnetconf +2 +2845 +- +- +running\n$`).MatchString(out) {
		t.Errorf("boot: %d %q", code, out)
	}

	// Errors: clear, and the right exit code.
	errCases := []struct {
		f      func([]string, io.Writer, io.Writer) int
		args   []string
		code   int
		stderr string
	}{
		{actionFace("restart"), []string{"--socket", sock, "ghost"}, 1, `unknown unit "ghost"`},
		{actionFace("restart"), []string{"--socket", sock}, 2, "want one unit"},
		{actionFace("restart"), []string{"--socket", sock, "web 1"}, 2, `"web 1" is not a valid name`},
		{ctlStatus, []string{"-o", "yaml", "--socket", sock}, 2, `-o "yaml": want table or json`},
		{ctlLogs, []string{"--socket", sock, "-n", "-3", "db1"}, 2, "-n -3"},
		{ctlStatus, []string{"--socket", "/nonexistent/api.sock"}, 1, "is magestack running? no socket at /nonexistent/api.sock"},
	}
	for _, c := range errCases {
		code, _, errs := run(c.f, c.args...)
		if code != c.code || !strings.Contains(errs, c.stderr) {
			t.Errorf("%v: exit %d, stderr %q; want %d with %q", c.args, code, errs, c.code, c.stderr)
		}
	}
}

func actionFace(action string) func([]string, io.Writer, io.Writer) int {
	return func(args []string, out, errw io.Writer) int { return ctlAction(action, args, out, errw) }
}

func TestFormatters(t *testing.T) {
	cases := map[string]string{
		formatDuration(5 * time.Second):               "5s",
		formatDuration(3*time.Minute + 4*time.Second): "3m04s",
		formatDuration(26*time.Hour + 5*time.Minute):  "26h05m",
		formatDuration(72 * time.Hour):                "3d00h",
		formatBytes(0):                                "-",
		formatBytes(2048):                             "2K",
		formatBytes(15 << 20):                         "15.0M",
		formatCPU(1_500_000):                          "1.50s",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}
