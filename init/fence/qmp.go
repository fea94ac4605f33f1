package fence

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// QMP fences a QEMU host through its QMP monitor ("unix:/path" or
// "tcp:host:port"): quit ends the virtual machine at once. Off is
// confirmed when the monitor reports the guest shut down, or when the
// monitor, having answered this device before, now actively refuses
// connections (the QEMU process is gone). A monitor never reached proves
// nothing: a refused connection there may as well be a wrong address, and
// a timeout is never proof.
type QMP struct {
	network, addr string
	reached       atomic.Bool // the monitor answered this device once
}

// NewQMP parses the monitor address: unix:/path or /path for a socket,
// tcp:host:port or host:port over the network (the stack file's form).
func NewQMP(address string) (*QMP, error) {
	network, addr, ok := strings.Cut(address, ":")
	switch {
	case strings.HasPrefix(address, "/"):
		network, addr = "unix", address
	case ok && (network == "unix" || network == "tcp"):
	default:
		network, addr = "tcp", address
	}
	if network == "tcp" {
		if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("qmp address %q: want host:port, tcp:host:port, /path or unix:/path", address)
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("qmp address %q: want host:port, tcp:host:port, /path or unix:/path", address)
	}
	return &QMP{network: network, addr: addr}, nil
}

func (q *QMP) String() string { return "qmp " + q.network + ":" + q.addr }

type qmpConn struct {
	c  net.Conn
	rd *bufio.Reader
}

func (q *QMP) dial(ctx context.Context) (*qmpConn, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, q.network, q.addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	qc := &qmpConn{c: c, rd: bufio.NewReader(c)}
	if _, err := qc.read(); err != nil { // greeting
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	q.reached.Store(true)
	if _, err := qc.cmd("qmp_capabilities"); err != nil {
		c.Close()
		return nil, err
	}
	return qc, nil
}

func (qc *qmpConn) read() (map[string]json.RawMessage, error) {
	for {
		line, err := qc.rd.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("qmp: bad JSON %q", line)
		}
		if _, isEvent := m["event"]; !isEvent {
			return m, nil
		}
	}
}

func (qc *qmpConn) cmd(name string) (json.RawMessage, error) {
	if _, err := fmt.Fprintf(qc.c, `{"execute":%q}`+"\n", name); err != nil {
		return nil, err
	}
	m, err := qc.read()
	if err != nil {
		return nil, err
	}
	if e, ok := m["error"]; ok {
		return nil, fmt.Errorf("qmp %s: %s", name, e)
	}
	return m["return"], nil
}

// PowerOff quits QEMU. The monitor may close before answering.
func (q *QMP) PowerOff(ctx context.Context) error {
	qc, err := q.dial(ctx)
	if err != nil {
		return err
	}
	defer qc.c.Close()
	if _, err := qc.cmd("quit"); err != nil && !isClosed(err) {
		return err
	}
	return nil
}

// PoweredOff is true when the guest is shut down or QEMU is gone.
func (q *QMP) PoweredOff(ctx context.Context) (bool, error) {
	qc, err := q.dial(ctx)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			if q.reached.Load() {
				return true, nil
			}
			return false, fmt.Errorf("%s refuses connections and never answered: cannot confirm the machine is off (wrong address, or QEMU gone before the fence): %w", q, err)
		}
		return false, err
	}
	defer qc.c.Close()
	ret, err := qc.cmd("query-status")
	if err != nil {
		if isClosed(err) {
			return false, fmt.Errorf("qmp closed during query-status: %w", err)
		}
		return false, err
	}
	var st struct {
		Status string `json:"status"`
	}
	json.Unmarshal(ret, &st)
	return st.Status == "shutdown", nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "EOF")
}
