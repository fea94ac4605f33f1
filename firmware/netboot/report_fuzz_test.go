package netboot

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzReport feeds arbitrary bodies to POST /report, the one endpoint any
// machine on the provisioning network may write to. Whatever arrives, the
// server answers 204 or 400 (never a panic or a 5xx), and a report it
// accepts is recorded under the canonical form of the MAC it names, so a
// stranger cannot create entries the live view cannot name.
func FuzzReport(f *testing.F) {
	for _, seed := range []string{
		`{"host":"dh1","mac":"52:54:00:aa:00:01","event":"ready","uptime_ms":8800}`,
		`{"mac":"52:54:00:aa:00:09","event":"discovered","hardware":{"cpus":2,"nics":["eth0"],"mem":{"total":2048}}}`,
		`{"host":"dh2","mac":"52-54-00-AA-00-02","event":"error","error":"config: no such file"}`,
		`{"mac":"52:54:00:aa:00:01","event":"reboot"}`,
		`{"mac":"not a mac","event":"ready"}`,
		`{"mac":"52:54:00:aa:00:01","event":"ready","extra":1}`,
		`{"mac":"00:00:5e:00:53:01:02:03","event":"ready"}`,
		`{"mac":"52:54:00:aa:00:01","event":"ready"} trailing`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		s := &Server{log: slog.New(slog.DiscardHandler), progress: NewProgress(nil), ipToMA: map[string]string{}}
		h := s.routes()
		req := httptest.NewRequest(http.MethodPost, "/report", bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		switch rec.Code {
		case http.StatusNoContent:
		case http.StatusBadRequest:
			if hosts := s.progress.Snapshot(); len(hosts) != 0 {
				t.Fatalf("refused report %q still recorded %+v", body, hosts)
			}
			return
		default:
			t.Fatalf("report %q: status %d, want 204 or 400: %s", body, rec.Code, rec.Body)
		}
		hosts := s.progress.Snapshot()
		if len(hosts) != 1 {
			t.Fatalf("accepted report %q recorded %d hosts, want 1: %+v", body, len(hosts), hosts)
		}
		hw, err := net.ParseMAC(hosts[0].MAC)
		if err != nil || hw.String() != hosts[0].MAC {
			t.Fatalf("accepted report %q recorded MAC %q, not in canonical form (%v)", body, hosts[0].MAC, err)
		}
		last := hosts[0].Last
		if last != "ready" && last != "discovered" && last != "error" {
			t.Fatalf("accepted report %q recorded step %q", body, last)
		}
		// The status endpoint must still encode whatever was recorded
		// (hardware is an arbitrary JSON object from the host).
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
		var back []HostProgress
		if err := json.Unmarshal(rec.Body.Bytes(), &back); err != nil || len(back) != 1 || !strings.EqualFold(back[0].MAC, hosts[0].MAC) {
			t.Fatalf("status after report %q: %v %s", body, err, rec.Body)
		}
	})
}
