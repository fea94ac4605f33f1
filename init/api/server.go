// Package api is magestack's control API: HTTP/JSON on a root-only unix
// socket. The server exposes the supervisor's units (status, start, stop,
// restart, logs) and the boot timeline; other packages register their own
// status sections and endpoints. Client is the CLI's side of it.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/logbuf"
	"magestack/init/supervise"
)

// DefaultSocket is where the host's API listens.
const DefaultSocket = "/run/magestack/api.sock"

// Units is what the API needs of a supervisor; *supervise.Supervisor has it.
type Units interface {
	Status() []supervise.UnitStatus
	Unit(name string) (supervise.UnitStatus, error)
	Start(ctx context.Context, name string) error
	Stop(ctx context.Context, name string) error
	Restart(ctx context.Context, name string) error
	Logs(name string) (*logbuf.Log, error)
	WaitUnit(ctx context.Context, name string, cond func(supervise.UnitStatus) bool) (supervise.UnitStatus, error)
}

// Options of a Server.
type Options struct {
	Socket string // default DefaultSocket
	Units  Units  // nil: no units (e.g. a witness)
	// Timeline returns the boot timeline (init/timeline's snapshot); nil:
	// GET /v1/boot answers 404.
	Timeline func() any
	// ServiceSocket gives the API socket of the supervisor inside a unit
	// (role-init's), so "role/service" names reach it; nil: such names are
	// refused. See ProcRootSocket.
	ServiceSocket func(unit string, pid int) string
	AllowUIDs     []uint32 // peers allowed in (SO_PEERCRED); default root only
	Log           *slog.Logger
	// ActionTimeout bounds start/stop/restart (a stop waits for the grace period).
	ActionTimeout time.Duration
}

// ProcRootSocket is the usual ServiceSocket: role-init's socket seen
// through its mount namespace from the host.
func ProcRootSocket(unit string, pid int) string {
	return fmt.Sprintf("/proc/%d/root%s", pid, DefaultSocket)
}

// StatusFunc produces one extra section of GET /v1/status.
type StatusFunc func(ctx context.Context) (any, error)

// Server serves the API. Register sections and handlers before Serve.
type Server struct {
	opts     Options
	log      *slog.Logger
	mux      *http.ServeMux
	mu       sync.Mutex
	sections map[string]StatusFunc
}

// NewServer returns a server with the built-in endpoints registered.
func NewServer(opts Options) *Server {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	if opts.AllowUIDs == nil {
		opts.AllowUIDs = []uint32{0}
	}
	if opts.ActionTimeout == 0 {
		opts.ActionTimeout = 2 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Server{opts: opts, log: opts.Log, mux: http.NewServeMux(), sections: map[string]StatusFunc{}}
	s.mux.HandleFunc("GET /v1/status", s.handleStatus)
	s.mux.HandleFunc("GET /v1/boot", s.handleBoot)
	s.mux.HandleFunc("GET /v1/events", s.handleEvents)
	s.mux.HandleFunc("/v1/units/", s.handleUnit)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	return s
}

// SetUnits gives the server its units once they exist: PID 1 serves the
// API (boot timeline) before the roles' supervisor is created. serviceSocket
// may be nil.
func (s *Server) SetUnits(u Units, serviceSocket func(unit string, pid int) string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Units, s.opts.ServiceSocket = u, serviceSocket
}

func (s *Server) backend() (Units, func(string, int) string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Units, s.opts.ServiceSocket
}

// Handle registers an extra endpoint (Go ServeMux pattern, e.g.
// "GET /v1/firewall"). Handlers should answer errors with WriteError.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AddStatus adds a section to GET /v1/status under name.
func (s *Server) AddStatus(name string, fn StatusFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sections[name] = fn
}

// Handler is the API with its peer-credential check, for serving on a
// listener of your own.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("api handler panic", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeError(w, http.StatusInternalServerError, fmt.Sprintf("internal error: %v", v))
			}
		}()
		if cred, ok := r.Context().Value(credKey{}).(*unix.Ucred); ok {
			if !slices.Contains(s.opts.AllowUIDs, cred.Uid) {
				writeError(w, http.StatusForbidden, fmt.Sprintf("uid %d may not use the magestack API (root only)", cred.Uid))
				return
			}
		} else if _, isUnix := r.Context().Value(connKey{}).(*net.UnixConn); isUnix {
			writeError(w, http.StatusForbidden, "peer credentials unavailable")
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

type credKey struct{}
type connKey struct{}

// Serve listens on the socket and serves until ctx ends, then shuts down
// (bounded) and removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := Listen(s.opts.Socket)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, ln)
}

