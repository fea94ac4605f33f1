package qemutests

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"magestack/init/nsdo"
	"magestack/init/stackfile"
	"magestack/qemu-tests/qemu"
)

const (
	opsMAC      = "52:54:00:12:34:57"
	opsHost     = "192.0.2.10"
	opsPublic   = "192.0.2.100" // an ordinary visitor
	opsStaff    = "192.0.2.101" // allow-listed during maintenance; also the VPN client
	opsSite     = "shop.example.com"
	opsSiteBase = "/microcloud/domains/shop/domains/www"
)

// opsStack is the website stack on a test LAN: one site whose maintenance
// allow-list holds the staff client, a VPN peer and an SSH user whose keys
// the test holds.
func opsStack(serverKey, clientKey wgtypes.Key, userKey, adminKey ssh.PublicKey) string {
	return fmt.Sprintf(`
stack: webops
hosts:
  - {name: dh1, mac: %q, address: %s/24, gateway: 192.0.2.1}
public:
  vip: 192.0.2.50/24
internal: 172.16.0.0/24
vpn:
  port: 51820
  subnet: 10.8.0.0/24
  privatekey: %q
  peers:
    - {name: staff, key: %q, address: 10.8.0.2}
users:
  - name: alice
    keys: [%q]
  - name: ops
    admin: true
    keys: [%q]
sites:
  - group: shop
    name: www
    domains: [%s]
    maintenanceallow: [%s/32]
roles:
  lb: {count: 1, image: lb, memory: 256MiB}
  web: {count: 1, image: web, memory: 512MiB}
  db: {count: 1, image: db, memory: 768MiB}
  mail: {count: 1, image: mail}
  acc: {count: 1, image: acc}
  monitor: {count: 1, image: monitor}
`, opsMAC, opsHost, serverKey.String(), clientKey.PublicKey().String(),
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(userKey)))+" alice@test",
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(adminKey)))+" ops@test", opsSite, opsStaff)
}

// opsIndex is the site's page, deployed by the test as a site owner would:
// ?db=1 asks MariaDB on db1.i through the rendered credentials. Spaces,
// not tabs: it is typed on the console, where a tab completes.
const opsIndex = `<?php
header('Content-Type: text/plain');
echo "live site on ", gethostname(), "\n";
if (isset($_GET['db'])) {
    $c = require '/etc/magestack/db.php';
    $db = new mysqli($c['host'], $c['user'], $c['password'], $c['name']);
    echo "db answer ", $db->query('SELECT 6*7')->fetch_row()[0], "\n";
}
`

