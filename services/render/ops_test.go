package render

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"magestack/images/manifest"
	"magestack/init/stackfile"
	"magestack/services"
)

const opsStack = `
stack: ops
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
internal: 172.16.0.0/24
sites:
  - {group: shop, name: www, domains: [shop.example.com, www.shop.example.com], maintenanceallow: [127.0.0.1/32]}
  - {group: shop, name: blog, domains: [blog.example.com]}
  - {group: other, name: www, domains: [other.example.com]}
roles:
  web: {count: 1, image: web}
`

func TestReloadFor(t *testing.T) {
	for _, tc := range []struct {
		role, svc string
		check     string // first word of the check; "" means refused
		want      string // in the refusal
	}{
		{"web", "nginx", "/usr/sbin/nginx", ""},
		{"web", "php-fpm", "/usr/sbin/php-fpm8.2", ""},
		{"lb", "haproxy", "/usr/sbin/haproxy", ""},
		{"mail", "postfix", "/usr/sbin/postfix", ""},
		{"acc", "sshd", "/usr/sbin/sshd", ""},
		{"monitor", "portal", "/usr/sbin/nginx", ""},
		{"db", "mariadb", "", "service mariadb of role db cannot be reloaded in place: MariaDB reads its configuration only at start (restart it instead: magestack restart <instance>/mariadb)"},
		{"db", "redis-sessions", "", "Redis and Memcached"},
		{"web", "nosuch", "", "service nosuch of role web cannot be reloaded in place: it has no configuration reload"},
	} {
		r, err := ReloadFor(tc.role, tc.svc)
		if tc.check == "" {
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReloadFor(%s, %s) = %v, want an error with %q", tc.role, tc.svc, err, tc.want)
			}
			continue
		}
		if err != nil || len(r.Check) == 0 || r.Check[0] != tc.check || (r.Signal == "") == (len(r.Command) == 0) {
			t.Errorf("ReloadFor(%s, %s) = %+v, %v", tc.role, tc.svc, r, err)
		}
		if r.Signal != "" {
			if _, err := services.Signal(r.Signal); err != nil {
				t.Errorf("%s/%s: %v", tc.role, tc.svc, err)
			}
		}
	}
	if got := strings.Join(Reloadable("web"), ","); got != "nginx,php-fpm" {
		t.Errorf("Reloadable(web) = %s", got)
	}
	if got := Reloadable("db"); len(got) != 0 {
		t.Errorf("Reloadable(db) = %v", got)
	}
}

func TestFindSite(t *testing.T) {
	st := parse(t, opsStack)
	for _, tc := range []struct{ arg, want, err string }{
		{"shop/www", "shop/www", ""},
		{"blog", "shop/blog", ""},
		{"www.shop.example.com", "shop/www", ""},
		{"www", "", `site "www": ambiguous in stack ops, name it as group/name (sites: shop/www, shop/blog, other/www)`},
		{"nosuch.example.com", "", `site "nosuch.example.com": not in stack ops (sites: shop/www, shop/blog, other/www)`},
		{"", "", "stack ops has 3 sites: name one of shop/www, shop/blog, other/www"},
	} {
		s, err := FindSite(st, tc.arg)
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("FindSite(%q) = %v, want error %q", tc.arg, err, tc.err)
		case tc.err == "" && (err != nil || SiteID(s) != tc.want):
			t.Errorf("FindSite(%q) = %s, %v, want %s", tc.arg, SiteID(s), err, tc.want)
		}
	}
	def, err := FindSite(stackfile.Default(), "")
	if err != nil || SiteID(def) != "default/default" {
		t.Errorf("FindSite(default stack, \"\") = %s, %v", SiteID(def), err)
	}
}

func TestMaintenanceRendering(t *testing.T) {
	st := parse(t, opsStack)
	in := instance(t, st, "web1")
	base, err := services.PayloadFor("web", "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{false, true} {
		p, err := PayloadWith(base, st, in, Options{Secrets: testSecrets(t),
			Maintenance: func(s stackfile.Site) bool { return on && SiteID(s) == "shop/blog" }})
		if err != nil {
			t.Fatal(err)
		}
		files := map[string]string{}
		for _, f := range p.Files {
			files[f.Path] = f.Content
		}
		if page := files["/etc/magestack/maintenance/1.html"]; !strings.Contains(page, "blog.example.com is undergoing") {
			t.Errorf("maintenance page of site 1: %q", page)
		}
		_, flagged := files["/microcloud/domains/shop/domains/blog/maintenance.flag"]
		if flagged != on {
			t.Errorf("maintenance on=%v: flag file rendered %v", on, flagged)
		}
		if _, other := files["/microcloud/domains/shop/domains/www/maintenance.flag"]; other {
			t.Error("a site not in maintenance got the flag")
		}
		conf := files["/etc/nginx/nginx.conf"]
		for _, want := range []string{"127.0.0.1/32 1;", "if (-f /microcloud/domains/shop/domains/blog/maintenance.flag)", "try_files /1.html =503;"} {
			if !strings.Contains(conf, want) {
				t.Errorf("nginx.conf lacks %q", want)
			}
		}
	}
}

func instance(t *testing.T, st *stackfile.Stack, name string) stackfile.Instance {
	t.Helper()
	insts, err := st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("no instance %s", name)
	return stackfile.Instance{}
}