// ServeListener serves on ln (a unix listener) until ctx ends.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			uc, ok := c.(*net.UnixConn)
			if !ok {
				return ctx
			}
			ctx = context.WithValue(ctx, connKey{}, uc)
			if cred, err := peerCred(uc); err == nil {
				ctx = context.WithValue(ctx, credKey{}, cred)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				errc <- fmt.Errorf("api server panic: %v", v)
			}
		}()
		errc <- hs.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("api server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close() // followers of logs do not end by themselves
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		os.Remove(ul.Addr().String())
	}
	return nil
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// Listen creates the socket: directory 0700, socket 0600, a stale socket
// (nobody answering) replaced; a live one is an error.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("api socket directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("api socket directory %s: %w", dir, err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s: another server is already listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("api socket %s: removing stale socket: %w", path, err)
		}
	}
	// The umask makes the socket 0600 from its creation: no window where
	// another user could connect.
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	return ln, nil
}

// StatusReply is GET /v1/status.
type StatusReply struct {
	Time     time.Time                  `json:"time"`
	Units    []supervise.UnitStatus     `json:"units"`
	Sections map[string]json.RawMessage `json:"sections,omitempty"`
	Errors   map[string]string          `json:"errors,omitempty"` // section or unit → why it is missing
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	reply := StatusReply{Time: time.Now().UTC(), Units: []supervise.UnitStatus{}, Sections: map[string]json.RawMessage{}, Errors: map[string]string{}}
	unitsAPI, serviceSocket := s.backend()
	if unitsAPI != nil {
		units := unitsAPI.Status()
		// Each unit's own supervisor (role-init) answers for its services;
		// asked in parallel so one stuck role costs 2 s, not 2 s each.
		services := make([][]supervise.UnitStatus, len(units))
		errs := make([]error, len(units))
		var wg sync.WaitGroup
		for i, u := range units {
			if serviceSocket == nil || u.PID == 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if p := recover(); p != nil {
						errs[i] = fmt.Errorf("panic: %v", p)
					}
				}()
				ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
				defer cancel()
				sub, err := NewClient(serviceSocket(u.Name, u.PID)).Status(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				services[i] = sub.Units
			}()
		}
		wg.Wait()
		for i, u := range units {
			reply.Units = append(reply.Units, u)
			if errs[i] != nil {
				reply.Errors[u.Name] = "services: " + errs[i].Error()
			}
			for _, svc := range services[i] {
				svc.Name = u.Name + "/" + svc.Name
				reply.Units = append(reply.Units, svc)
			}
		}
	}
	s.mu.Lock()
	sections := make(map[string]StatusFunc, len(s.sections))
	for k, v := range s.sections {
		sections[k] = v
	}
	s.mu.Unlock()
	for name, fn := range sections {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		v, err := safeStatus(ctx, fn)
		cancel()
		if err != nil {
			reply.Errors[name] = err.Error()
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			reply.Errors[name] = "encoding: " + err.Error()
			continue
		}
		reply.Sections[name] = b
	}
	writeJSON(w, http.StatusOK, reply)
}

func safeStatus(ctx context.Context, fn StatusFunc) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return fn(ctx)
}

func (s *Server) handleBoot(w http.ResponseWriter, r *http.Request) {
	if s.opts.Timeline == nil {
		writeError(w, http.StatusNotFound, "no boot timeline on this server")
		return
	}
	writeJSON(w, http.StatusOK, s.opts.Timeline())
}

// EventSource is implemented by *supervise.Supervisor.
type EventSource interface {
	Subscribe(buffer int) (<-chan supervise.Event, func())
}

// handleEvents streams the units' events as JSON lines until the client
// goes away (a monitor's feed).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	units, _ := s.backend()
	src, ok := units.(EventSource)
	if !ok {
		writeError(w, http.StatusNotFound, "this server has no unit events")
		return
	}
	events, cancel := src.Subscribe(256)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			rc.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// ActionReply is POST /v1/units/{name}/{action}.
type ActionReply struct {
	Unit   string               `json:"unit"`
	Action string               `json:"action"`
	Status supervise.UnitStatus `json:"status"`
}

// parseUnitPath splits "/v1/units/<role>[/<service>]/<action>".
func parseUnitPath(p string) (unit, action string, err error) {
	rest := strings.TrimPrefix(p, "/v1/units/")
	parts := strings.Split(rest, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return "", "", fmt.Errorf("path %s: want /v1/units/<role>[/<service>]/<action>", p)
	}
	action = parts[len(parts)-1]
	names := parts[:len(parts)-1]
	for _, n := range names {
		if !supervise.ValidName(n) {
			return "", "", fmt.Errorf("bad unit name %q in %s: want letters, digits, '.', '_' or '-'", strings.Join(names, "/"), p)
		}
	}
	return strings.Join(names, "/"), action, nil
}

