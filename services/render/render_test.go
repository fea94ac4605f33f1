package render

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"magestack/init/stackfile"
	"magestack/init/stacksecret"
	"magestack/services"
)

func renderRole(t *testing.T, stack *stackfile.Stack, sec Secrets, name string) services.Payload {
	t.Helper()
	insts, err := stack.Instances()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		if in.Name != name {
			continue
		}
		p, err := services.PayloadFor(in.Role, in.Role, stack.Roles[in.Role].Settings)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Payload(p, stack, in, sec)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Fatalf("no instance %s", name)
	return services.Payload{}
}

// content renders a payload file the way role-init does.
func content(t *testing.T, p services.Payload, path string) string {
	t.Helper()
	for _, f := range p.Files {
		if f.Path == path {
			b, err := f.Render(services.Instance{Name: "x", Role: "x", FQDN: "x.i", Stack: "s"})
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
	t.Fatalf("no file %s in payload (files: %d)", path, len(p.Files))
	return ""
}

func parse(t *testing.T, y string) *stackfile.Stack {
	t.Helper()
	s, err := stackfile.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const threeWebs = `stack: shop1
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
internal: 172.16.0.0/24
roles:
  web: {count: 3}
  db:
    count: 1
    redis: [{name: sessions}, {name: cache, memory: 256MiB}]
    memcached: [{name: default}]
users:
  - {name: alice, keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAZ96ONPcKrpX4y2r5NoLO8HMGwHKgzoXXOCTDS17YaM alice@laptop"]}
sites:
  - {group: shop, name: www, domains: [shop.example, www.shop.example], maintenanceallow: [198.51.100.7/32]}
`

func TestLBBackendsAreTheWebInstances(t *testing.T) {
	sec := testSecrets(t)
	p := renderRole(t, parse(t, threeWebs), sec, "lb1")
	cfg := content(t, p, "/etc/haproxy/haproxy.cfg")
	for _, want := range []string{"server web1 172.16.0.100:80", "server web2 172.16.0.101:80", "server web3 172.16.0.102:80", "bind :443 ssl crt /etc/haproxy/certs/site.pem"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, cfg)
		}
	}
	pemText := content(t, p, "/etc/haproxy/certs/site.pem")
	if !strings.Contains(pemText, "BEGIN CERTIFICATE") || !strings.Contains(pemText, "PRIVATE KEY") {
		t.Fatalf("site.pem: %q", pemText)
	}
	// The self-signed certificate is made once.
	again := renderRole(t, parse(t, threeWebs), sec, "lb1")
	if content(t, again, "/etc/haproxy/certs/site.pem") != pemText {
		t.Error("certificate changed between renders")
	}
	for _, s := range p.Services {
		if s.Name == "varnish" {
			t.Error("varnish runs without settings.varnish")
		}
	}
}

// db1 and web2 rendered on two hosts that hold copies of the stack secret
// (a pair) agree on the database password.
func TestDBAndWebShareGeneratedCredentials(t *testing.T) {
	stack := parse(t, threeWebs)
	here := testSecrets(t)
	there, err := stacksecret.Parse("peer copy", here.Marshal(stack.Name))
	if err != nil {
		t.Fatal(err)
	}
	db := renderRole(t, stack, here, "db1")
	web := renderRole(t, stack, there, "web2")
	pw, err := here.Secret("db-app")
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) < 24 {
		t.Fatalf("weak password %q", pw)
	}
	if sql := content(t, db, "/etc/mysql/magestack-init.sql"); !strings.Contains(sql, "IDENTIFIED BY '"+pw+"'") {
		t.Errorf("init sql lacks the password:\n%s", sql)
	}
	if php := content(t, web, "/etc/magestack/db.php"); !strings.Contains(php, "'"+pw+"'") || !strings.Contains(php, "db1.i") {
		t.Errorf("db.php:\n%s", php)
	}
	// One service per cache instance, each on its own port.
	var names []string
	for _, s := range db.Services {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "mariadb,redis-sessions,redis-cache,memcached-default" {
		t.Fatalf("db services %s", got)
	}
	if c := content(t, db, "/etc/redis/cache.conf"); !strings.Contains(c, "port 6380") || !strings.Contains(c, "maxmemory 256mb") {
		t.Errorf("redis cache.conf:\n%s", c)
	}
	if f := fileMode0(db, "/etc/mysql/magestack-init.sql"); f != 0o600 {
		t.Errorf("init sql mode %o", f)
	}
}

func fileMode0(p services.Payload, path string) os.FileMode {
	for _, f := range p.Files {
		if f.Path == path {
			return f.Mode
		}
	}
	return 0
}

func TestWebSitesLayout(t *testing.T) {
	web := renderRole(t, parse(t, threeWebs), testSecrets(t), "web1")
	cfg := content(t, web, "/etc/nginx/nginx.conf")
	for _, want := range []string{"root /microcloud/domains/shop/domains/www/http;", "server_name shop.example www.shop.example;",
		"198.51.100.7/32 1;", "/microcloud/domains/shop/domains/www/maintenance.flag", "include /microcloud/domains/shop/domains/www/conf/nginx/*.conf;"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
	def := renderRole(t, stackfile.Default(), testSecrets(t), "web1")
	if php := content(t, def, "/microcloud/domains/default/domains/default/http/index.php"); !strings.Contains(php, "INSERT INTO magestack_check") {
		t.Error("default site has no database check page")
	}
}

// Each user logs in to an account of their own; root takes the admins'
// keys only.
func TestAccAccountsAndMail(t *testing.T) {
	stack := parse(t, threeWebs)
	const bobKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfdVX2PUBzrqpvNxKzQBQ1yGcdBpmBDL2MpOtYqDEiq bob@desk"
	stack.Users = append(stack.Users, stackfile.User{Name: "bob", Admin: true, Keys: []string{bobKey}})
	acc := renderRole(t, stack, testSecrets(t), "acc1")
	alice := content(t, acc, "/etc/magestack/authorized_keys/alice")
	if !strings.HasPrefix(alice, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAZ96") || !strings.HasSuffix(alice, " alice\n") {
		t.Errorf("alice's keys: %q", alice)
	}
	if root := content(t, acc, "/etc/magestack/authorized_keys/root"); root != bobKey+" bob\n" {
		t.Errorf("root's keys are the admins' only, got %q", root)
	}
	want := fmt.Sprintf("alice %d\nbob %d\n", stack.Users[0].UID(), stack.Users[1].UID())
	if list := content(t, acc, "/etc/magestack/users"); list != want {
		t.Errorf("users file %q, want %q", list, want)
	}
	mail := renderRole(t, stack, testSecrets(t), "mail1")
	if c := content(t, mail, "/etc/postfix/main.cf"); !strings.Contains(c, "mynetworks = 127.0.0.0/8 172.16.0.0/24") {
		t.Errorf("main.cf:\n%s", c)
	}
}

// TestEscapedContentSurvivesRoleInit: text that looks like a template
// reaches the role unchanged.
func TestEscapedContentSurvivesRoleInit(t *testing.T) {
	raw := "a {{.Name}} b {{ nothing }} c }}"
	f := services.File{Path: "/x", Content: escape(raw)}
	b, err := f.Render(services.Instance{Name: "web1"})
	if err != nil || string(b) != raw {
		t.Fatalf("got %q, %v", b, err)
	}
}

func TestBusyboxUnchanged(t *testing.T) {
	stack := stackfile.Default()
	p, err := services.PayloadFor("busybox", "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	insts, _ := stack.Instances()
	var web stackfile.Instance
	for _, in := range insts {
		if in.Role == "web" {
			web = in
		}
	}
	out, err := Payload(p, stack, web, testSecrets(t))
	if err != nil || len(out.Files) != len(p.Files) || len(out.Services) != len(p.Services) {
		t.Fatalf("busybox payload changed: %v", err)
	}
}

func TestSecretNames(t *testing.T) {
	if _, err := testSecrets(t).Secret("../etc/passwd"); err == nil {
		t.Fatal("path-like secret name accepted")
	}
}

// TestFuncFitsRoleenv: the adapter has roleenv.Options.Render's type.
func TestFuncFitsRoleenv(t *testing.T) {
	var hook func(services.Payload, *stackfile.Stack, stackfile.Instance) (services.Payload, error) = Func(testSecrets(t))
	p, _ := services.PayloadFor("mail", "mail", nil)
	insts, _ := stackfile.Default().Instances()
	for _, in := range insts {
		if in.Role == "mail" {
			out, err := hook(p, stackfile.Default(), in)
			if err != nil || len(out.Files) <= len(p.Files) {
				t.Fatalf("rendered %d files (had %d): %v", len(out.Files), len(p.Files), err)
			}
		}
	}
}

// testSecrets is a fresh stack secret, as a one-host stack's first boot
// makes.
func testSecrets(t *testing.T) stacksecret.Secret {
	t.Helper()
	s, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// web finds every cache db runs, at the port and with the password db
// configures, in one rendered file.
func TestWebReceivesTheCaches(t *testing.T) {
	stack := parse(t, `stack: caches
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
public: {vip: 192.0.2.50/24}
roles:
  db: {image: db, redis: [{name: sessions}, {name: cache}], memcached: [{name: a}, {name: b}]}
  web: {image: web}
`)
	sec := testSecrets(t)
	db := renderRole(t, stack, sec, "db1")
	web := content(t, renderRole(t, stack, sec, "web1"), "/etc/magestack/caches.php")
	for _, c := range []struct{ name, port string }{{"sessions", "6379"}, {"cache", "6380"}} {
		pass, err := sec.Secret("redis-" + c.name)
		if err != nil {
			t.Fatal(err)
		}
		want := "'" + c.name + "' => ['host' => 'db1.i', 'port' => " + c.port + ", 'password' => '" + pass + "']"
		if !strings.Contains(web, want) {
			t.Errorf("caches.php lacks %s:\n%s", want, web)
		}
		conf := content(t, db, "/etc/redis/"+c.name+".conf")
		if !strings.Contains(conf, "port "+c.port+"\n") || !strings.Contains(conf, "requirepass "+pass+"\n") {
			t.Errorf("db's %s.conf does not match what web was told:\n%s", c.name, conf)
		}
	}
	for _, want := range []string{"'a' => ['host' => 'db1.i', 'port' => 11211]", "'b' => ['host' => 'db1.i', 'port' => 11212]"} {
		if !strings.Contains(web, want) {
			t.Errorf("caches.php lacks %s:\n%s", want, web)
		}
	}
}