// TestWebsiteOperations boots the website stack once on a test LAN and
// runs an operator's day on it, in order: maintenance mode per site with
// an allow-listed client, SSH to acc over the management VPN (and not from
// the public side), a broken nginx change refused by the config test while
// the site keeps serving, and a service killed in every role coming back.
func TestWebsiteOperations(t *testing.T) {
	qemu.Require(t)
	disk := imagesDisk(t)
	for _, bin := range []string{"wireguard-go", "wg", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing: apt-get install wireguard-go wireguard-tools iproute2", bin)
		}
	}
	serverKey, _ := wgtypes.GeneratePrivateKey()
	clientKey, _ := wgtypes.GeneratePrivateKey()
	userPub, userPriv, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(userPub)
	signer, _ := ssh.NewSignerFromKey(userPriv)
	_, strangerPriv, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := ssh.NewSignerFromKey(strangerPriv)
	adminPub, adminPriv, _ := ed25519.GenerateKey(rand.Reader)
	adminSSH, _ := ssh.NewPublicKey(adminPub)
	admin, _ := ssh.NewSignerFromKey(adminPriv)
	stack := opsStack(serverKey, clientKey, sshPub, adminSSH)
	st, err := stackfile.Parse("webops.yaml", []byte(stack))
	if err != nil {
		t.Fatalf("test stack is invalid: %v", err)
	}
	insts, err := st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	addr := map[string]string{}
	for _, in := range insts {
		addr[in.Name] = in.Addr.String()
	}

	n := qemu.NewNet(t, "ops")
	tap := n.AddTap("tap-ops")
	pub := n.AddClient("public", opsPublic+"/24")
	staff := n.AddClient("staff", opsStaff+"/24")
	var ln net.Listener
	if err := pub.Do(func() (err error) {
		ln, err = net.Listen("tcp", opsPublic+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var stackMu sync.Mutex
	served := stack
	serve := func(s string) { stackMu.Lock(); served = s; stackMu.Unlock() }
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stackMu.Lock()
		defer stackMu.Unlock()
		io.WriteString(w, served)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	im := qemu.RequireImage(t)
	opts := im.Options(fmt.Sprintf("ip=%s::192.0.2.1:255.255.255.0:dh1:eth0:off magestack.host=dh1 magestack.config=http://%s:8080/stack.yaml magestack.console=shell",
		opsHost, opsPublic))
	opts.Name = "webops"
	if opts.Memory < 3072 {
		opts.Memory = 3072
	}
	// Two vCPUs (multi-threaded TCG): MariaDB's first start must finish
	// within its start period even when other guests load the machine.
	opts.SMP = 2
	opts.NetNS = n.NetNS()
	opts.NICs = []qemu.NIC{{Tap: tap, MAC: opsMAC, ROM: "none"}}
	opts.Drives = append(opts.Drives, qemu.Drive{File: disk, Format: "raw", ReadOnly: true})
	vm := qemu.Start(t, opts)
	// Generous: under TCG on a loaded machine, image checks and MariaDB's
	// first start take minutes.
	for _, in := range []string{"db1", "web1", "lb1"} {
		if _, err := vm.Expect(20*time.Minute, unitEvent("ready", in)); err != nil {
			// What the operator would look at, into the console log.
			vm.SendConsole("magestack status; magestack logs " + in + " -n 40; for s in $(magestack status | grep -o '^" + in + "/[^ ]*'); do magestack logs $s -n 20; done\n")
			vm.ExpectNot(time.Minute, "@@never@@")
			t.Fatalf("%s never became ready: %v", in, err)
		}
	}
	ready, err := vm.Expect(15*time.Minute, qemu.ReadyPattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stack ready at guest uptime %s ms", ready[1])
	con := &opsConsole{t: t, vm: vm}
	con.run("echo console up", `^console up$`)

	// The site owner's content, in web1's site directory.
	con.run(`P=$(head -n1 /sys/fs/cgroup/magestack/web1/init/cgroup.procs); D=/proc/$P/root`+opsSiteBase+`; mkdir -p $D/http $D/conf/nginx && echo ok`, `^ok$`)
	con.write("$D/http/index.php", opsIndex)
	site := "http://" + opsHost + "/"
	waitStatus(t, pub, site, 200, "live site on web1", 2*time.Minute)

	top := t // what lives until the last subtest (the VPN client)
	t.Run("maintenance", func(t *testing.T) {
		con.t = t
		con.run("magestack maintenance on shop/www", `^shop/www\s+on\s+web1=on\s+`+opsStaff+`/32\s+`+opsSite)
		body := waitStatus(t, pub, site, 503, "Down for maintenance", time.Minute)
		if !strings.Contains(body, opsSite+" is undergoing") {
			t.Errorf("maintenance page does not name the site: %q", body)
		}
		// PHP pages as well as the front page.
		waitStatus(t, pub, site+"index.php?db=1", 503, "Down for maintenance", time.Minute)
		waitStatus(t, staff, site, 200, "live site on web1", time.Minute)
		con.run("magestack maintenance status", `^shop/www\s+on\s+web1=on`)
		con.run("magestack maintenance off "+opsSite, `^shop/www\s+off\s+web1=off`)
		waitStatus(t, pub, site, 200, "live site on web1", time.Minute)
		// Bad input is named.
		con.runFail("magestack maintenance on nosuch.example.com", `site "nosuch.example.com": not in stack webops \(sites: shop/www\)`)
	})

	t.Run("ssh to acc over the vpn only", func(t *testing.T) {
		con.t = t
		accSSH := addr["acc1"] + ":22"
		// Public side: the host's address and, routed through the host,
		// acc's own address.
		if _, err := fwDial(pub, opsHost+":22", 3*time.Second); err == nil {
			t.Errorf("public client reached ssh on the host address %s", opsHost)
		}
		if _, err := pub.Run("ip", "route", "add", "172.16.0.0/24", "via", opsHost); err != nil {
			t.Fatal(err)
		}
		if _, err := sshRun(pub, accSSH, "alice", signer, "hostname", 5*time.Second); err == nil {
			t.Errorf("public client logged in to acc at %s", accSSH)
		} else {
			t.Logf("public side: %v", err)
		}
		pub.Run("ip", "route", "del", "172.16.0.0/24")

		joinVPN(t, top.Cleanup, staff, "wgops", opsHost, serverKey, clientKey)
		var out string
		var err error
		for deadline := time.Now().Add(qemu.Scale(time.Minute)); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
			if out, err = sshRun(staff, accSSH, "alice", signer, "cat /etc/hostname; id -un; echo home=$HOME; echo kept > ~/deployed && cat ~/deployed", 20*time.Second); err == nil {
				break
			}
		}
		// alice has an account of her own, home on acc's volume.
		if err != nil || !strings.Contains(out, "acc1") || !strings.Contains(out, "\nalice\n") ||
			!strings.Contains(out, "home=/data/home/alice") || !strings.Contains(out, "kept") {
			t.Fatalf("ssh as alice over the VPN: %q %v", out, err)
		}
		t.Logf("over the VPN: %q", out)
		// root takes the admins' keys only.
		if _, err := sshRun(staff, accSSH, "root", signer, "hostname", 20*time.Second); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Errorf("alice's key (not an admin) as root: want authentication refused, got %v", err)
		}
		if out, err := sshRun(staff, accSSH, "root", admin, "id -un", 20*time.Second); err != nil || strings.TrimSpace(out) != "root" {
			t.Errorf("the admin's key as root: %q %v", out, err)
		}
		if _, err := sshRun(staff, accSSH, "alice", stranger, "hostname", 20*time.Second); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Errorf("a key not in the stack file: want authentication refused, got %v", err)
		}
	})

	t.Run("broken nginx change refused", func(t *testing.T) {
		con.t = t
		stop := pollSite(t, pub, site)
		before := con.value(`cat /sys/fs/cgroup/magestack/web1/nginx/cgroup.procs | sort -n | head -n1`)
		con.write("$D/conf/nginx/ops.conf", "this_is_not_a_directive on;\n")
		con.runFail("magestack reload web1/nginx",
			"reload web1/nginx refused: config test `/usr/sbin/nginx -t -c /etc/nginx/nginx.conf` failed \\(exit 1\\); nginx keeps running its previous configuration",
			`unknown directive "this_is_not_a_directive"`)
		waitStatus(t, pub, site, 200, "live site on web1", 10*time.Second)
		// The owner fixes the file; the reload applies it without a restart.
		con.write("$D/conf/nginx/ops.conf", "add_header X-Magestack-Ops reloaded always;\n")
		con.run("magestack reload web1", `^web1/nginx: config test passed .*reloaded`, `^web1/php-fpm: config test passed .*reloaded`)
		deadline := time.Now().Add(qemu.Scale(30 * time.Second))
		for {
			code, hdr, _, err := opsGet(pub, site)
			if err == nil && code == 200 && hdr.Get("X-Magestack-Ops") == "reloaded" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the fixed include never took effect: %d %v %v", code, hdr, err)
			}
			time.Sleep(time.Second)
		}
		after := con.value(`cat /sys/fs/cgroup/magestack/web1/nginx/cgroup.procs | sort -n | head -n1`)
		if before != after {
			t.Errorf("nginx's master changed from %s to %s: it was restarted, not reloaded", before, after)
		}
		con.run("magestack reload lb1", `^lb1/haproxy: config test passed .*reloaded`)
		con.runFail("magestack reload db1/mariadb", `cannot be reloaded in place`)
		con.runFail("magestack reload web9", `instance "web9": not in stack webops`)
		if fails := stop(); len(fails) > 0 {
			t.Errorf("%d requests failed while the change was refused and reloaded; first: %s", len(fails), fails[0])
		}
	})

	t.Run("stack file change applied by reload", func(t *testing.T) {
		con.t = t
		con.run("magestack maintenance on", `^shop/www\s+on\s+web1=on`)
		waitStatus(t, pub, site, 503, "Down for maintenance", time.Minute)
		roleInit := con.value(`head -n1 /sys/fs/cgroup/magestack/web1/init/cgroup.procs`)
		master := con.value(`cat /sys/fs/cgroup/magestack/web1/nginx/cgroup.procs | sort -n | head -n1`)
		// The public client joins the allow-list in the stack file.
		changed := strings.Replace(stack, "maintenanceallow: ["+opsStaff+"/32]", "maintenanceallow: ["+opsStaff+"/32, "+opsPublic+"/32]", 1)
		if changed == stack {
			t.Fatal("test stack has no allow-list to change")
		}
		serve(changed)
		con.run("magestack config apply", `^revision `)
		waitStatus(t, pub, site, 200, "live site on web1", time.Minute)
		// The operator's view follows the revision in force.
		con.run("magestack maintenance status", `^shop/www\s+on\s+web1=on\s+\S*`+regexp.QuoteMeta(opsPublic+"/32"))
		if got := con.value(`head -n1 /sys/fs/cgroup/magestack/web1/init/cgroup.procs`); got != roleInit {
			t.Errorf("web1 was re-created (role-init %s, was %s): the change should have been a reload", got, roleInit)
		}
		if got := con.value(`cat /sys/fs/cgroup/magestack/web1/nginx/cgroup.procs | sort -n | head -n1`); got != master {
			t.Errorf("web1's nginx master changed (%s, was %s): restarted, not reloaded", got, master)
		}
		con.run("magestack maintenance off", `^shop/www\s+off\s+web1=off`)
	})

	t.Run("killed services come back", func(t *testing.T) {
		con.t = t
		for _, u := range []struct{ inst, svc, check string }{
			{"lb1", "haproxy", ""}, {"web1", "nginx", ""}, {"web1", "php-fpm", ""},
			{"db1", "mariadb", "?db=1"}, {"mail1", "postfix", ""}, {"acc1", "sshd", ""}, {"monitor1", "portal", ""},
		} {
			name := u.inst + "/" + u.svc
			// The role's supervisor may be slow to answer status on a
			// loaded machine (its line is then missing): ask again.
			var state string
			restarts := -1
			for deadline := time.Now().Add(qemu.Scale(2 * time.Minute)); ; time.Sleep(3 * time.Second) {
				if state, _, restarts = con.unitState(name); state == "ready" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s is %s before the kill", name, state)
				}
			}
			con.run(fmt.Sprintf("kill -9 $(cat /sys/fs/cgroup/magestack/%s/%s/cgroup.procs) && echo killed", u.inst, u.svc), `^killed$`)
			deadline := time.Now().Add(qemu.Scale(5 * time.Minute))
			for {
				s, _, r := con.unitState(name)
				if s == "ready" && r > restarts {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s did not come back: %s, restarts %d (was %d)", name, s, r, restarts)
				}
				time.Sleep(3 * time.Second)
			}
			want := "live site on web1"
			if u.check != "" {
				want = "db answer 42"
			}
			waitStatus(t, pub, site+"index.php"+u.check, 200, want, 2*time.Minute)
			t.Logf("%s came back; the site answers", name)
		}
		if _, err := fwDial(staff, addr["acc1"]+":22", qemu.Scale(20*time.Second)); err != nil {
			t.Errorf("acc's sshd not reachable over the VPN after its restart: %v", err)
		}
		// A restart of the whole role starts from a fresh writable layer:
		// alice's account is made again, her home (acc's volume) is kept.
		con.run("magestack restart acc1 && echo restarted", `^restarted$`)
		var out string
		var err error
		for deadline := time.Now().Add(qemu.Scale(2 * time.Minute)); time.Now().Before(deadline); time.Sleep(3 * time.Second) {
			if out, err = sshRun(staff, addr["acc1"]+":22", "alice", signer, "cat ~/deployed", 20*time.Second); err == nil {
				break
			}
		}
		if err != nil || strings.TrimSpace(out) != "kept" {
			t.Errorf("alice's file after acc1 restarted: %q %v", out, err)
		}
	})
}

