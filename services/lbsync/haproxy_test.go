package lbsync

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These tests run a real HAProxy (Debian package haproxy) on loopback with
// Go web servers behind it, and check what a client of the site sees.

// webServer answers "<name>\n", and /slow?ms=N after N milliseconds.
func webServer(t *testing.T, name string) Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			var ms int
			fmt.Sscan(r.URL.Query().Get("ms"), &ms)
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		io.WriteString(w, name+"\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return Server{Name: name, Addr: netip.MustParseAddrPort(l.Addr().String())}
}

type haproxy struct {
	client *Client
	url    string
}

// startHAProxy runs HAProxy with web1 in backend (a "backend" section, or
// a "listen" section as in the Varnish variant), shaped like the rendered
// haproxy.cfg.
func startHAProxy(t *testing.T, backend string, listen bool, static []Server) *haproxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (Debian package haproxy): ", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := l.Addr().String()
	l.Close()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `global
	stats socket %s mode 600 level admin
defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
`, sock)
	if listen {
		fmt.Fprintf(&cfg, "listen %s\n\tbind %s\n", backend, front)
	} else {
		fmt.Fprintf(&cfg, "frontend http\n\tbind %s\n\tdefault_backend %s\nbackend %s\n", front, backend, backend)
	}
	cfg.WriteString("\tbalance roundrobin\n\toption httpchk GET /\n")
	for _, s := range static {
		fmt.Fprintf(&cfg, "\tserver %s %s %s\n", s.Name, s.Addr, CheckArgs)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	h := &haproxy{client: UnixClient("lbtest", sock), url: "http://" + front}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := h.client.Command(context.Background(), "show info"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("haproxy never answered on %s: %v\n%s", sock, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return h
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// load requests the site without pause from several clients, counting
// answers per web server and every failure.
type load struct {
	mu     sync.Mutex
	seen   map[string]int
	fails  []string
	total  atomic.Int64
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	client *http.Client
}

func startLoad(url string, clients int) *load {
	l := &load{seen: map[string]int{}, stop: make(chan struct{}),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				body, err := get(l.client, url+"/")
				l.total.Add(1)
				l.mu.Lock()
				if err != nil {
					l.fails = append(l.fails, err.Error())
				} else {
					l.seen[body]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// snapshot returns the answers per server so far and resets them.
func (l *load) snapshot() (map[string]int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen, fails := l.seen, l.fails
	l.seen, l.fails = map[string]int{}, nil
	return seen, fails
}

func (l *load) end() { l.once.Do(func() { close(l.stop) }); l.wg.Wait() }

// waitSeen waits until a fresh window of answers comes from exactly names.
func (l *load) waitSeen(t *testing.T, names ...string) map[string]int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var seen map[string]int
	for time.Now().Before(deadline) {
		l.snapshot()
		time.Sleep(500 * time.Millisecond)
		var fails []string
		seen, fails = l.snapshot()
		if len(fails) > 0 {
			t.Errorf("%d requests failed, first: %s", len(fails), fails[0])
		}
		ok := len(seen) == len(names)
		for _, n := range names {
			ok = ok && seen[n] > 0
		}
		if ok {
			return seen
		}
	}
	t.Fatalf("answers never came from exactly %v: last window %v", names, seen)
	return nil
}

func TestConvergeScalesWithoutFailedRequests(t *testing.T) {
	for _, tc := range []struct {
		backend string
		listen  bool
	}{{"web", false}, {"web_pool", true}} {
		t.Run(tc.backend, func(t *testing.T) {
			web := []Server{webServer(t, "web1"), webServer(t, "web2"), webServer(t, "web3")}
			h := startHAProxy(t, tc.backend, tc.listen, web[:1])
			ctx := context.Background()
			ld := startLoad(h.url, 4)
			defer ld.end()
			ld.waitSeen(t, "web1")

			ch, err := h.client.Converge(ctx, nil, tc.backend, web, time.Second*10)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ch.Added, ",") != "web2,web3" || len(ch.Removed) != 0 {
				t.Errorf("scale up changes = %+v, want web2,web3 added", ch)
			}
			t.Logf("1 -> 3: %v", ld.waitSeen(t, "web1", "web2", "web3"))
			states, err := h.client.Servers(ctx, tc.backend)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range states {
				if !s.Up() {
					t.Errorf("server %s not up after converge: %+v", s.Name, s)
				}
			}

			// Converging again changes nothing.
			if ch, err := h.client.Converge(ctx, nil, tc.backend, web, time.Second*10); err != nil || !ch.Empty() {
				t.Errorf("second converge = %+v, %v; want no change", ch, err)
			}

			ch, err = h.client.Converge(ctx, nil, tc.backend, web[2:], time.Second*10)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ch.Removed, ",") != "web1,web2" {
				t.Errorf("scale down changes = %+v, want web1,web2 removed", ch)
			}
			t.Logf("3 -> 1: %v", ld.waitSeen(t, "web3"))
			states, err = h.client.Servers(ctx, tc.backend)
			if err != nil {
				t.Fatal(err)
			}
			if len(states) != 1 || states[0].Name != "web3" {
				t.Errorf("servers after scale down = %+v, want only web3", states)
			}
			ld.end()
			_, fails := ld.snapshot()
			if len(fails) > 0 {
				t.Errorf("%d requests failed, first: %s", len(fails), fails[0])
			}
			t.Logf("%d requests in all", ld.total.Load())
		})
	}
}

// A request in flight on a leaving server completes: Remove waits for it.
func TestRemoveWaitsForInFlightRequest(t *testing.T) {
	web := []Server{webServer(t, "web1"), webServer(t, "web2")}
	h := startHAProxy(t, "web", false, web)
	ctx := context.Background()
	// Both servers take turns: two slow requests land on both.
	type res struct {
		body string
		err  error
		at   time.Time
	}
	results := make(chan res, 2)
	for range 2 {
		go func() {
			b, err := get(&http.Client{Timeout: 30 * time.Second}, h.url+"/slow?ms=2000")
			results <- res{b, err, time.Now()}
		}()
	}
	waitSessions(t, h.client, "web", "web2", 1)
	start := time.Now()
	if err := h.client.Remove(ctx, "web", "web2", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Errorf("in-flight request failed: %v", r.err)
		}
		if r.body == "web2" && r.at.After(removed) {
			t.Errorf("web2's request ended at %v, after its server was deleted at %v", r.at, removed)
		}
	}
	if removed.Sub(start) < 500*time.Millisecond {
		t.Errorf("Remove returned after %v: it did not wait for web2's in-flight request", removed.Sub(start))
	}
	states, _ := h.client.Servers(ctx, "web")
	if len(states) != 1 || states[0].Name != "web1" {
		t.Errorf("servers after remove = %+v, want web1 only", states)
	}
	// Removing what is not there is not an error.
	if err := h.client.Remove(ctx, "web", "web2", time.Second); err != nil {
		t.Errorf("second remove: %v", err)
	}
}

// Sessions outliving the drain bound are cut and the error says how many.
func TestRemoveDrainTimeout(t *testing.T) {
	web := []Server{webServer(t, "web1")}
	h := startHAProxy(t, "web", false, web)
	done := make(chan error, 1)
	go func() {
		_, err := get(&http.Client{Timeout: 30 * time.Second}, h.url+"/slow?ms=10000")
		done <- err
	}()
	waitSessions(t, h.client, "web", "web1", 1)
	err := h.client.Remove(context.Background(), "web", "web1", 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "1 sessions still open") || !strings.Contains(err.Error(), "lbtest") {
		t.Fatalf("Remove past its drain bound: err = %v; want the open sessions and the lb named", err)
	}
	if states, _ := h.client.Servers(context.Background(), "web"); len(states) != 0 {
		t.Errorf("server still there after a timed-out drain: %+v", states)
	}
	if err := <-done; err == nil {
		t.Errorf("the cut request succeeded; want it failed (its session was shut down)")
	}
}

func waitSessions(t *testing.T, c *Client, backend, server string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, _, err := c.Sessions(context.Background(), backend, server)
		if err == nil && cur >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s never had %d sessions (cur %d, err %v)", backend, server, n, cur, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestErrorsNameLBAndCommand(t *testing.T) {
	h := startHAProxy(t, "web", false, []Server{webServer(t, "web1")})
	ctx := context.Background()
	err := h.client.Add(ctx, "nosuch", Server{Name: "web2", Addr: netip.MustParseAddrPort("127.0.0.1:1")}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "lbtest") || !strings.Contains(err.Error(), "show servers state nosuch") {
		t.Errorf("add to a missing backend: %v; want the lb and the command named", err)
	}
	err = h.client.Add(ctx, "web", Server{Name: "web2; shutdown", Addr: netip.MustParseAddrPort("127.0.0.1:1")}, time.Second)
	if err == nil || !strings.Contains(err.Error(), `"web2; shutdown"`) {
		t.Errorf("add with a bad name: %v; want it refused naming the server", err)
	}
	dead := UnixClient("lb9", filepath.Join(t.TempDir(), "none.sock"))
	if _, err := dead.Servers(ctx, "web"); err == nil || !strings.Contains(err.Error(), "lb9") || !strings.Contains(err.Error(), "show servers state web") {
		t.Errorf("no socket: %v; want the lb and the command named", err)
	}
}
