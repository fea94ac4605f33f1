package failover

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

func parsePair(t *testing.T) *stackfile.Stack {
	t.Helper()
	st, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestCheckSetting(t *testing.T) {
	st := parsePair(t)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	insts, err := InstancesValue(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, value string
		ok         bool
	}{
		{"maintenance/shop/www", "on", true},
		{"maintenance/shop/www", "", true},
		{"maintenance/shop/www", "off", false},
		{"maintenance/shop/www", "on\nsql_mode=''", false},
		{"maintenance/shop", "on", false},
		{"maintenance/../etc/www", "on", false},
		{"maintenance/shop/www/x", "on", false},
		{"maintenance/Shop/www", "on", false},
		{"failover/last-move-from/dh2", now.Add(-time.Hour).Format(time.RFC3339Nano), true},
		{"failover/last-move-from/dh2", now.Add(30 * time.Second).Format(time.RFC3339Nano), true},
		{"failover/last-move-from/dh2", "", true},
		{"failover/last-move-from/dh2", "2999-01-01T00:00:00Z", false},
		{"failover/last-move-from/dh2", "yesterday", false},
		{"failover/last-move-from/dh9", now.Format(time.RFC3339Nano), false},
		{"failover/last-move-from/", now.Format(time.RFC3339Nano), false},
		{"stack/instances", insts, true},
		{"stack/instances", "[]", false},
		{"stack/instances", "", false},
		{"stack/instances", "null", false},
		{"stack/instances", `[{"name":"web1","host":"dh1"},{"name":"web1","host":"dh2"}]`, false},
		{"stack/instances", `[{"name":"web1","host":"evil"}]`, false},
		{"stack/instances", `[{"name":"web1;rm","host":"dh1"}]`, false},
		{"stack/instances", `[{"name":"web1","host":"dh1","x":1}]`, false},
		{"stack/instances", `[{"name":"web1","host":"dh1"}] []`, false},
		{"stack/instances", `[` + strings.Repeat(`{"name":"web1","host":"dh1"},`, 2000) + `{"name":"web2","host":"dh1"}]`, false},
		{"stack/other", "x", false},
		{"volume-outdated/db1", "dh2", true},
		{"volume-outdated/db1", "", true},
		{"volume-outdated/db1", "dh9", false},
		{"volume-outdated/db1", "dh2\n", false},
		{"volume-outdated/../db1", "dh2", false},
		{"volume-outdated/", "dh2", false},
		{"", "", false},
		{strings.Repeat("maintenance/", 30), "on", false},
	} {
		err := CheckSetting(st, tc.key, tc.value, now)
		if tc.ok && err != nil {
			t.Errorf("%q=%.40q refused: %v", tc.key, tc.value, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%q=%.40q accepted", tc.key, tc.value)
		}
		if !tc.ok && !errors.Is(err, ErrBadSetting) {
			t.Errorf("%q: error %v does not wrap ErrBadSetting", tc.key, err)
		}
	}
}

// memberClient is an HTTPS client with creds (nil: no certificate).
func memberClient(creds *clusterauth.Credentials) *http.Client {
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if creds != nil {
		conf = creds.ClientConfig([]string{"dh1", "dh2", "witness"}, "")
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
}

func post(t *testing.T, cl *http.Client, url, body string) (int, string, error) {
	t.Helper()
	resp, err := cl.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestRPCRefusesNonMembers is the attack on port 7702: setting
// stack/instances to [] on the leader. Without a certificate, with another
// stack's, or over plain HTTP it is refused before any handler runs.
func TestRPCRefusesNonMembers(t *testing.T) {
	st := parsePair(t)
	leader := &leaderTable{t: map[string]cluster.Ownership{}}
	srv, _ := leaderRPC(t, st, leader)
	other, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := clusterauth.Derive(other, "dh1")
	stranger, _ := clusterauth.Derive(testSecret, "dh9")
	attack := `{"key":"stack/instances","value":"[]"}`
	for name, cl := range map[string]*http.Client{
		"no certificate":    memberClient(nil),
		"another stack's":   memberClient(foreign),
		"not a member":      memberClient(stranger),
		"plain HTTP client": {Timeout: 5 * time.Second},
	} {
		url := srv.URL + "/v1/setting"
		if name == "plain HTTP client" {
			url = strings.Replace(url, "https://", "http://", 1)
		}
		code, body, err := post(t, cl, url, attack)
		if err == nil && code == http.StatusOK {
			t.Errorf("%s: the attack was accepted: %s", name, body)
		}
	}
	if _, set := leader.settings[InstancesKey]; set {
		t.Errorf("the leader committed %s: %v", InstancesKey, leader.settings)
	}
}

// TestRPCRefusesForceAndBadSettings: even a member's forwarded request
// cannot force a takeover, set an unknown key or a malformed value.
func TestRPCRefusesForceAndBadSettings(t *testing.T) {
	st := parsePair(t)
	lonely := &lonelyCluster{}
	dh1, err := New(Config{Self: "dh1", Stack: st, Cluster: lonely, Runtime: &recordingRuntime{},
		Peer: func(string) heartbeat.State { return heartbeat.Dead }, Credentials: testCreds("dh1")})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := serveRPCTLS(t, dh1)
	member := memberClient(testCreds("dh2"))

	code, body, err := post(t, member, srv.URL+"/v1/failover", `{"force":true}`)
	if err != nil || code != http.StatusForbidden || !strings.Contains(body, "never accepted over the network") {
		t.Errorf("remote force: %d %s %v, want 403 naming the local path", code, body, err)
	}
	if lonely.recovered != 0 {
		t.Fatal("a remote force made dh1 the only voter")
	}
	// The local operator's path (the API socket calls Submit) still forces.
	if _, err := dh1.Submit(context.Background(), Request{Force: true}, ""); err != nil {
		t.Fatal(err)
	}
	if lonely.recovered != 1 {
		t.Errorf("local force: recovered %d times, want 1", lonely.recovered)
	}

	leader := &leaderTable{t: map[string]cluster.Ownership{}}
	lsrv, _ := leaderRPC(t, st, leader)
	for _, tc := range []struct {
		body string
		code int
	}{
		{`{"key":"maintenance/shop/www","value":"on"}`, http.StatusOK},
		{`{"key":"stack/instances","value":"[]"}`, http.StatusBadRequest},
		{`{"key":"failover/last-move-from/dh1","value":"2999-01-01T00:00:00Z"}`, http.StatusBadRequest},
		{`{"key":"unknown","value":"x"}`, http.StatusBadRequest},
		{`{"key":"maintenance/shop/www","value":"on","since":"2020-01-01T00:00:00Z"}`, http.StatusBadRequest},
		{`{"key":"maintenance/shop/www","value":"on"}{}`, http.StatusBadRequest},
		{`not json`, http.StatusBadRequest},
		{`{"key":"maintenance/shop/www","value":"` + strings.Repeat("x", maxSettingBody) + `"}`, http.StatusRequestEntityTooLarge},
	} {
		code, body, err := post(t, member, lsrv.URL+"/v1/setting", tc.body)
		if err != nil || code != tc.code {
			t.Errorf("POST /v1/setting %.60s: %d %s %v, want %d", tc.body, code, body, err, tc.code)
		}
	}
	if len(leader.settings) != 1 || leader.settings["maintenance/shop/www"] != "on" {
		t.Errorf("leader settings %v, want only the maintenance switch", leader.settings)
	}
	for _, tc := range []struct {
		body string
		code int
	}{
		{`{"to":"dh9"}`, http.StatusBadRequest},
		{`{}`, http.StatusBadRequest},
		{`{"to":"dh1","force":true}`, http.StatusForbidden},
		{`{"to":"dh1","extra":1}`, http.StatusBadRequest},
	} {
		code, body, err := post(t, member, lsrv.URL+"/v1/failover", tc.body)
		if err != nil || code != tc.code {
			t.Errorf("POST /v1/failover %s: %d %s %v, want %d", tc.body, code, body, err, tc.code)
		}
	}
}

// TestHandlerWithoutTLSRefuses: the handler itself refuses a request that
// did not come over a verified TLS connection (should it ever be served
// another way).
func TestHandlerWithoutTLSRefuses(t *testing.T) {
	st := parsePair(t)
	c, err := New(Config{Self: "dh2", Stack: st, Cluster: &leaderTable{t: map[string]cluster.Ownership{}},
		Peer: func(string) heartbeat.State { return heartbeat.Alive }})
	if err != nil {
		t.Fatal(err)
	}
	rec := &responseRecorder{header: http.Header{}}
	req, _ := http.NewRequest(http.MethodGet, "/v1/ownership", nil)
	c.RPCHandler().ServeHTTP(rec, req)
	if rec.code != http.StatusForbidden {
		t.Errorf("plain request: %d, want 403", rec.code)
	}
	if _, err := c.RPCServer(); err == nil {
		t.Error("an RPC server without credentials was made")
	}
}

type responseRecorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *responseRecorder) Header() http.Header         { return r.header }
func (r *responseRecorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *responseRecorder) WriteHeader(code int)        { r.code = code }

// FuzzDecodeSetting: no body crashes the decoder, and whatever it accepts
// is a known key with a checked value.
func FuzzDecodeSetting(f *testing.F) {
	st, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		f.Fatal(err)
	}
	insts, _ := InstancesValue(st)
	for _, s := range []settingRequest{{"maintenance/shop/www", "on"}, {InstancesKey, insts}, {InstancesKey, "[]"},
		{"failover/last-move-from/dh1", "2026-01-01T00:00:00Z"}} {
		b, _ := json.Marshal(s)
		f.Add(b)
	}
	f.Add([]byte(`{"key":"x"`))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := decodeSetting(st, b, now)
		if err != nil {
			return
		}
		if CheckSetting(st, in.Key, in.Value, now) != nil {
			t.Fatalf("accepted %q, which CheckSetting refuses", b)
		}
		if in.Key == InstancesKey {
			if list, err := ParseInstances(st, in.Value); err != nil || len(list) == 0 {
				t.Fatalf("accepted an instance list that does not parse: %q", in.Value)
			}
		}
		if strings.ContainsAny(in.Key+in.Value, "\n\r\x00") && in.Key != InstancesKey {
			t.Fatalf("accepted a control character: %q", b)
		}
	})
}

// FuzzDecodeRemoteFailover: no body crashes the decoder, and none it
// accepts forces a takeover.
func FuzzDecodeRemoteFailover(f *testing.F) {
	st, err := stackfile.Parse("pair.yaml", []byte(pairStack))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{`{"to":"dh1"}`, `{"force":true}`, `{"to":"dh2","force":false}`, `{}`, `{"to":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRemoteFailover(st, b)
		if err != nil {
			return
		}
		if r.Force {
			t.Fatalf("accepted a forced takeover: %q", b)
		}
		if _, _, ok := st.HostByName(r.To); !ok {
			t.Fatalf("accepted a move to %q, not a host", r.To)
		}
	})
}
