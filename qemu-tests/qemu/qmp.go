package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// QMP is a client for QEMU's machine protocol: JSON objects, one per line,
// over a unix socket. Commands carry an id so replies and asynchronous
// events can interleave on the one connection.
type QMP struct {
	conn net.Conn

	writeMu sync.Mutex

	mu      sync.Mutex
	cond    *sync.Cond
	pending map[string]chan qmpReply
	nextID  int
	events  []Event
	evSeen  int   // WaitEvent consumes events in order from here
	err     error // set once the connection ends
}

// Event is an asynchronous QMP event such as SHUTDOWN or STOP.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// ErrQMPClosed reports a command or wait on a connection that has ended.
var ErrQMPClosed = errors.New("qmp connection closed")

type qmpReply struct {
	ret json.RawMessage
	err *QMPError
}

// qmpMessage is any line QEMU sends.
type qmpMessage struct {
	QMP       *json.RawMessage `json:"QMP"`
	Return    json.RawMessage  `json:"return"`
	Error     *QMPError        `json:"error"`
	ID        json.RawMessage  `json:"id"`
	Event     string           `json:"event"`
	Data      json.RawMessage  `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// DialQMP connects to QEMU's QMP socket, retrying until it appears or ctx
// ends, and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return NewQMP(ctx, conn)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: connect %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// NewQMP runs the handshake on an open connection: read the greeting, send
// qmp_capabilities. It takes ownership of conn.
func NewQMP(ctx context.Context, conn net.Conn) (*QMP, error) {
	q := &QMP{conn: conn, pending: map[string]chan qmpReply{}}
	q.cond = sync.NewCond(&q.mu)
	r := bufio.NewReader(conn)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: reading greeting: %w", err)
	}
	var greet qmpMessage
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: unexpected greeting %q", line)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go q.readLoop(r)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if len(line) > 0 {
			q.dispatch(line)
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrQMPClosed
	} else {
		err = fmt.Errorf("%w: %v", ErrQMPClosed, err)
	}
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *QMP) dispatch(line []byte) {
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return // not ours to fix; QEMU only sends JSON
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if m.Event != "" {
		q.events = append(q.events, Event{
			Name: m.Event,
			Data: m.Data,
			Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000),
		})
		q.cond.Broadcast()
		return
	}
	var id string
	if err := json.Unmarshal(m.ID, &id); err != nil {
		return // a reply to a command that carried no id: not sent by us
	}
	ch, ok := q.pending[id]
	if !ok {
		return
	}
	delete(q.pending, id)
	ch <- qmpReply{ret: m.Return, err: m.Error}
}

// Execute runs one command and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", command, q.err)
	}
	q.nextID++
	id := "ms-" + strconv.Itoa(q.nextID)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: encoding arguments: %w", command, err)
	}
	q.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	}
	_, err = q.conn.Write(append(b, '\n'))
	q.writeMu.Unlock()
	if err != nil {
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("qmp %s: %w", command, ErrQMPClosed)
		}
		if rep.err != nil {
			rep.err.Command = command
			return nil, rep.err
		}
		return rep.ret, nil
	case <-ctx.Done():
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (q *QMP) forget(id string) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// Events returns every event received so far.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Event(nil), q.events...)
}

// WaitEvent returns the first event named name after the event the previous
// WaitEvent returned: like console lines, events are matched in order and
// what lies behind the last match is never matched again.
func (q *QMP) WaitEvent(ctx context.Context, name string) (Event, error) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.cond.Broadcast()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for i := q.evSeen; i < len(q.events); i++ {
			if q.events[i].Name == name {
				q.evSeen = i + 1
				return q.events[i], nil
			}
		}
		if q.err != nil {
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", name, q.err)
		}
		if ctx.Err() != nil {
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", name, ctx.Err())
		}
		q.cond.Wait()
	}
}

// Close ends the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// SystemPowerdown presses the ACPI power button.
func (q *QMP) SystemPowerdown(ctx context.Context) error {
	_, err := q.Execute(ctx, "system_powerdown", nil)
	return err
}

// SystemReset resets the machine like the reset button.
func (q *QMP) SystemReset(ctx context.Context) error {
	_, err := q.Execute(ctx, "system_reset", nil)
	return err
}

// Stop pauses the guest's CPUs (the guest notices nothing but lost time).
func (q *QMP) Stop(ctx context.Context) error {
	_, err := q.Execute(ctx, "stop", nil)
	return err
}

// Cont resumes a paused guest.
func (q *QMP) Cont(ctx context.Context) error {
	_, err := q.Execute(ctx, "cont", nil)
	return err
}

// Quit ends QEMU at once, like pulling the power cord. QEMU may close the
// connection before it replies; that counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	_, err := q.Execute(ctx, "quit", nil)
	if errors.Is(err, ErrQMPClosed) {
		return nil
	}
	return err
}

// SetLink sets the link of the NIC whose netdev id is id, as the guest and
// its peer see it (a cable pulled or plugged).
func (q *QMP) SetLink(ctx context.Context, id string, up bool) error {
	_, err := q.Execute(ctx, "set_link", map[string]any{"name": id, "up": up})
	return err
}

// Status is query-status's answer.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// QueryStatus reports whether the guest runs.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return Status{}, fmt.Errorf("qmp query-status: decoding %q: %w", raw, err)
	}
	return s, nil
}
