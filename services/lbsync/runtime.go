// Package lbsync keeps lb's HAProxy backend equal to the web instances
// that should take traffic, through HAProxy's runtime API (the admin stats
// socket), so web instances come and go without a reload and without a
// dropped request: a new server is added and enabled only once its web
// instance is ready; a leaving one is drained, its sessions waited out,
// then put in maintenance and deleted before its instance stops.
//
// The HAProxy 2.6 rules it relies on (checked against 2.6.12): `add server`
// needs a backend with a dynamic algorithm (roundrobin) and creates the
// server in maintenance with its health check disabled; `enable health`
// and `set server ... state ready` put it in rotation; `del server` refuses
// a server not in maintenance or still holding sessions.
package lbsync

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// CheckArgs are the health-check settings of every web server, the same
// as the rendered haproxy.cfg's, so a server added at run time is checked
// like one from the file.
const CheckArgs = "check inter 2s fall 3 rise 2"

// Client speaks to one HAProxy's runtime API, one command per connection
// (the API's non-interactive mode: the answer ends when HAProxy closes).
type Client struct {
	// LB names the HAProxy in errors (the lb instance, e.g. "lb1").
	LB string
	// Dial opens a connection to the admin socket.
	Dial func(ctx context.Context) (net.Conn, error)
	// Timeout bounds one command; 0 means 10 s.
	Timeout time.Duration
}

// UnixClient talks to the admin socket at path.
func UnixClient(lb, path string) *Client {
	return &Client{LB: lb, Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}
}

// CommandError is a command HAProxy refused or could not be sent.
type CommandError struct {
	LB      string
	Command string
	Reply   string // HAProxy's answer, when it answered
	Err     error  // transport error, when it did not
}

func (e *CommandError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("haproxy of %s: %q: %v", e.LB, e.Command, e.Err)
	}
	return fmt.Sprintf("haproxy of %s: %q refused: %s", e.LB, e.Command, e.Reply)
}

func (e *CommandError) Unwrap() error { return e.Err }

// maxReply bounds one answer (show stat of a large config stays far below).
const maxReply = 4 << 20