// TestReloadChecksInImages runs each reload's config test exactly as
// PID 1 does (same argv) inside the real images: it passes on the rendered
// configuration, and the web one refuses a broken per-vhost include with
// nginx's own message.
func TestReloadChecksInImages(t *testing.T) {
	dir := imagesDir(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := parse(t, threeWebs)
	sec := testSecrets(t)
	prep := map[string]string{
		"web":     "mkdir -p /run/nginx /run/php",
		"monitor": "mkdir -p /run/nginx",
		"acc":     "mkdir -p /run/sshd /data/ssh && ssh-keygen -q -t ed25519 -N '' -f /data/ssh/ssh_host_ed25519_key",
	}
	for role := range reloads {
		im, ok := m.Lookup(role)
		if !ok {
			t.Logf("%s: no image built, skipped", role)
			continue
		}
		t.Run(role, func(t *testing.T) {
			p := renderRole(t, st, sec, role+"1")
			root := rootWith(t, filepath.Join(dir, im.File), p)
			if c := prep[role]; c != "" {
				inRoot(t, root, c)
			}
			for _, svc := range Reloadable(role) {
				r, _ := ReloadFor(role, svc)
				if out, code := runIn(t, root, r.Check); code != 0 {
					t.Errorf("%s/%s: %q exited %d on the rendered config:\n%s", role, svc, r.Check, code, out)
				}
				if len(r.Command) > 0 {
					if _, err := os.Stat(filepath.Join(root, r.Command[0])); err != nil {
						t.Errorf("%s/%s: reload command: %v", role, svc, err)
					}
				}
			}
			if role != "web" {
				return
			}
			inc := filepath.Join(root, SiteBase(Sites(st)[0]), "conf/nginx")
			os.MkdirAll(inc, 0o755)
			os.WriteFile(filepath.Join(inc, "bad.conf"), []byte("this_is_not_a_directive on;\n"), 0o644)
			r, _ := ReloadFor("web", "nginx")
			out, code := runIn(t, root, r.Check)
			if code == 0 || !strings.Contains(out, `unknown directive "this_is_not_a_directive"`) || !strings.Contains(out, "bad.conf") {
				t.Errorf("broken include: exit %d, output %q; want a refusal naming the directive and file", code, out)
			}
		})
	}
}

func runIn(t *testing.T, root string, argv []string) (string, int) {
	t.Helper()
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	c.Dir = "/"
	c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	out, err := c.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("%q: %v", argv, err)
	}
	return string(out), 0
}

// TestMaintenanceServedByNginx runs the real web payload (nginx + PHP-FPM
// from the image, rendered config) and switches a site's flag file: a
// visitor gets the maintenance page with 503 (magestack's page, then the
// site's own), an allow-listed client and the health ping keep the live
// site, and removing the flag brings it back for everyone.
func TestMaintenanceServedByNginx(t *testing.T) {
	dir := imagesDir(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	webIm, ok := m.Lookup("web")
	if !ok {
		t.Skip("web image not built (make images)")
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test
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
	st := parse(t, opsStack)
	web := renderRole(t, st, testSecrets(t), "web1")
	root := rootWith(t, filepath.Join(dir, webIm.File), web)
	shop := st.Sites[0]
	docroot := filepath.Join(root, DocRoot(shop))
	os.MkdirAll(docroot, 0o755)
	os.WriteFile(filepath.Join(docroot, "index.php"), []byte("<?php echo 'live shop';\n"), 0o644)
	var logs syncBuf
	startServices(t, root, web, &logs)

	// The client is PHP's CLI in the image, bound to a chosen loopback
	// address (127.0.0.1 is allow-listed, 127.0.0.2 is not).
	get := func(from, path string) (int, string) {
		c := exec.Command("/usr/bin/php", "-r", `$c = stream_context_create(["http" => ["ignore_errors" => true, "timeout" => 10, "header" => "Host: shop.example.com"], "socket" => ["bindto" => $argv[1].":0"]]);
$b = @file_get_contents("http://127.0.0.1".$argv[2], false, $c);
if ($b === false) { fwrite(STDERR, "no answer\n"); exit(1); }
preg_match("/ (\\d{3})/", $http_response_header[0], $m); echo $m[1], "\n", $b;`, from, path)
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		c.Dir = "/"
		out, err := c.CombinedOutput()
		if err != nil {
			return 0, string(out)
		}
		code, body, _ := strings.Cut(string(out), "\n")
		n, _ := strconv.Atoi(code)
		return n, body
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if code, body := get("127.0.0.2", "/"); code == 200 && strings.Contains(body, "live shop") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the site never answered; log:\n%s", logs.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
	flag := filepath.Join(root, MaintenanceFlag(shop))
	if err := os.WriteFile(flag, []byte("on\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect := func(from, path string, code int, want string) {
		t.Helper()
		got, body := get(from, path)
		if got != code || !strings.Contains(body, want) {
			t.Errorf("GET %s from %s: %d %q, want %d with %q", path, from, got, body, code, want)
		}
	}
	expect("127.0.0.2", "/", 503, "shop.example.com is undergoing scheduled maintenance")
	expect("127.0.0.2", "/index.php", 503, "Down for maintenance")
	expect("127.0.0.2", "/anything/else", 503, "Down for maintenance")
	expect("127.0.0.1", "/", 200, "live shop")
	expect("127.0.0.1", "/magestack-fpm-ping", 200, "pong")
	// The site's own page wins over magestack's.
	own := filepath.Join(root, SiteBase(shop), "maintenance")
	os.MkdirAll(own, 0o755)
	os.WriteFile(filepath.Join(own, "index.html"), []byte("back at noon\n"), 0o644)
	expect("127.0.0.2", "/", 503, "back at noon")
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	expect("127.0.0.2", "/", 200, "live shop")
}