// opsConsole runs commands on the guest's maintenance shell.
type opsConsole struct {
	t  *testing.T
	vm *qemu.VM
	n  int
}

// type paces input like a person at the console: the shell switches its
// terminal mode between commands, and input typed while the previous
// command still runs can be lost.
func (c *opsConsole) typeIn(s string) {
	c.t.Helper()
	time.Sleep(qemu.Scale(2 * time.Second))
	if err := c.vm.SendConsole(s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *opsConsole) send(cmd string) int {
	c.t.Helper()
	c.n++
	c.typeIn(cmd + "; echo @@rc-" + strconv.Itoa(c.n) + "=$?@@\n")
	return c.n
}

func (c *opsConsole) finish(cmd string, n int, patterns []string, wantOK bool) {
	c.t.Helper()
	for _, p := range patterns {
		// The console is searched as text from the last match on:
		// ^ and $ are line anchors here.
		if _, err := c.vm.Expect(3*time.Minute, "(?m)"+p); err != nil {
			c.t.Fatalf("%s: no line matching %q: %v", cmd, p, err)
		}
	}
	m, err := c.vm.Expect(3*time.Minute, `(?m)^@@rc-`+strconv.Itoa(n)+`=(\d+)@@`)
	if err != nil {
		c.t.Fatalf("%s: %v", cmd, err)
	}
	if ok := m[1] == "0"; ok != wantOK {
		c.t.Fatalf("%s: exit %s, want success %v", cmd, m[1], wantOK)
	}
}

// run runs cmd, which must succeed and print lines matching patterns.
func (c *opsConsole) run(cmd string, patterns ...string) {
	c.t.Helper()
	c.finish(cmd, c.send(cmd), patterns, true)
}

// runFail runs cmd, which must fail and print lines matching patterns.
func (c *opsConsole) runFail(cmd string, patterns ...string) {
	c.t.Helper()
	c.finish(cmd, c.send(cmd), patterns, false)
}

// value prints one line of cmd's output.
func (c *opsConsole) value(cmd string) string {
	c.t.Helper()
	n := c.send(fmt.Sprintf(`echo "@@v-%d=$(%s)@@"`, c.n+1, cmd))
	m, err := c.vm.Expect(3*time.Minute, `(?m)^@@v-`+strconv.Itoa(n)+`=(.*)@@$`)
	if err != nil {
		c.t.Fatalf("%s: %v", cmd, err)
	}
	c.finish(cmd, n, nil, true)
	return strings.TrimSpace(m[1])
}

// write puts content into a file the shell variable path names, through a
// quoted here-document.
func (c *opsConsole) write(path, content string) {
	c.t.Helper()
	c.n++
	cmd := "cat > " + path + " <<'@@EOF'; echo @@rc-" + strconv.Itoa(c.n) + "=$?@@\n" + strings.TrimRight(content, "\n") + "\n@@EOF\n"
	c.typeIn(cmd)
	c.finish("write "+path, c.n, nil, true)
}

// unitState reads a service's state, pid and restart count from
// `magestack status`.
func (c *opsConsole) unitState(name string) (state, pid string, restarts int) {
	c.t.Helper()
	line := c.value(`magestack status | grep '^` + name + ` ' | tr -s ' '`)
	f := strings.Fields(line)
	if len(f) < 5 {
		return "missing: " + line, "", -1
	}
	r, _ := strconv.Atoi(f[4])
	return f[1], f[2], r
}

// opsGet asks url from inside ns.
func opsGet(ns *qemu.Namespace, url string) (int, http.Header, string, error) {
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		return 0, nil, "", err
	}
	defer h.Close()
	c := &http.Client{Timeout: qemu.Scale(20 * time.Second), Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: nsdo.DialContext(h)}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), err
}

