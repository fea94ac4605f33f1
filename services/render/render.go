// Package render turns the stack file into the configuration files of a
// role's real services (haproxy.cfg with the current web instances, nginx
// vhosts and PHP-FPM pools, MariaDB with its generated credentials, Redis
// and Memcached instances, Postfix relay, sshd with the users' keys, the
// monitor's status page). It runs on the host when a role starts: the
// files it adds to the role's payload are written into the role's
// writable layer by role-init, before any service starts.
package render

import (
	"bytes"
	"embed"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"magestack/init/health"
	"magestack/init/stackfile"
	"magestack/services"
)

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Option("missingkey=error").Funcs(template.FuncMap{
	"join": strings.Join,
}).ParseFS(templateFS, "templates/*.tmpl"))

// DBName and DBUser are the application database and its account that
// web instances use on db1.i.
const (
	DBName = "app"
	DBUser = "app"
)

// DefaultSite is served when the stack file lists no sites.
var DefaultSite = stackfile.Site{Group: "default", Name: "default", Domains: []string{"_"}}

// DocRoot is a site's document root in MageStack's layout.
func DocRoot(s stackfile.Site) string {
	return "/microcloud/domains/" + s.Group + "/domains/" + s.Name + "/http"
}

// AdminSocket is HAProxy's runtime API inside lb: services/lbsync adds and
// removes web servers through it when web instances come or go.
const AdminSocket = "/run/haproxy/admin.sock"

// WebBackend names the HAProxy section holding lb's web servers: "web_pool"
// (Varnish's backend) when lb runs Varnish, else "web".
func WebBackend(stack *stackfile.Stack) string {
	if stack.Roles["lb"].Settings["varnish"] == "true" {
		return "web_pool"
	}
	return "web"
}

// Backend is one web instance behind lb.
type Backend struct {
	Name string
	Addr netip.Addr
}

// Cache is one Redis or Memcached instance in db.
type Cache struct {
	Name     string
	Port     uint16
	MemoryMB uint64
	Password string
}

// data is what the templates see.
type data struct {
	Stack    *stackfile.Stack
	Inst     stackfile.Instance
	Internal string
	Backends []Backend
	Varnish  bool
	// WebBackend and AdminSocket tie the template to services/lbsync.
	WebBackend  string
	AdminSocket string
	Sites       []site
	DBHost      string
	DBName      string
	DBUser      string
	DBPass      string
	Redis       []Cache
	Memcached   []Cache
	Relayhost   string
	Instances   []stackfile.Instance
	Settings    map[string]string
	Site        site // the site a per-site file is rendered for
}

type site struct {
	stackfile.Site
	Root    string
	Base    string // /microcloud/domains/<group>/domains/<name>
	Allow   []string
	Default bool
}

// file renders template name into a payload file at path.
func file(path, name string, mode uint32, d *data) (services.File, error) {
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, name, d); err != nil {
		return services.File{}, fmt.Errorf("render %s for %s: %w", path, d.Inst.Name, err)
	}
	return services.File{Path: path, Mode: fileMode(mode), Content: escape(b.String())}, nil
}

// escape makes rendered text pass role-init's own template step
// unchanged: File.Content is a template over the instance.
func escape(s string) string { return strings.ReplaceAll(s, "{{", `{{"{{"}}`) }

// Payload returns p with the configuration of inst's services rendered
// from stack added (and, for db, one service per Redis and Memcached
// instance). Roles running other images (busybox) are returned unchanged.
func Payload(p services.Payload, stack *stackfile.Stack, inst stackfile.Instance, sec Secrets) (services.Payload, error) {
	return PayloadWith(p, stack, inst, Options{Secrets: sec})
}

// Options of PayloadWith.
type Options struct {
	// Secrets keeps generated credentials. Required.
	Secrets Secrets
	// Maintenance reports whether a site is in maintenance mode (the
	// operator's switch, kept by PID 1): a web instance starting then gets
	// the site's maintenance flag at once. nil: none is.
	Maintenance func(stackfile.Site) bool
}