func (s *Server) handleUnit(w http.ResponseWriter, r *http.Request) {
	name, action, err := parseUnitPath(r.URL.Path)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	wantMethod := http.MethodPost
	switch action {
	case "start", "stop", "restart":
	case "logs", "status":
		wantMethod = http.MethodGet
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q for unit %s: want start, stop, restart, logs or status", action, name))
		return
	}
	if r.Method != wantMethod {
		w.Header().Set("Allow", wantMethod)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s needs %s, not %s", action, wantMethod, r.Method))
		return
	}
	units, serviceSocket := s.backend()
	if units == nil {
		writeError(w, http.StatusNotFound, "this server supervises no units (yet)")
		return
	}
	if role, svc, ok := strings.Cut(name, "/"); ok {
		s.forward(w, r, units, serviceSocket, role, svc, action)
		return
	}
	if _, err := units.Unit(name); err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	switch action {
	case "status":
		st, _ := units.Unit(name)
		writeJSON(w, http.StatusOK, st)
	case "logs":
		s.serveLogs(w, r, units, name)
	default:
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.ActionTimeout)
		defer cancel()
		var err error
		switch action {
		case "start":
			err = units.Start(ctx, name)
		case "stop":
			err = units.Stop(ctx, name)
		case "restart":
			err = units.Restart(ctx, name)
		}
		s.log.Info("api unit action", "unit", name, "action", action, "err", err)
		if err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, supervise.ErrUnknownUnit):
				code = http.StatusNotFound
			case errors.Is(err, context.DeadlineExceeded):
				code = http.StatusGatewayTimeout
			}
			writeError(w, code, fmt.Sprintf("%s %s: %v", action, name, err))
			return
		}
		// Answer with the new process (or why there is none) rather than
		// the instant before the unit's loop launched it.
		wctx, wcancel := context.WithTimeout(r.Context(), 5*time.Second)
		st, _ := units.WaitUnit(wctx, name, func(st supervise.UnitStatus) bool {
			return action == "stop" || st.State != supervise.StateStarting || st.Message != ""
		})
		wcancel()
		writeJSON(w, http.StatusOK, ActionReply{Unit: name, Action: action, Status: st})
	}
}

// serveLogs writes recent lines as text and, with follow=1, every later
// line until the client goes away.
func (s *Server) serveLogs(w http.ResponseWriter, r *http.Request, units Units, name string) {
	q := r.URL.Query()
	n := 200
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("n=%q: want a number of lines >= 0 (0: all kept)", v))
			return
		}
	}
	follow := false
	if v := q.Get("follow"); v != "" {
		var err error
		if follow, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("follow=%q: want 1 or 0", v))
			return
		}
	}
	l, err := units.Logs(name)
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !follow {
		w.WriteHeader(http.StatusOK)
		for _, line := range l.Tail(n) {
			fmt.Fprintln(w, line.String())
		}
		return
	}
	recent, lines, cancel := l.Follow(n, 1024)
	defer cancel()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for _, line := range recent {
		fmt.Fprintln(w, line.String())
	}
	rc.Flush()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return
			}
			if _, err := fmt.Fprintln(w, line.String()); err != nil {
				return
			}
			rc.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// forward passes a "role/service" request to the role's own API.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, units Units, serviceSocket func(string, int) string, role, svc, action string) {
	if serviceSocket == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unit %s/%s: services inside units are not reachable from this API", role, svc))
		return
	}
	st, err := units.Unit(role)
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	if st.PID == 0 {
		writeError(w, http.StatusConflict, fmt.Sprintf("unit %s is %s: its services cannot be reached", role, st.State))
		return
	}
	sock := serviceSocket(role, st.PID)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "magestack"
			pr.Out.URL.Path = "/v1/units/" + svc + "/" + action
			pr.Out.URL.RawPath = ""
		},
		Transport:     unixTransport(sock),
		FlushInterval: -1, // logs follow: pass lines at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, http.StatusBadGateway, fmt.Sprintf("unit %s: its API at %s: %v", role, sock, err))
		},
	}
	proxy.ServeHTTP(w, r)
}

func unixTransport(sock string) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		Proxy: nil,
		// Clients and proxies are made per request; a unix connect is
		// cheap, idle connections would pile up.
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: 3 * time.Minute,
	}
}

// ErrorReply is the body of every 4xx/5xx answer.
type ErrorReply struct {
	Error string `json:"error"`
}

// WriteError answers with a JSON error; registered handlers use it too.
func WriteError(w http.ResponseWriter, code int, msg string) { writeError(w, code, msg) }

// WriteJSON answers with v as JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) { writeJSON(w, code, v) }

// ReadJSON decodes a request body of at most limit bytes into v, unknown
// fields refused. On failure it has answered 400 naming what (a "bad
// <what>: ..." error) and returns false.
func ReadJSON(w http.ResponseWriter, r *http.Request, limit int64, what string, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad "+what+": "+err.Error())
		return false
	}
	return true
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorReply{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(ErrorReply{Error: "encoding reply: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
