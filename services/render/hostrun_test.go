package render

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"magestack/images/manifest"
	"magestack/init/stackfile"
	"magestack/services"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServices runs a payload's services chrooted in root, as role-init
// would (same commands, environment and order), in the caller's network
// namespace.
func startServices(t *testing.T, root string, p services.Payload, logs *syncBuf) {
	t.Helper()
	for _, s := range p.Services {
		c := exec.Command(s.Command[0], s.Command[1:]...)
		c.Env = append([]string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"}, s.Env...)
		c.Dir = "/"
		c.Stdout, c.Stderr = logs, logs
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatalf("start %s: %v", s.Name, err)
		}
		t.Cleanup(func() {
			syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			c.Wait()
		})
	}
}

// TestWebAndDBServeTheCheckPage runs the real db and web payloads (the
// services' own start scripts, rendered configs, Debian's daemons) in
// chroots of their images sharing a private network namespace, with db1.i
// pointing at loopback, and asks the default site's PHP page to write a row
// to MariaDB and read it back. It proves the images and payloads work
// before PID 1 runs them in role environments.
func TestWebAndDBServeTheCheckPage(t *testing.T) {
	dir := imagesDir(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	dbIm, ok1 := m.Lookup("db")
	webIm, ok2 := m.Lookup("web")
	if !ok1 || !ok2 {
		t.Skip("db and web images not built (make images)")
	}
	// Everything below runs on this thread, in a fresh network namespace
	// (the thread is never unlocked: it dies with the test goroutine).
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespaces: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}

	stack := stackfile.Default()
	sec := testSecrets(t)
	db := renderRole(t, stack, sec, "db1")
	web := renderRole(t, stack, sec, "web1")
	dbRoot := rootWith(t, filepath.Join(dir, dbIm.File), db)
	webRoot := rootWith(t, filepath.Join(dir, webIm.File), web)
	os.WriteFile(filepath.Join(webRoot, "etc/hosts"), []byte("127.0.0.1 localhost db1.i web1.i\n"), 0o644)
	os.WriteFile(filepath.Join(dbRoot, "etc/hosts"), []byte("127.0.0.1 localhost db1.i\n"), 0o644)

	var dbLog, webLog syncBuf
	startServices(t, dbRoot, db, &dbLog)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// mysqladmin ping is db's health check: wait for it as role-init would.
	for {
		c := exec.Command("/usr/bin/mysqladmin", "--socket=/run/mysqld/mysqld.sock", "ping")
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: dbRoot}
		c.Dir = "/"
		if out, err := c.CombinedOutput(); err == nil && strings.Contains(string(out), "alive") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("mariadb never answered mysqladmin ping; log:\n%s", dbLog.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	startServices(t, webRoot, web, &webLog)

	// Requests come from inside the namespace: Go's HTTP transport dials
	// from goroutines that are not on this thread, so PHP's CLI in the web
	// image is the client.
	get := func(url string) (int, string, error) {
		c := exec.Command("/usr/bin/php", "-r", `$c = stream_context_create(["http" => ["ignore_errors" => true, "timeout" => 10]]);
$b = @file_get_contents($argv[1], false, $c);
if ($b === false) { fwrite(STDERR, "no answer\n"); exit(1); }
preg_match("/ (\\d{3})/", $http_response_header[0], $m); echo $m[1], "\n", $b;`, url)
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: webRoot}
		c.Dir = "/"
		out, err := c.CombinedOutput()
		if err != nil {
			return 0, string(out), err
		}
		code, body, _ := strings.Cut(string(out), "\n")
		n, _ := strconv.Atoi(code)
		return n, body, nil
	}
	for {
		code, body, err := get("http://127.0.0.1/magestack-fpm-ping")
		if err == nil && code == 200 && strings.Contains(body, "pong") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("web never answered its health check (%d %q %v); log:\n%s", code, body, err, webLog.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
	var rows []string
	for range 2 {
		code, body, err := get("http://127.0.0.1/?check=1")
		if err != nil || code != 200 || !strings.Contains(body, "db check ok") {
			t.Fatalf("check page: %d %q %v\nweb log:\n%s\ndb log:\n%s", code, body, err, webLog.String(), dbLog.String())
		}
		rows = append(rows, body)
	}
	if rows[0] == rows[1] {
		t.Errorf("two checks returned the same row: %q", rows[0])
	}
	t.Logf("check page: %s", strings.TrimSpace(rows[1]))
	// The credentials were generated once, on the host side, and the data
	// directory lives on /data.
	if _, err := os.Stat(filepath.Join(dbRoot, "data/mysql/app")); err != nil {
		t.Errorf("app database not in /data/mysql: %v", err)
	}
	// Redis answers with its generated password, the way its health check asks.
	c := exec.Command("/bin/sh", "-c", `redis-cli -p 6379 --no-auth-warning -a "$(cat /etc/redis/default.pass)" ping`)
	c.SysProcAttr = &syscall.SysProcAttr{Chroot: dbRoot}
	c.Dir = "/"
	if out, err := c.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "PONG" {
		t.Errorf("redis ping: %q %v\n%s", out, err, dbLog.String())
	}
}