// PayloadWith is Payload with the operator's state taken into account.
func PayloadWith(p services.Payload, stack *stackfile.Stack, inst stackfile.Instance, o Options) (services.Payload, error) {
	sec := o.Secrets
	if p.Image != inst.Role {
		return p, nil
	}
	role := stack.Roles[inst.Role]
	insts, err := stack.Instances()
	if err != nil {
		return p, err
	}
	d := &data{Stack: stack, Inst: inst, Internal: stack.Internal.String(), Instances: insts, Settings: role.Settings,
		DBHost: "db1.i", DBName: DBName, DBUser: DBUser}
	if d.Settings == nil {
		d.Settings = map[string]string{}
	}
	var files []services.File
	add := func(path, tmpl string, mode uint32) error {
		f, err := file(path, tmpl, mode, d)
		if err == nil {
			files = append(files, f)
		}
		return err
	}
	needsDB := inst.Role == "web" || inst.Role == "db"
	if needsDB {
		if d.DBPass, err = sec.Secret("db-" + DBUser); err != nil {
			return p, err
		}
	}
	switch inst.Role {
	case "lb":
		for _, in := range insts {
			if in.Role == "web" {
				d.Backends = append(d.Backends, Backend{Name: in.Name, Addr: in.Addr})
			}
		}
		d.Varnish = role.Settings["varnish"] == "true"
		d.WebBackend, d.AdminSocket = WebBackend(stack), AdminSocket
		pemText, err := certificate(stack, sec)
		if err != nil {
			return p, err
		}
		files = append(files, services.File{Path: "/etc/haproxy/certs/site.pem", Mode: 0o600, Content: escape(pemText)})
		err = firstErr(add("/etc/haproxy/haproxy.cfg", "haproxy.cfg.tmpl", 0o644),
			add("/etc/varnish/magestack.vcl", "varnish.vcl.tmpl", 0o644))
		if err != nil {
			return p, err
		}
	case "web":
		d.Sites = sites(stack)
		if err := d.addCaches(sec); err != nil {
			return p, err
		}
		err = firstErr(add("/etc/nginx/nginx.conf", "nginx-web.conf.tmpl", 0o644),
			add("/etc/php/8.2/fpm/php-fpm.conf", "php-fpm.conf.tmpl", 0o644),
			add("/etc/magestack/db.php", "db.php.tmpl", 0o644),
			add("/etc/magestack/caches.php", "caches.php.tmpl", 0o644))
		if err != nil {
			return p, err
		}
		for i, s := range d.Sites {
			sd := *d
			sd.Site = s
			f, err := file(fmt.Sprintf("%s/%d.html", defaultMaintenanceDir, i), "maintenance.html.tmpl", 0o644, &sd)
			if err != nil {
				return p, err
			}
			files = append(files, f)
			if o.Maintenance != nil && o.Maintenance(s.Site) {
				files = append(files, services.File{Path: MaintenanceFlag(s.Site), Mode: 0o644, Content: "on\n"})
			}
			if s.Default {
				if err := add(s.Root+"/index.php", "index.php.tmpl", 0o644); err != nil {
					return p, err
				}
			}
		}
	case "db":
		if err := d.addCaches(sec); err != nil {
			return p, err
		}
		if err := firstErr(add("/etc/mysql/magestack.cnf", "mariadb.cnf.tmpl", 0o644),
			add("/etc/mysql/magestack-init.sql", "mariadb-init.sql.tmpl", 0o600)); err != nil {
			return p, err
		}
		for _, c := range d.Redis {
			cd := *d
			cd.Redis = []Cache{c}
			f, err := file("/etc/redis/"+c.Name+".conf", "redis.conf.tmpl", 0o640, &cd)
			if err != nil {
				return p, err
			}
			files = append(files, f)
			port := strconv.Itoa(int(c.Port))
			p.Services = append(p.Services, services.Service{Name: "redis-" + c.Name,
				Command: []string{"/bin/sh", "-c", "mkdir -p /data/redis/" + c.Name + " && chown redis:redis /data/redis/" + c.Name + " /etc/redis/" + c.Name + ".conf" +
					" && exec setpriv --reuid=redis --regid=redis --init-groups /usr/bin/redis-server /etc/redis/" + c.Name + ".conf"},
				Health: execCheck("/bin/sh", "-c", "redis-cli -p "+port+" --no-auth-warning -a \"$(cat /etc/redis/"+c.Name+".pass)\" ping | grep -qx PONG")})
			files = append(files, services.File{Path: "/etc/redis/" + c.Name + ".pass", Mode: 0o600, Content: escape(c.Password + "\n")})
		}
		for _, c := range d.Memcached {
			mem := c.MemoryMB
			if mem == 0 {
				mem = 64
			}
			port := strconv.Itoa(int(c.Port))
			p.Services = append(p.Services, services.Service{Name: "memcached-" + c.Name,
				Command: []string{"/usr/bin/memcached", "-u", "memcache", "-l", "0.0.0.0", "-p", port, "-U", "0", "-m", strconv.FormatUint(mem, 10)},
				Health:  tcp("127.0.0.1:" + port)})
		}
	case "mail":
		d.Relayhost = role.Settings["relayhost"]
		if err := firstErr(add("/etc/postfix/main.cf", "postfix-main.cf.tmpl", 0o644),
			add("/etc/postfix/master.cf", "postfix-master.cf.tmpl", 0o644)); err != nil {
			return p, err
		}
	case "acc":
		if err := add("/etc/ssh/sshd_config", "sshd_config.tmpl", 0o644); err != nil {
			return p, err
		}
		files = append(files, accUsers(stack.Users)...)
	case "monitor":
		if err := firstErr(add("/etc/nginx/nginx.conf", "nginx-monitor.conf.tmpl", 0o644),
			add("/srv/status/index.html", "status.html.tmpl", 0o644)); err != nil {
			return p, err
		}
	}
	p.Files = append(slices.Clone(p.Files), files...)
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("render %s: %w", inst.Name, err)
	}
	return p, nil
}