// waitStatus waits until url answers code with a body containing want.
func waitStatus(t *testing.T, ns *qemu.Namespace, url string, code int, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(timeout))
	for {
		got, _, body, err := opsGet(ns, url)
		if err == nil && got == code && strings.Contains(body, want) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s from %s: want %d with %q, got %d %q %v", url, ns.Name, code, want, got, body, err)
		}
		time.Sleep(time.Second)
	}
}

// pollSite asks url every half second until the returned stop is called,
// which returns every request that did not answer 200.
func pollSite(t *testing.T, ns *qemu.Namespace, url string) func() []string {
	var mu sync.Mutex
	var fails []string
	ok := 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			code, _, body, err := opsGet(ns, url)
			mu.Lock()
			if err != nil || code != 200 {
				fails = append(fails, fmt.Sprintf("%s: %d %q %v", time.Now().Format("15:04:05.000"), code, body, err))
			} else {
				ok++
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() []string {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		t.Logf("site polled: %d answered 200, %d failed", ok, len(fails))
		if ok == 0 {
			fails = append(fails, "no request answered at all")
		}
		return fails
	}
}

// sshRun logs in to addr from inside ns with key as user and runs cmd.
func sshRun(ns *qemu.Namespace, addr, user string, key ssh.Signer, cmd string, timeout time.Duration) (string, error) {
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		return "", err
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), qemu.Scale(timeout))
	defer cancel()
	conn, err := nsdo.DialContext(h)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(qemu.Scale(timeout)))
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: qemu.Scale(timeout)})
	if err != nil {
		return "", err
	}
	client := ssh.NewClient(cc, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	return string(out), err
}

