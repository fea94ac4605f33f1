package services

import (
	"time"

	"magestack/init/health"
)

// The busybox test image's payloads: real listeners on each role's real
// ports, so the firewall, health checks and supervision are exercised end to
// end before the real images (nginx, MariaDB, HAProxy...) exist. Known gaps:
// lb serves its own page on 80 (no 443 and no proxying: Debian's busybox
// httpd has no proxy support); db, mail and acc are banner listeners, not
// the protocols.

// baseCaps is what every busybox role keeps: file ownership handling, binding
// low ports, signalling its own processes, switching to service users.
var baseCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"}

func caps(extra ...string) []string { return append(append([]string{}, baseCaps...), extra...) }

func httpCheck(url, body string) *health.Check {
	return &health.Check{HTTP: url, BodyContains: body, Interval: 2 * time.Second, Timeout: time.Second, Retries: 3, StartPeriod: 5 * time.Second}
}

func tcpCheck(addr string) *health.Check {
	return &health.Check{TCP: addr, Interval: 2 * time.Second, Timeout: time.Second, Retries: 3, StartPeriod: 5 * time.Second}
}

// listener answers every connection on port with a line naming what it
// stands for and the instance (nc -ll keeps listening, -e runs the banner).
func listener(name string, port, banner string, after ...string) Service {
	return Service{
		Name:    name,
		Command: []string{"/bin/nc", "-ll", "-p", port, "-e", "/usr/libexec/magestack/banner"},
		Env:     []string{"BANNER=" + banner},
		After:   after,
		Health:  tcpCheck("127.0.0.1:" + port),
	}
}

func page(role, text string) File {
	return File{Path: "/www/" + role + "/index.html", Mode: 0o644,
		Content: "<!doctype html>\n<title>{{.Name}}</title>\n<h1>" + text + " {{.Name}}</h1>\n<p>stack {{.Stack}}, role {{.Role}}, busybox test image</p>\n"}
}

// memHog is a test hook: with the role setting test.memhog=true it runs
// 10 s, then grows without bound (tail keeps an unterminated line from
// /dev/zero), so the role's memory.max OOM-kills it and supervision
// restarts it. The quiet 10 s let the role become ready first and keep the
// restarts below the crash-loop threshold (5 exits in 30 s).
var memHog = Service{Name: "memhog", Command: []string{"/bin/sh", "-c", "sleep 10; exec /bin/tail /dev/zero"}, When: "test.memhog"}

var busyboxPayloads = map[string]Payload{
	"fw": {Caps: caps("CAP_NET_ADMIN", "CAP_NET_RAW"),
		Files: []File{page("fw", "firewall")},
		Services: []Service{
			// Loopback only: fw exposes nothing of its own inside the stack.
			{Name: "status", Command: []string{"/bin/httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www/fw"},
				Health: httpCheck("http://127.0.0.1:8080/", "firewall")},
			memHog,
		}},
	"lb": {Caps: caps(),
		Files: []File{page("lb", "website via")},
		Services: []Service{
			{Name: "http", Command: []string{"/bin/httpd", "-f", "-p", "80", "-h", "/www/lb"},
				Health: httpCheck("http://127.0.0.1/", "website via")},
			{Name: "stats", Command: []string{"/bin/httpd", "-f", "-p", "8404", "-h", "/www/lb"},
				After: []string{"http"}, Health: tcpCheck("127.0.0.1:8404")},
			memHog,
		}},
	"web": {Caps: caps(),
		Files: []File{page("web", "web instance")},
		Services: []Service{
			listener("php-fpm", "9000", "php-fpm placeholder"),
			{Name: "http", Command: []string{"/bin/httpd", "-f", "-p", "80", "-h", "/www/web"},
				After: []string{"php-fpm"}, Health: httpCheck("http://127.0.0.1/", "web instance")},
			memHog,
		}},
	"db": {Caps: caps("CAP_IPC_LOCK", "CAP_SYS_RESOURCE"),
		Services: []Service{
			listener("mariadb", "3306", "mysql placeholder"),
			listener("redis", "6379", "redis placeholder", "mariadb"),
			listener("memcached", "11211", "memcached placeholder"),
			memHog,
		}},
	"mail": {Caps: caps(),
		Services: []Service{
			listener("postfix", "25", "220 ESMTP relay placeholder"),
			memHog,
		}},
	"acc": {Caps: caps("CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_DAC_READ_SEARCH"),
		Services: []Service{
			listener("sshd", "22", "SSH-2.0-magestack-placeholder"),
			memHog,
		}},
	"monitor": {Caps: caps(),
		Files: []File{page("monitor", "status portal")},
		Services: []Service{
			{Name: "portal", Command: []string{"/bin/httpd", "-f", "-p", "80", "-h", "/www/monitor"},
				Health: httpCheck("http://127.0.0.1/", "status portal")},
			memHog,
		}},
}

// payloads is indexed by image name, then role.
var payloads = map[string]map[string]Payload{
	"busybox": busyboxPayloads,
}

// BuiltinImage is the test image carried in the initramfs itself: small
// busybox stand-ins for every role, run only where a stack file names it
// (`image: busybox`), for fw (whose real work, nftables and WireGuard, the
// host does), and where a test hook asks for it.
const BuiltinImage = "busybox"

// ImageFor is the image a role runs: the one its stack file entry names,
// else fallback when set (the magestack.test.image hook), else the role's
// real image (the Debian image named after the role, images/recipes), else
// the built-in image for a role that has none.
func ImageFor(role, configured, fallback string) string {
	switch {
	case configured != "":
		return configured
	case fallback != "":
		return fallback
	}
	if _, ok := payloads[role][role]; ok {
		return role
	}
	return BuiltinImage
}
