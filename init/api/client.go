package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"magestack/init/supervise"
)

// Client talks to the API over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the socket ("" for DefaultSocket).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	return &Client{Socket: socket, http: &http.Client{Transport: unixTransport(socket)}}
}

// APIError is a 4xx/5xx answer.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// explain turns transport errors into what an operator needs to know.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("is magestack running? no socket at %s", c.Socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("is magestack running? nothing listens on %s (stale socket)", c.Socket)
	case errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("permission denied on %s: the magestack API is root only", c.Socket)
	}
	return fmt.Errorf("magestack API at %s: %w", c.Socket, err)
}

func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://magestack"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.explain(err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var er ErrorReply
		if json.Unmarshal(b, &er) == nil && er.Error != "" {
			return nil, &APIError{Status: resp.StatusCode, Message: er.Error}
		}
		return nil, &APIError{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))}
	}
	return resp, nil
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (when not nil); other packages' CLI faces use it.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
	}
	return nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (*StatusReply, error) {
	var r StatusReply
	if err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Action starts, stops or restarts a unit ("role" or "role/service").
func (c *Client) Action(ctx context.Context, action, unit string) (*ActionReply, error) {
	var r ActionReply
	if err := c.Do(ctx, http.MethodPost, unitPath(unit, action), nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Boot returns the boot timeline as the server encoded it.
func (c *Client) Boot(ctx context.Context) (json.RawMessage, error) {
	var r json.RawMessage
	if err := c.Do(ctx, http.MethodGet, "/v1/boot", nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// Logs copies up to n recent lines of a unit (0: all kept) to w and, with
// follow, every later line until ctx ends or the server goes away.
func (c *Client) Logs(ctx context.Context, unit string, n int, follow bool, w io.Writer) error {
	q := url.Values{"n": {fmt.Sprint(n)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, unitPath(unit, "logs")+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("logs of %s: %w", unit, err)
		}
	}
}

// Events calls fn for every unit event until ctx ends or the server goes away.
func (c *Client) Events(ctx context.Context, fn func(supervise.Event)) error {
	resp, err := c.do(ctx, http.MethodGet, "/v1/events", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev supervise.Event
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("events: %w", err)
		}
		fn(ev)
	}
}

func unitPath(unit, action string) string {
	parts := strings.Split(unit, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return "/v1/units/" + strings.Join(parts, "/") + "/" + action
}

// Timeout is a sensible bound for one-shot CLI calls (a stop may wait for
// a unit's grace period).
const Timeout = 3 * time.Minute