// joinVPN makes ns a WireGuard peer (10.8.0.2 on interface <name><pid>,
// wireguard-go, returned) of the host at hostAddr:51820, routing the VPN and
// internal subnets through the tunnel, until cleanup runs (wireguard-go
// stops when its socket is removed).
func joinVPN(t *testing.T, cleanup func(func()), ns *qemu.Namespace, name, hostAddr string, serverKey, clientKey wgtypes.Key) (iface string) {
	t.Helper()
	wg := fmt.Sprintf("%s%d", name, os.Getpid()%100000)
	cmd := exec.Command("wireguard-go", "-f", wg)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	sock := "/var/run/wireguard/" + wg + ".sock"
	cleanup(func() { os.Remove(sock) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("wireguard-go did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	keyFile := t.TempDir() + "/client.key"
	os.WriteFile(keyFile, []byte(clientKey.String()+"\n"), 0o600)
	for _, args := range [][]string{
		{"wg", "set", wg, "private-key", keyFile, "peer", serverKey.PublicKey().String(),
			"endpoint", hostAddr + ":51820", "allowed-ips", "10.8.0.0/24,172.16.0.0/24", "persistent-keepalive", "1"},
		{"ip", "addr", "add", "10.8.0.2/32", "dev", wg},
		{"ip", "link", "set", wg, "up"},
		{"ip", "route", "add", "10.8.0.0/24", "dev", wg},
		{"ip", "route", "add", "172.16.0.0/24", "dev", wg},
	} {
		if out, err := ns.Run(args[0], args[1:]...); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	return wg
}
