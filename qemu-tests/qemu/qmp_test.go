package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU is a QMP peer on a unix socket. For each command it calls
// answer, which returns the lines to send back (replies and events).
type fakeQEMU struct {
	path     string
	received chan map[string]any
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`

func newFakeQEMU(t *testing.T, answer func(cmd string, args map[string]any, id any) []string) *fakeQEMU {
	t.Helper()
	dir, err := os.MkdirTemp("", "qmptest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeQEMU{path: filepath.Join(dir, "qmp.sock"), received: make(chan map[string]any, 100)}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintln(conn, greeting)
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req map[string]any
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				fmt.Fprintln(conn, `{"error": {"class": "GenericError", "desc": "bad json"}}`)
				continue
			}
			f.received <- req
			args, _ := req["arguments"].(map[string]any)
			cmd, _ := req["execute"].(string)
			lines := answer(cmd, args, req["id"])
			if lines == nil {
				return // hang up, as QEMU does on quit
			}
			for _, l := range lines {
				fmt.Fprintln(conn, l)
			}
		}
	}()
	return f
}

func reply(id any, ret string) string {
	b, _ := json.Marshal(id)
	return fmt.Sprintf(`{"return": %s, "id": %s}`, ret, b)
}

func TestQMPHandshakeCommandsAndEvents(t *testing.T) {
	f := newFakeQEMU(t, func(cmd string, args map[string]any, id any) []string {
		switch cmd {
		case "qmp_capabilities":
			return []string{reply(id, "{}")}
		case "query-status":
			// An event arrives before the reply: it must not be taken for it.
			return []string{
				`{"event": "RESUME", "timestamp": {"seconds": 1700000000, "microseconds": 5}}`,
				reply(id, `{"status": "running", "singlestep": false, "running": true}`),
			}
		case "stop":
			return []string{`{"event": "STOP", "timestamp": {"seconds": 1700000001, "microseconds": 0}}`, reply(id, "{}")}
		case "set_link":
			if args["name"] != "net0" {
				return []string{fmt.Sprintf(`{"error": {"class": "DeviceNotFound", "desc": "Device '%s' not found"}, "id": %q}`, args["name"], id)}
			}
			return []string{reply(id, "{}")}
		case "system_powerdown":
			return []string{reply(id, "{}"),
				`{"event": "POWERDOWN", "timestamp": {"seconds": 1700000002, "microseconds": 0}}`,
				`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1700000003, "microseconds": 0}}`}
		case "quit":
			return nil
		}
		return []string{fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}, "id": %q}`, cmd, id)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if req := <-f.received; req["execute"] != "qmp_capabilities" {
		t.Fatalf("first command %v, want qmp_capabilities", req)
	}

	st, err := q.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("status = %+v, %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := q.WaitEvent(ctx, "STOP")
	if err != nil || ev.Time.Unix() != 1700000001 {
		t.Fatalf("STOP event = %+v, %v", ev, err)
	}

	if err := q.SetLink(ctx, "net0", false); err != nil {
		t.Fatal(err)
	}
	<-f.received // query-status
	<-f.received // stop
	req := <-f.received
	if a := req["arguments"].(map[string]any); a["name"] != "net0" || a["up"] != false {
		t.Fatalf("set_link sent %v", req)
	}
	err = q.SetLink(ctx, "nope", true)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Command != "set_link" {
		t.Fatalf("unknown NIC: err = %v", err)
	}
	if _, err := q.Execute(ctx, "no-such-command", nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}

	if err := q.SystemPowerdown(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err = q.WaitEvent(ctx, "SHUTDOWN")
	if err != nil {
		t.Fatal(err)
	}
	var data struct{ Reason string }
	if err := json.Unmarshal(ev.Data, &data); err != nil || data.Reason != "guest-shutdown" {
		t.Fatalf("SHUTDOWN data %s: %v", ev.Data, err)
	}
	// Events match in order: RESUME came before the last match.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if ev, err := q.WaitEvent(short, "RESUME"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RESUME behind the cursor matched: %+v, %v", ev, err)
	}
	if len(q.Events()) != 4 {
		t.Fatalf("events %+v, want RESUME STOP POWERDOWN SHUTDOWN", q.Events())
	}

	if err := q.Quit(ctx); err != nil {
		t.Fatalf("quit with hang-up: %v", err)
	}
	if _, err := q.QueryStatus(ctx); !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("after hang-up: %v, want ErrQMPClosed", err)
	}
	if _, err := q.WaitEvent(ctx, "RESET"); !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("wait after hang-up: %v", err)
	}
}

func TestQMPBadGreeting(t *testing.T) {
	dir, err := os.MkdirTemp("", "qmptest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			fmt.Fprintln(c, `{"hello": 1}`)
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialQMP(ctx, path); err == nil {
		t.Fatal("accepted a peer that is not QMP")
	}
}

func TestQMPCommandTimeout(t *testing.T) {
	f := newFakeQEMU(t, func(cmd string, _ map[string]any, id any) []string {
		if cmd == "qmp_capabilities" {
			return []string{reply(id, "{}")}
		}
		return []string{} // never answers
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if err := q.Cont(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline", err)
	}
}

func TestDialQMPNoSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := DialQMP(ctx, filepath.Join(t.TempDir(), "absent.sock"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}
