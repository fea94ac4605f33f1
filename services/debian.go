package services

import (
	"time"

	"magestack/init/health"
)

// The real role images (images/recipes, built by images/cmd/mkimages): each
// image is named after its role and runs Debian's own daemons in the
// foreground. The configuration files they read are rendered from the
// stack file on the host when the role starts (services/render appends
// them, with the stack-dependent services such as one Redis per
// roles.db.redis entry); what is here holds for every stack.

// realStart is how long a real daemon's failed probes are ignored after it
// starts: MariaDB's first initialisation or Postfix under an emulated CPU
// (QEMU TCG) take tens of seconds, and a restart then would never let them
// finish. A daemon is ready at its first passing probe, so this never
// delays a healthy start.
const realStart = 3 * time.Minute

func execCheck(argv ...string) *health.Check {
	return &health.Check{Exec: argv, Interval: 3 * time.Second, Timeout: 5 * time.Second, Retries: 3, StartPeriod: realStart}
}

// firstInstallStart gives a daemon that creates its data on first start
// (mariadb-install-db: seconds on hardware, minutes under a loaded TCG
// guest) longer before failed probes count: a restart mid-install would
// start it over and never finish.
func firstInstallStart(c *health.Check) *health.Check {
	c.StartPeriod = 10 * time.Minute
	return c
}

func realHTTP(url, body string) *health.Check {
	return &health.Check{HTTP: url, BodyContains: body, Interval: 2 * time.Second, Timeout: 3 * time.Second, Retries: 3, StartPeriod: realStart}
}

func realTCP(addr string) *health.Check {
	return &health.Check{TCP: addr, Interval: 2 * time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: realStart}
}

// script is a start wrapper: prepares runtime directories on the role's
// tmpfs /run and its /data volume, then execs the daemon in the
// foreground so supervision sees the daemon itself.
func script(path, body string) File {
	return File{Path: path, Mode: 0o755, Content: "#!/bin/sh\nset -eu\n" + body}
}

const libexec = "/usr/libexec/magestack/"

