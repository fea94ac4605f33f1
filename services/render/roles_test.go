package render

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/imagestore"
	"magestack/init/roleenv"
	"magestack/init/roleinit"
	"magestack/init/stackfile"
	"magestack/init/supervise"
)

// The test binary is also role-init: roleenv re-executes /proc/self/exe.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "role-init" {
		os.Exit(roleinit.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// realRoles are the roles with a Debian image (fw keeps busybox).
var realRoles = []string{"mail", "db", "web", "lb", "acc", "monitor"}

// TestRealRolesServeTheSite runs every role with a Debian image as a real role
// environments (namespaces, pivot_root into the verified squashfs image
// with an overlay, reduced capabilities, seccomp, veths on a bridge in a
// private network namespace) from the Debian images, with their
// configuration rendered through roleenv's Render hook, and asks lb1 for
// the default site's database check over HTTP and HTTPS. Every role being
// ready means its services' own health checks pass (mysqladmin ping,
// redis-cli ping, the PHP-FPM ping through nginx, HAProxy's stats, SMTP,
// SSH, the status page).
func TestRealRolesServeTheSite(t *testing.T) {
	dir := imagesDir(t)
	if cgoEnabled {
		t.Skip("role-init drops capabilities on every thread (syscall.AllThreadsSyscall), which needs a CGO_ENABLED=0 build; make test sets it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	store := imagestore.New(nil, "")
	if _, err := store.Load(ctx, dir); err != nil {
		t.Fatal(err)
	}
	for _, r := range realRoles {
		if store.Path(r) == "" {
			t.Skipf("no verified %s image in %s (make images)", r, dir)
		}
	}
	tmp := t.TempDir()
	imageRoot := filepath.Join(tmp, "images")
	if err := store.Publish(imageRoot, ""); err != nil {
		t.Fatal(err)
	}

	stack := stackfile.Default()
	for _, r := range realRoles {
		role := stack.Roles[r]
		role.Image = r
		stack.Roles[r] = role
	}
	ns := privateNS(t)
	gw, _ := stack.HostBridgeAddr(0)
	if err := roleenv.EnsureBridge(ns, roleenv.DefaultBridge, netip.PrefixFrom(gw, stack.Internal.Bits())); err != nil {
		t.Fatal(err)
	}
	opts := roleenv.Options{
		StateRoot: filepath.Join(tmp, "roles"), LogRoot: filepath.Join(tmp, "logs"), VolumeRoot: filepath.Join(tmp, "volumes"),
		ImageRoot: imageRoot, BridgeNS: ns, NoLimits: true,
		Render: Func(testSecrets(t)),
	}
	sup := supervise.New(slog.New(slog.NewTextHandler(io.Discard, nil)), supervise.Options{})
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		sup.StopAll(sctx)
	})
	insts, err := stack.Instances()
	if err != nil {
		t.Fatal(err)
	}
	// Start order as PID 1 uses it: each after the one before.
	names := []string{"mail1", "db1", "web1", "lb1", "acc1", "monitor1"}
	for i, name := range names {
		in := insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == name })]
		env, err := roleenv.New(slog.Default(), opts, stack, 0, in)
		if err != nil {
			t.Fatal(err)
		}
		if got := env.RoleSpec().Image; got != filepath.Join(imageRoot, in.Role+".squashfs") {
			t.Fatalf("%s runs image %s", name, got)
		}
		spec := env.Unit()
		if i > 0 {
			spec.After = []string{names[i-1]}
		}
		if err := sup.Add(spec); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if err := sup.Start(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := sup.WaitReady(ctx, names...); err != nil {
		// The services' own logs say why (role-init's log repeats only
		// its readiness wait).
		logs, _ := filepath.Glob(filepath.Join(opts.LogRoot, "*", "*"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("%s:\n%s", l, b)
		}
		t.Fatalf("roles not ready: %v", err)
	}

	lb := insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == "lb1" })].Addr.String()
	var bodies []string
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: dialIn(ns), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, url := range []string{"http://" + lb + "/?check=1", "https://" + lb + "/?check=1"} {
		var body string
		var lastErr error
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			resp, err := c.Get(url)
			if err != nil {
				lastErr = err
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 && strings.Contains(body, "db check ok") {
				lastErr = nil
				break
			}
			lastErr = &statusError{resp.Status, body}
		}
		if lastErr != nil {
			t.Errorf("%s: %v", url, lastErr)
		}
		bodies = append(bodies, body)
	}
	t.Logf("through lb1: %q", bodies)
	// The monitor's page lists the stack; SMTP and SSH answer with their banners.
	mon := insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == "monitor1" })].Addr.String()
	mc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dialIn(ns)}}
	if resp, err := mc.Get("http://" + mon + "/"); err != nil {
		t.Errorf("monitor1: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "web1.i") {
			t.Errorf("monitor1 page: %s", b)
		}
	}
	for name, want := range map[string]string{"mail1:25": "220 mail1.i ESMTP", "acc1:22": "SSH-2.0-OpenSSH"} {
		host, port, _ := strings.Cut(name, ":")
		addr := insts[slices.IndexFunc(insts, func(in stackfile.Instance) bool { return in.Name == host })].Addr.String()
		// A fresh smtpd is spawned per connection: retry a slow first one.
		var got string
		var err error
		// A bound on a slow first smtpd under load, not a timing claim.
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && !strings.HasPrefix(got, want); {
			got, err = banner(ctx, ns, net.JoinHostPort(addr, port))
			if !strings.HasPrefix(got, want) {
				time.Sleep(time.Second)
			}
		}
		buf, n := []byte(got), len(got)
		if err != nil {
			t.Logf("%s: %v", name, err)
		}
		if !strings.HasPrefix(string(buf[:n]), want) {
			t.Errorf("%s banner %q, want %q", name, buf[:n], want)
		}
	}
	if len(bodies) == 2 && !strings.Contains(bodies[0], "on web1") {
		t.Errorf("page not served by web1: %q", bodies[0])
	}
}

type statusError struct{ status, body string }

func (e *statusError) Error() string { return e.status + ": " + e.body }

// privateNS creates a network namespace without leaving this thread in it.
func privateNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("no network namespaces: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// dialIn dials from a thread inside ns: the socket stays there.
func dialIn(ns netns.NsHandle) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := netns.Set(ns); err != nil {
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// banner reads what a server says first on a new connection.
func banner(ctx context.Context, ns netns.NsHandle, addr string) (string, error) {
	conn, err := dialIn(ns)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 128)
	n, err := conn.Read(buf)
	return string(buf[:n]), err
}
