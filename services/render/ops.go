package render

import (
	"fmt"
	"slices"
	"strings"

	"magestack/init/stackfile"
)

// Reload says how one service's configuration is reloaded in place: the
// service's own config test runs first, inside the role, and only when it
// passes is the running service told to reload (so a refused change leaves
// it on its previous configuration).
type Reload struct {
	// Check is the service's config test; a non-zero exit refuses the
	// reload with its output.
	Check []string `json:"check"`
	// Signal, sent to the service's main process, reloads it gracefully.
	Signal string `json:"signal,omitempty"`
	// Command reloads it when the service has its own tool for that.
	Command []string `json:"command,omitempty"`
}

var nginxReload = Reload{Check: []string{"/usr/sbin/nginx", "-t", "-c", "/etc/nginx/nginx.conf"}, Signal: "SIGHUP"}

// reloads are per role and service of the Debian images (services/debian.go).
var reloads = map[string]map[string]Reload{
	"lb": {"haproxy": {Check: []string{"/usr/sbin/haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"}, Signal: "SIGUSR2"}},
	"web": {
		"nginx":   nginxReload,
		"php-fpm": {Check: []string{"/usr/sbin/php-fpm8.2", "-t", "--fpm-config", "/etc/php/8.2/fpm/php-fpm.conf"}, Signal: "SIGUSR2"},
	},
	"mail":    {"postfix": {Check: []string{"/usr/sbin/postfix", "check"}, Command: []string{"/usr/sbin/postfix", "reload"}}},
	"acc":     {"sshd": {Check: []string{"/usr/sbin/sshd", "-t", "-f", "/etc/ssh/sshd_config"}, Signal: "SIGHUP"}},
	"monitor": {"portal": nginxReload},
}

// noReload explains services that have no in-place reload.
var noReload = map[string]string{
	"mariadb": "MariaDB reads its configuration only at start",
	"varnish": "Varnish's VCL is loaded at start here",
}

// ReloadFor returns how service of role reloads its configuration, or an
// error naming the service and what to do instead.
func ReloadFor(role, service string) (Reload, error) {
	if r, ok := reloads[role][service]; ok {
		return r, nil
	}
	why := noReload[service]
	if why == "" && (strings.HasPrefix(service, "redis-") || strings.HasPrefix(service, "memcached-")) {
		why = "Redis and Memcached instances read their configuration only at start"
	}
	if why == "" {
		why = "it has no configuration reload"
	}
	return Reload{}, fmt.Errorf("service %s of role %s cannot be reloaded in place: %s (restart it instead: magestack restart <instance>/%s)", service, role, why, service)
}

// Reloadable lists the services of role that reload in place.
func Reloadable(role string) []string {
	var out []string
	for s := range reloads[role] {
		out = append(out, s)
	}
	// Sorted: checks and reloads run in a stable order.
	slices.Sort(out)
	return out
}

// Sites are the sites web instances serve: the stack file's, or the
// default site.
func Sites(stack *stackfile.Stack) []stackfile.Site {
	if len(stack.Sites) == 0 {
		return []stackfile.Site{DefaultSite}
	}
	return stack.Sites
}

// SiteBase is a site's directory: its document root, per-vhost includes
// (conf/nginx/*.conf), maintenance page (maintenance/index.html) and
// maintenance flag live below it.
func SiteBase(s stackfile.Site) string {
	return strings.TrimSuffix(DocRoot(s), "/http")
}

// MaintenanceFlag is the file whose presence inside a web instance puts the
// site in maintenance mode.
func MaintenanceFlag(s stackfile.Site) string { return SiteBase(s) + "/maintenance.flag" }

// SiteID names a site as operators do: group/name.
func SiteID(s stackfile.Site) string { return s.Group + "/" + s.Name }

// FindSite resolves what an operator typed: group/name, a site name or one
// of its domains; "" is the only site of a one-site stack.
func FindSite(stack *stackfile.Stack, arg string) (stackfile.Site, error) {
	all := Sites(stack)
	var ids []string
	for _, s := range all {
		ids = append(ids, SiteID(s))
	}
	if arg == "" {
		if len(all) == 1 {
			return all[0], nil
		}
		return stackfile.Site{}, fmt.Errorf("stack %s has %d sites: name one of %s", stack.Name, len(all), strings.Join(ids, ", "))
	}
	var found []stackfile.Site
	for _, s := range all {
		if arg == SiteID(s) || arg == s.Name || slices.Contains(s.Domains, arg) {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return stackfile.Site{}, fmt.Errorf("site %q: not in stack %s (sites: %s)", arg, stack.Name, strings.Join(ids, ", "))
	}
	return stackfile.Site{}, fmt.Errorf("site %q: ambiguous in stack %s, name it as group/name (sites: %s)", arg, stack.Name, strings.Join(ids, ", "))
}