// Command sends one command and returns HAProxy's raw answer.
func (c *Client) Command(ctx context.Context, cmd string) (string, error) {
	if strings.ContainsAny(cmd, "\n;") {
		return "", &CommandError{LB: c.LB, Command: cmd, Err: errors.New("one command per call, without newlines or ';'")}
	}
	t := c.Timeout
	if t == 0 {
		t = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	conn, err := c.Dial(ctx)
	if err != nil {
		return "", &CommandError{LB: c.LB, Command: cmd, Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", &CommandError{LB: c.LB, Command: cmd, Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(conn, maxReply))
	if err != nil {
		return "", &CommandError{LB: c.LB, Command: cmd, Err: err}
	}
	return string(b), nil
}

// do sends a command whose success is an empty answer, or (ok != "") an
// answer containing ok; anything else is HAProxy's refusal.
func (c *Client) do(ctx context.Context, cmd, ok string) error {
	out, err := c.Command(ctx, cmd)
	if err != nil {
		return err
	}
	reply := strings.TrimSpace(out)
	if (ok == "" && reply == "") || (ok != "" && strings.Contains(reply, ok)) {
		return nil
	}
	if reply == "" {
		reply = "(empty answer)"
	}
	return &CommandError{LB: c.LB, Command: cmd, Reply: reply}
}

// Admin state bits of `show servers state` (srv_admin_state).
const (
	adminForcedMaint = 0x01
	adminForcedDrain = 0x08
)

// ServerState is one server of a backend as HAProxy reports it.
type ServerState struct {
	Name string
	Addr netip.AddrPort
	// OpState: 0 stopped (down or in maintenance), 1 starting, 2 running, 3 stopping.
	OpState int
	// Admin is the srv_admin_state bit set (forced maintenance 0x01, forced drain 0x08...).
	Admin int
}

// Maint reports whether the server was put in maintenance by the API.
func (s ServerState) Maint() bool { return s.Admin&adminForcedMaint != 0 }

// Drain reports whether the server was put in drain by the API.
func (s ServerState) Drain() bool { return s.Admin&adminForcedDrain != 0 }

// Up reports whether HAProxy sends it traffic (running, not in maintenance).
func (s ServerState) Up() bool { return s.OpState == 2 && !s.Maint() }

// Servers lists backend's servers (`show servers state`).
func (c *Client) Servers(ctx context.Context, backend string) ([]ServerState, error) {
	cmd := "show servers state " + backend
	out, err := c.Command(ctx, cmd)
	if err != nil {
		return nil, err
	}
	states, err := parseServersState(out, backend)
	if err != nil {
		return nil, &CommandError{LB: c.LB, Command: cmd, Reply: err.Error()}
	}
	return states, nil
}

// parseServersState reads `show servers state` output: a version line, a
// "# field..." header, then one line per server. Fields are found by name
// so a newer HAProxy adding columns does not break it.
func parseServersState(out, backend string) ([]ServerState, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), maxReply)
	var col map[string]int
	var states []ServerState
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			col = map[string]int{}
			for i, f := range strings.Fields(strings.TrimPrefix(line, "#")) {
				col[f] = i
			}
			continue
		}
		if col == nil {
			if _, err := strconv.Atoi(line); err == nil {
				continue // the format version line
			}
			return nil, fmt.Errorf("unexpected answer: %s", line)
		}
		f := strings.Fields(line)
		get := func(name string) (string, error) {
			i, ok := col[name]
			if !ok || i >= len(f) {
				return "", fmt.Errorf("no %s field in %q", name, line)
			}
			return f[i], nil
		}
		var vals [6]string
		for i, name := range []string{"be_name", "srv_name", "srv_addr", "srv_port", "srv_op_state", "srv_admin_state"} {
			v, err := get(name)
			if err != nil {
				return nil, err
			}
			vals[i] = v
		}
		if vals[0] != backend {
			continue
		}
		s := ServerState{Name: vals[1]}
		addr, err := netip.ParseAddr(vals[2])
		if err != nil {
			return nil, fmt.Errorf("server %s: address %q: %w", s.Name, vals[2], err)
		}
		port, err := strconv.ParseUint(vals[3], 10, 16)
		if err != nil {
			return nil, fmt.Errorf("server %s: port %q: %w", s.Name, vals[3], err)
		}
		s.Addr = netip.AddrPortFrom(addr, uint16(port))
		if s.OpState, err = strconv.Atoi(vals[4]); err != nil {
			return nil, fmt.Errorf("server %s: op state %q: %w", s.Name, vals[4], err)
		}
		if s.Admin, err = strconv.Atoi(vals[5]); err != nil {
			return nil, fmt.Errorf("server %s: admin state %q: %w", s.Name, vals[5], err)
		}
		states = append(states, s)
	}
	if col == nil {
		return nil, fmt.Errorf("no header in answer: %q", strings.TrimSpace(out))
	}
	return states, nil
}

// Sessions returns a server's current and queued sessions (`show stat`).
func (c *Client) Sessions(ctx context.Context, backend, server string) (cur, queued int, err error) {
	const cmd = "show stat"
	out, err := c.Command(ctx, cmd)
	if err != nil {
		return 0, 0, err
	}
	cur, queued, err = parseSessions(out, backend, server)
	if err != nil {
		return 0, 0, &CommandError{LB: c.LB, Command: cmd, Reply: err.Error()}
	}
	return cur, queued, nil
}

// parseSessions reads scur and qcur of backend/server from `show stat` CSV.
func parseSessions(out, backend, server string) (cur, queued int, err error) {
	out = strings.TrimPrefix(strings.TrimLeft(out, " \n"), "# ")
	r := csv.NewReader(strings.NewReader(out))
	r.FieldsPerRecord = -1
	head, err := r.Read()
	if err != nil {
		return 0, 0, fmt.Errorf("stat header: %w", err)
	}
	col := map[string]int{}
	for i, f := range head {
		col[f] = i
	}
	for _, need := range []string{"pxname", "svname", "scur", "qcur"} {
		if _, ok := col[need]; !ok {
			return 0, 0, fmt.Errorf("stat header has no %s: %q", need, strings.Join(head, ","))
		}
	}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return 0, 0, fmt.Errorf("no server %s/%s in stats", backend, server)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("stat line: %w", err)
		}
		if len(rec) <= max(col["scur"], col["qcur"], col["svname"]) || rec[col["pxname"]] != backend || rec[col["svname"]] != server {
			continue
		}
		num := func(s string) int { n, _ := strconv.Atoi(s); return n }
		return num(rec[col["scur"]]), num(rec[col["qcur"]]), nil
	}
}