var debianPayloads = map[string]Payload{
	"lb": {Caps: caps(),
		Files: []File{script(libexec+"haproxy", `mkdir -p /run/haproxy
haproxy -c -q -f /etc/haproxy/haproxy.cfg
exec /usr/sbin/haproxy -W -db -f /etc/haproxy/haproxy.cfg
`), script(libexec+"varnish", `mkdir -p /tmp/varnish
exec /usr/sbin/varnishd -F -a 127.0.0.1:6081 -f /etc/varnish/magestack.vcl -s malloc,64m -n /tmp/varnish
`)},
		Services: []Service{
			// Varnish runs only when roles.lb.settings.varnish is "true";
			// the rendered haproxy.cfg then sends requests through it.
			{Name: "varnish", Command: []string{"/bin/sh", libexec + "varnish"}, When: "varnish",
				Health: realTCP("127.0.0.1:6081")},
			{Name: "haproxy", Command: []string{"/bin/sh", libexec + "haproxy"}, StopSignal: "SIGUSR1", StopGrace: 10 * time.Second,
				Health: realHTTP("http://127.0.0.1:8404/stats", "HAProxy")},
		}},
	"web": {Caps: caps(),
		Files: []File{script(libexec+"php-fpm", `mkdir -p /run/php
exec /usr/sbin/php-fpm8.2 --nodaemonize --fpm-config /etc/php/8.2/fpm/php-fpm.conf
`), script(libexec+"nginx", `mkdir -p /run/nginx /var/lib/nginx /var/log/nginx
nginx -t -q -c /etc/nginx/nginx.conf
exec /usr/sbin/nginx -c /etc/nginx/nginx.conf -g 'daemon off;'
`)},
		Services: []Service{
			{Name: "php-fpm", Command: []string{"/bin/sh", libexec + "php-fpm"}, StopSignal: "SIGQUIT",
				Health: realTCP("127.0.0.1:9000")},
			// The ping goes nginx -> FastCGI -> PHP-FPM: healthy means the
			// whole PHP path answers.
			{Name: "nginx", Command: []string{"/bin/sh", libexec + "nginx"}, After: []string{"php-fpm"}, StopSignal: "SIGQUIT",
				Health: realHTTP("http://127.0.0.1/magestack-fpm-ping", "pong")},
		}},
	"db": {Caps: caps("CAP_IPC_LOCK", "CAP_SYS_RESOURCE"),
		Files: []File{script(libexec+"mariadb", `mkdir -p /run/mysqld /data/mysql
# mariadbd reads its init file after dropping to mysql.
chown mysql:mysql /run/mysqld /data/mysql /etc/mysql/magestack-init.sql
if [ ! -d /data/mysql/mysql ]; then
	# Only a complete install becomes the data directory: a start killed
	# part-way through begins afresh instead of finding a half-made one.
	# Whatever an unfinished directory held is kept aside, never deleted.
	rm -rf /data/mysql.installing
	mkdir /data/mysql.installing && chown mysql:mysql /data/mysql.installing
	mariadb-install-db --user=mysql --datadir=/data/mysql.installing --skip-test-db --auth-root-authentication-method=socket >/dev/null
	if [ -n "$(ls -A /data/mysql)" ]; then
		rm -rf /data/mysql.incomplete && mv /data/mysql /data/mysql.incomplete
	else
		rmdir /data/mysql
	fi
	mv /data/mysql.installing /data/mysql
fi
exec /usr/sbin/mariadbd --defaults-file=/etc/mysql/magestack.cnf --user=mysql
`)},
		Services: []Service{
			// Redis and Memcached instances are added by services/render
			// from roles.db.redis and roles.db.memcached.
			{Name: "mariadb", Command: []string{"/bin/sh", libexec + "mariadb"}, StopGrace: 30 * time.Second,
				Health: firstInstallStart(execCheck("/usr/bin/mysqladmin", "--socket=/run/mysqld/mysqld.sock", "ping"))},
		}},
	"mail": {Caps: caps(),
		Files: []File{script(libexec+"postfix", `# The queue lives on the role's volume: mail accepted but not yet
# delivered outlives a restart and a failover. A fresh volume starts from
# the image's empty queue (its directories, owners and modes).
if [ ! -d /data/postfix/active ]; then
	rm -rf /data/postfix.new
	mkdir -p /data/postfix.new
	cp -a /var/spool/postfix/. /data/postfix.new/
	# Whatever an unfinished queue held is kept aside, never deleted.
	if [ -e /data/postfix ]; then
		rm -rf /data/postfix.incomplete && mv /data/postfix /data/postfix.incomplete
	fi
	mv /data/postfix.new /data/postfix
fi
postconf -e queue_directory=/data/postfix
postfix check
exec /usr/sbin/postfix start-fg
`)},
		Services: []Service{
			{Name: "postfix", Command: []string{"/bin/sh", libexec + "postfix"},
				Health: realTCP("127.0.0.1:25")},
		}},
	"acc": {Caps: caps("CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_DAC_READ_SEARCH"),
		Files: []File{script(libexec+"accounts", `# The stack file's users (rendered to /etc/magestack/users as "name uid"):
# an account each, home on the role's volume so it outlives restarts and
# failovers. The password field is '*' (no password, not locked: sshd
# without PAM refuses locked accounts even with a valid key).
mkdir -p /data/home
while read -r name uid; do
	[ -n "$name" ] || continue
	getent group "$name" >/dev/null || groupadd -g "$uid" "$name"
	getent passwd "$name" >/dev/null || useradd -u "$uid" -g "$uid" -d "/data/home/$name" -M -s /bin/bash -p '*' "$name"
	if [ ! -d "/data/home/$name" ]; then
		mkdir -p "/data/home/$name"
		chown "$uid:$uid" "/data/home/$name"
		chmod 0750 "/data/home/$name"
	fi
done < /etc/magestack/users
`), script(libexec+"sshd", `mkdir -p /run/sshd /data/ssh
chmod 0700 /data/ssh
# Host keys are made once and kept on the role's volume: clients keep
# trusting acc across restarts and failovers.
[ -f /data/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /data/ssh/ssh_host_ed25519_key
/bin/sh `+libexec+`accounts
/usr/sbin/sshd -t -f /etc/ssh/sshd_config
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
`)},
		Services: []Service{
			{Name: "sshd", Command: []string{"/bin/sh", libexec + "sshd"},
				Health: realTCP("127.0.0.1:22")},
		}},
	"monitor": {Caps: caps(),
		Files: []File{script(libexec+"nginx", `mkdir -p /run/nginx /var/lib/nginx /var/log/nginx
nginx -t -q -c /etc/nginx/nginx.conf
exec /usr/sbin/nginx -c /etc/nginx/nginx.conf -g 'daemon off;'
`)},
		Services: []Service{
			{Name: "portal", Command: []string{"/bin/sh", libexec + "nginx"}, StopSignal: "SIGQUIT",
				Health: realHTTP("http://127.0.0.1/", "status of stack")},
		}},
}

// A role's real image is the image named after the role.
func init() {
	for role, p := range debianPayloads {
		payloads[role] = map[string]Payload{role: p}
	}
}