// certificate is the stack's own, else a self-signed one for its domains
// and public address, made once.
func certificate(stack *stackfile.Stack, sec Secrets) (string, error) {
	if t := stack.Public.TLS; t != nil {
		return strings.TrimSpace(t.Cert) + "\n" + strings.TrimSpace(t.Key) + "\n", nil
	}
	var hosts []string
	for _, s := range stack.Sites {
		hosts = append(hosts, s.Domains...)
	}
	if stack.Public.VIP.IsValid() {
		hosts = append(hosts, stack.Public.VIP.Addr().String())
	}
	hosts = append(hosts, "localhost")
	cert, key, err := sec.SelfSigned("lb-tls", hosts)
	if err != nil {
		return "", err
	}
	return cert + key, nil
}

func sites(stack *stackfile.Stack) []site {
	in := stack.Sites
	def := len(in) == 0
	if def {
		in = []stackfile.Site{DefaultSite}
	}
	var out []site
	for i, s := range in {
		st := site{Site: s, Root: DocRoot(s), Base: strings.TrimSuffix(DocRoot(s), "/http"), Default: def && i == 0}
		for _, a := range s.MaintenanceAllow {
			st.Allow = append(st.Allow, a.String())
		}
		out = append(out, st)
	}
	return out
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func fileMode(m uint32) os.FileMode { return os.FileMode(m) }

func execCheck(argv ...string) *health.Check {
	return &health.Check{Exec: argv, Interval: 3 * time.Second, Timeout: 5 * time.Second, Retries: 3, StartPeriod: 3 * time.Minute}
}

func tcp(addr string) *health.Check {
	return &health.Check{TCP: addr, Interval: 2 * time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: 3 * time.Minute}
}

// defaultMaintenanceDir holds the rendered maintenance page of each site
// (by its index in the stack file), served when the site has none of its
// own in maintenance/index.html.
const defaultMaintenanceDir = "/etc/magestack/maintenance"

// FuncWith adapts PayloadWith to roleenv.Options.Render.
func FuncWith(o Options) func(services.Payload, *stackfile.Stack, stackfile.Instance) (services.Payload, error) {
	return func(p services.Payload, stack *stackfile.Stack, inst stackfile.Instance) (services.Payload, error) {
		return PayloadWith(p, stack, inst, o)
	}
}

// Func adapts Payload to roleenv.Options.Render, with secrets kept by sec.
func Func(sec Secrets) func(services.Payload, *stackfile.Stack, stackfile.Instance) (services.Payload, error) {
	return func(p services.Payload, stack *stackfile.Stack, inst stackfile.Instance) (services.Payload, error) {
		return Payload(p, stack, inst, sec)
	}
}

// addCaches fills in db's Redis and Memcached instances, each Redis with its
// own password, for db's configs and the file web reads them from.
func (d *data) addCaches(sec Secrets) error {
	for _, c := range d.Stack.RedisInstances() {
		pass, err := sec.Secret("redis-" + c.Name)
		if err != nil {
			return err
		}
		d.Redis = append(d.Redis, Cache{Name: c.Name, Port: c.Port, MemoryMB: uint64(c.Memory) >> 20, Password: pass})
	}
	for _, c := range d.Stack.MemcachedInstances() {
		d.Memcached = append(d.Memcached, Cache{Name: c.Name, Port: c.Port, MemoryMB: uint64(c.Memory) >> 20})
	}
	return nil
}

// accUsers are acc's account files: /etc/magestack/users (name and uid per
// line, which acc's start script turns into accounts with homes on its
// volume), each user's own authorized_keys, and root's, which holds the
// admins' keys only. Every key line ends with its owner's name, so sshd's
// log says whose key logged in.
func accUsers(users []stackfile.User) []services.File {
	var list, root strings.Builder
	var files []services.File
	for _, u := range users {
		fmt.Fprintf(&list, "%s %d\n", u.Name, u.UID())
		var keys strings.Builder
		for _, k := range u.Keys {
			line := strings.TrimSpace(k) + " " + u.Name + "\n"
			keys.WriteString(line)
			if u.Admin {
				root.WriteString(line)
			}
		}
		files = append(files, services.File{Path: "/etc/magestack/authorized_keys/" + u.Name, Mode: 0o644, Content: escape(keys.String())})
	}
	files = append(files,
		services.File{Path: "/etc/magestack/authorized_keys/root", Mode: 0o644, Content: escape(root.String())},
		services.File{Path: "/etc/magestack/users", Mode: 0o644, Content: escape(list.String())})
	return files
}
