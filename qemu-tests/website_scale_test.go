package qemutests

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// siteLoad requests the site without pause from a few clients (keep-alive
// connections, as browsers do), counting answers per web instance and
// every failed request.
type siteLoad struct {
	url   string
	mu    sync.Mutex
	seen  map[string]int // web instance -> answers, since the last window
	total map[string]int // web instance -> answers, all along
	fails []string
	count int
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

var answeredBy = regexp.MustCompile(`magestack default site on (\S+)`)

func startSiteLoad(url string, clients int) *siteLoad {
	l := &siteLoad{url: url, seen: map[string]int{}, total: map[string]int{}, stop: make(chan struct{})}
	for range clients {
		// Longer than HAProxy's own timeouts: a failure is what the site answers.
		c := &http.Client{Timeout: qemu.Scale(90 * time.Second)}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				web, err := l.one(c)
				l.mu.Lock()
				l.count++
				if err != nil {
					l.fails = append(l.fails, time.Now().Format("15:04:05.000")+" "+err.Error())
				} else {
					l.seen[web]++
					l.total[web]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *siteLoad) one(c *http.Client) (string, error) {
	resp, err := c.Get(l.url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %q", resp.Status, strings.TrimSpace(string(b)))
	}
	m := answeredBy.FindStringSubmatch(string(b))
	if m == nil {
		return "", fmt.Errorf("unexpected page %q", strings.TrimSpace(string(b)))
	}
	return m[1], nil
}

func (l *siteLoad) end() { l.once.Do(func() { close(l.stop) }); l.wg.Wait() }

// window returns the answers per instance since the last call, and every
// failure so far.
func (l *siteLoad) window() (map[string]int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := l.seen
	l.seen = map[string]int{}
	return seen, append([]string(nil), l.fails...)
}

func (l *siteLoad) totals() (map[string]int, int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := map[string]int{}
	for k, v := range l.total {
		t[k] = v
	}
	return t, l.count, append([]string(nil), l.fails...)
}

func names(m map[string]int) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// waitAnsweredBy waits until a window of answers (several seconds long)
// comes from exactly want; it returns that window.
func (l *siteLoad) waitAnsweredBy(t *testing.T, want string, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(timeout))
	l.window()
	var last map[string]int
	for time.Now().Before(deadline) {
		time.Sleep(5 * time.Second)
		last, _ = l.window()
		if names(last) == want {
			return last
		}
	}
	t.Fatalf("answers never came from exactly %s within %s: last window %v", want, qemu.Scale(timeout), last)
	return nil
}

// scaleStack runs lb and web on their real Debian images and the other
// roles on the light built-in ones: the scenario is about lb following web
// instances, and a loaded TCG host boots the full website stack slowly.
const scaleStack = `
stack: website-scale
hosts:
  - name: dh1
    mac: "52:54:00:12:34:56"
public:
  vip: 10.0.2.50/24
internal: 172.16.0.0/24
roles:
  lb: {count: 1, image: lb, memory: 256MiB}
  web: {count: 1, image: web, memory: 384MiB}
`

// TestWebsiteScale boots the website stack with one web instance, keeps a
// client requesting the site through the public address, scales web to 3
// and back to 1 on the console, and checks that HAProxy balanced over every
// instance and that no request failed while instances came and went.
func TestWebsiteScale(t *testing.T) {
	qemu.Require(t)
	vm, base := startWebsiteVM(t, "website-scale", scaleStack, 4096)

	if _, err := vm.Expect(25*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	waitBody(t, base, "magestack default site on web1", 5*time.Minute)

	run := func(cmd, wantRC string, timeout time.Duration, patterns ...string) {
		t.Helper()
		if err := vm.SendConsole(cmd + "; echo @@rc=$?@@\n"); err != nil {
			t.Fatal(err)
		}
		for _, p := range patterns {
			if _, err := vm.Expect(timeout, p); err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
		}
		m, err := vm.Expect(timeout, `@@rc=(\d+)@@`)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if m[1] != wantRC {
			t.Fatalf("%s: exit code %s, want %s", cmd, m[1], wantRC)
		}
	}
	// Bad input is refused with a reason, and nothing changes.
	run("magestack scale db=2", "2", time.Minute, `role db cannot scale`)
	run("magestack scale web=0", "2", time.Minute, `at least 1`)

	load := startSiteLoad(base, 2)
	defer load.end()
	first := load.waitAnsweredBy(t, "web1", 2*time.Minute)
	t.Logf("before scaling: a window answered by %v", first)

	start := time.Now()
	run("magestack scale web=3", "0", 20*time.Minute, `start web2`, `start web3`, `web: 3 instances \(stack file: 1; override: 3`)
	t.Logf("scale web=3 returned after %s", time.Since(start).Round(time.Second))
	up := load.waitAnsweredBy(t, "web1,web2,web3", 4*time.Minute)
	t.Logf("1 -> 3: all three answer %s after the command began; a window: %v", time.Since(start).Round(time.Second), up)
	run("magestack scale", "0", time.Minute, `(?m)^web\s+3\s+1\s+3 `)

	start = time.Now()
	run("magestack scale web=1", "0", 20*time.Minute, `stop web3`, `stop web2`, `web: 1 instances \(stack file: 1; override: none\)`)
	t.Logf("scale web=1 returned after %s", time.Since(start).Round(time.Second))
	down := load.waitAnsweredBy(t, "web1", 4*time.Minute)
	t.Logf("3 -> 1: only web1 answers %s after the command began; a window: %v", time.Since(start).Round(time.Second), down)

	load.end()
	// HAProxy's own account of its servers' health, for the record.
	run("magestack logs lb1/haproxy -n 500 | grep -E 'is (DOWN|UP)|has no server|Health check' | tail -n 30", "0", time.Minute)
	for _, line := range strings.Split(vm.Console(), "\n") {
		if strings.Contains(line, "is DOWN") || strings.Contains(line, "is UP") || strings.Contains(line, "has no server") {
			t.Logf("haproxy: %s", strings.TrimSpace(line))
		}
	}
	totals, n, fails := load.totals()
	t.Logf("requests: %d in all, answered by %v, %d failed", n, totals, len(fails))
	if len(fails) > 0 {
		t.Errorf("%d of %d requests failed while scaling, from %s to %s; first ones:\n%s", len(fails), n,
			fails[0][:12], fails[len(fails)-1][:12], strings.Join(fails[:min(len(fails), 10)], "\n"))
	}
	for _, w := range []string{"web1", "web2", "web3"} {
		if totals[w] == 0 {
			t.Errorf("%s never answered", w)
		}
	}
	if !strings.Contains(vm.Console(), "lb backend updated") {
		t.Errorf("no lb backend update on the console")
	}
}
