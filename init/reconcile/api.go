package reconcile

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"magestack/init/api"
	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/stackfile"
)

// Live connects a running Reconciler to its config source and the control
// API: `magestack config apply|diff|rollback|status` on a host go through
// it.
type Live struct {
	Reconciler *Reconciler
	Fetcher    *configsource.Fetcher
	// Source is the config source polled ("" when the host runs a fixed
	// file or the built-in stack).
	Source string
	Store  *configstore.Store
}

// RevisionInfo is a revision without its content.
type RevisionInfo struct {
	ID     string    `json:"id"`
	Source string    `json:"source,omitempty"`
	Time   time.Time `json:"time,omitzero"`
}

// StatusReply is GET /v1/config and the "config" section of GET /v1/status.
type StatusReply struct {
	Source  string             `json:"source,omitempty"`
	Running *RevisionInfo      `json:"running,omitempty"`
	Store   configstore.Status `json:"store"`
}

// ApplyReply answers apply and rollback.
type ApplyReply struct {
	Revision   RevisionInfo      `json:"revision"`
	Changes    stackfile.Changes `json:"changes"`
	Summary    string            `json:"summary"`
	Applied    []string          `json:"applied,omitempty"`
	Skipped    []string          `json:"skipped,omitempty"`
	RolledBack []string          `json:"rolledBack,omitempty"`
	Error      string            `json:"error,omitempty"`
}

// DiffRequest is the body of POST /v1/config/diff.
type DiffRequest struct {
	Name string `json:"name"` // file name for error messages
	Data string `json:"data"` // the stack file
}

// DiffReply answers POST /v1/config/diff.
type DiffReply struct {
	Changes stackfile.Changes       `json:"changes"`
	Summary string                  `json:"summary"`
	Errors  []*stackfile.FieldError `json:"errors,omitempty"`
}

// RollbackRequest is the body of POST /v1/config/rollback.
type RollbackRequest struct {
	Revision string `json:"revision"`
}

// Status reports the running revision and the store's view.
func (l *Live) Status(ctx context.Context) (StatusReply, error) {
	var st StatusReply
	st.Source = l.Source
	if s, rev := l.Reconciler.Running(); s != nil {
		st.Running = &RevisionInfo{ID: rev.ID, Source: rev.Source, Time: rev.Time}
	}
	if l.Store != nil {
		s, err := l.Store.Status()
		if err != nil {
			return st, err
		}
		st.Store = s
	}
	return st, nil
}

func reply(res Result, err error) ApplyReply {
	r := ApplyReply{
		Revision:   RevisionInfo{ID: res.Revision.ID, Source: res.Revision.Source, Time: res.Revision.Time},
		Changes:    res.Changes,
		Summary:    res.Changes.String(),
		Applied:    res.Applied,
		Skipped:    res.Skipped,
		RolledBack: res.RolledBack,
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// Register adds GET /v1/config, POST /v1/config/apply, /diff and /rollback,
// and the "config" status section.
func (l *Live) Register(s *api.Server) {
	s.AddStatus("config", func(ctx context.Context) (any, error) { return l.Status(ctx) })
	s.Handle("GET /v1/config", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := l.Status(r.Context())
		if err != nil {
			api.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		api.WriteJSON(w, http.StatusOK, st)
	}))
	s.Handle("POST /v1/config/apply", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.Source == "" || l.Fetcher == nil {
			api.WriteError(w, http.StatusConflict, "this host has no config source to fetch from (magestack.config= or config.source)")
			return
		}
		rev, err := l.Fetcher.Fetch(r.Context(), l.Source)
		if err != nil {
			api.WriteError(w, http.StatusBadGateway, err.Error())
			return
		}
		// A rejected revision is an answer, not a failed request: the reply
		// carries the error and what was undone.
		res, err := l.Reconciler.Apply(r.Context(), rev)
		api.WriteJSON(w, http.StatusOK, reply(res, err))
	}))
	s.Handle("POST /v1/config/rollback", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req RollbackRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Revision == "" {
			api.WriteError(w, http.StatusBadRequest, "want {\"revision\": \"<id or prefix>\"}")
			return
		}
		res, err := l.Reconciler.Rollback(r.Context(), req.Revision)
		if err != nil && res.Revision.ID == "" {
			api.WriteError(w, http.StatusNotFound, err.Error()) // not in the store
			return
		}
		api.WriteJSON(w, http.StatusOK, reply(res, err))
	}))
	s.Handle("POST /v1/config/diff", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req DiffRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, stackfile.MaxFileSize*2)).Decode(&req); err != nil {
			api.WriteError(w, http.StatusBadRequest, "want {\"name\": ..., \"data\": \"<stack file>\"}")
			return
		}
		if req.Name == "" {
			req.Name = "stack.yaml"
		}
		next, err := stackfile.Parse(req.Name, []byte(req.Data))
		if err != nil {
			api.WriteJSON(w, http.StatusUnprocessableEntity, DiffReply{Errors: stackfile.FieldErrors(err)})
			return
		}
		running, _ := l.Reconciler.Running()
		c, err := stackfile.Diff(running, next)
		if err != nil {
			api.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		api.WriteJSON(w, http.StatusOK, DiffReply{Changes: c, Summary: c.String()})
	}))
}
