package render

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"magestack/images/manifest"
	"magestack/init/imagestore"
	"magestack/init/stackfile"
	"magestack/services"
)

// imagesDir is where `make images` puts the role images.
func imagesDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MAGESTACK_IMAGES_DIR")
	if dir == "" {
		dir = "../../build/images"
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop and overlay mounts, chroot)")
	}
	if _, err := os.Stat(filepath.Join(dir, manifest.FileName)); err != nil {
		t.Skipf("no role images in %s (run make images): %v", dir, err)
	}
	return dir
}

// rootWith mounts image read-only with a writable overlay and writes the
// payload's files into it, as role-init does; it returns the root.
func rootWith(t *testing.T, image string, p services.Payload) string {
	t.Helper()
	work := t.TempDir()
	lower, upper, wd, root := filepath.Join(work, "lower"), filepath.Join(work, "upper"), filepath.Join(work, "work"), filepath.Join(work, "root")
	for _, d := range []string{upper, wd, root} {
		os.Mkdir(d, 0o755)
	}
	if err := imagestore.MountSquashfs(image, lower); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(lower, unix.MNT_DETACH) })
	if err := unix.Mount("overlay", root, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+wd); err != nil {
		t.Fatalf("overlay: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	if err := unix.Mount("run", filepath.Join(root, "run"), "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"dev", "proc"} {
		src := "/" + d
		if err := unix.Mount(src, filepath.Join(root, d), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range p.Files {
		b, err := f.Render(services.Instance{Name: "test1", Role: p.Image, FQDN: "test1.i", Stack: "test"})
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f.Path)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, f.Mode|0o400); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// inRoot runs a shell command chrooted in root (config checks only: nothing listens).
func inRoot(t *testing.T, root, cmd string) string {
	t.Helper()
	c := exec.Command("/bin/sh", "-c", cmd)
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	c.Dir = "/"
	c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	out, err := c.CombinedOutput()
	if err != nil {
		t.Errorf("in %s image: %s: %v\n%s", filepath.Base(root), cmd, err, out)
	}
	return string(out)
}

// TestRenderedConfigsPassTheDaemonsOwnChecks runs each daemon's config
// test (haproxy -c, nginx -t, php-fpm -t, sshd -t, postfix check,
// mariadbd option parsing) against the rendered files inside the real
// image.
func TestRenderedConfigsPassTheDaemonsOwnChecks(t *testing.T) {
	dir := imagesDir(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	stack := parse(t, threeWebs)
	stack.Roles["lb"] = withSetting(stack.Roles["lb"], "varnish", "true")
	checks := map[string][]string{
		"lb":      {"haproxy -c -f /etc/haproxy/haproxy.cfg", "varnishd -C -f /etc/varnish/magestack.vcl -n /tmp/v >/dev/null"},
		"web":     {"mkdir -p /run/nginx /run/php && nginx -t -c /etc/nginx/nginx.conf", "php-fpm8.2 -t --fpm-config /etc/php/8.2/fpm/php-fpm.conf", "php -m | grep -qx mysqli"},
		"monitor": {"mkdir -p /run/nginx && nginx -t -c /etc/nginx/nginx.conf"},
		"acc": {"mkdir -p /run/sshd /data/ssh && ssh-keygen -q -t ed25519 -N '' -f /data/ssh/ssh_host_ed25519_key && sshd -t -f /etc/ssh/sshd_config",
			// alice gets her account (twice: a restart finds it made), and
			// sshd would let her key in as her, not as root.
			"sh /usr/libexec/magestack/accounts && sh /usr/libexec/magestack/accounts && id alice && test -d /data/home/alice && " +
				"getent passwd alice | grep -q ':/data/home/alice:/bin/bash$' && getent shadow alice | grep -q '^alice:\\*:' && " +
				"sshd -T -f /etc/ssh/sshd_config -C user=alice,host=x,addr=10.8.0.2 | grep -qx 'authorizedkeysfile /etc/magestack/authorized_keys/%u'"},
		"mail": {"postfix check"},
		"db":   {"mariadbd --defaults-file=/etc/mysql/magestack.cnf --user=mysql --help --verbose >/dev/null", "redis-server --version && memcached -V"},
	}
	sec := testSecrets(t)
	for role, cmds := range checks {
		im, ok := m.Lookup(role)
		if !ok {
			t.Logf("%s: no image built, skipped", role)
			continue
		}
		t.Run(role, func(t *testing.T) {
			p := renderRole(t, stack, sec, role+"1")
			root := rootWith(t, filepath.Join(dir, im.File), p)
			for _, c := range cmds {
				inRoot(t, root, c)
			}
		})
	}
}

// TestWebImageHasMagentosPHPExtensions: `php -m` in the web image lists
// every extension Magento 2.4 requires.
func TestWebImageHasMagentosPHPExtensions(t *testing.T) {
	dir := imagesDir(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, ok := m.Lookup("web")
	if !ok {
		t.Fatal("no web image in the manifest")
	}
	root := rootWith(t, filepath.Join(dir, im.File), services.Payload{Image: "web"})
	have := map[string]bool{}
	for _, l := range strings.Split(inRoot(t, root, "php -m"), "\n") {
		have[strings.ToLower(strings.TrimSpace(l))] = true
	}
	for _, ext := range []string{"bcmath", "ctype", "curl", "dom", "gd", "intl", "mbstring", "zend opcache", "pdo_mysql",
		"simplexml", "soap", "sodium", "xsl", "zip", "redis"} {
		if !have[ext] {
			t.Errorf("php -m in the web image lacks %s", ext)
		}
	}
}

func withSetting(r stackfile.Role, k, v string) stackfile.Role {
	s := map[string]string{}
	for a, b := range r.Settings {
		s[a] = b
	}
	s[k] = v
	r.Settings = s
	return r
}

var _ = strings.TrimSpace
