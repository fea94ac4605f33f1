// Package services describes what runs inside each node role: its services,
// how they are health-checked, the ports it serves and the ports of other
// roles it needs. The firewall's role-to-role allow-list and the VPN's
// management ports are derived from here, so a role's network exposure is
// declared in exactly one place.
package services

import "slices"

// Port is a transport port.
type Port struct {
	Proto string // "tcp" or "udp"
	Port  uint16
	Name  string // what it is, e.g. "http"
}

// Need says that a role connects to another role on some ports.
type Need struct {
	Role  string
	Ports []Port
	// Caches adds every Redis and Memcached port of the stack's db
	// (stackfile.Stack.CachePorts): how many instances there are, and on
	// which ports, is the stack file's to say.
	Caches bool
}

// Role is the definition of one node role.
type Role struct {
	Name string
	// Public ports are reachable from the internet (through fw's DNAT).
	Public []Port
	// Management ports are reachable from the VPN subnet only.
	Management []Port
	// Needs lists what this role may connect to inside the stack.
	Needs []Need
	// StartAfter lists the roles whose instances on the same host must be
	// ready before this role's start: those it cannot serve without (web
	// without its database, lb without a web to send to). Every other role
	// starts at once, in parallel.
	StartAfter []string
	// OnSitePath marks the roles a website request goes through (lb, web
	// and the db behind it): a takeover starts them first, and the
	// others once they are up, so on a host's few CPUs the site is back
	// before monitoring or mail.
	OnSitePath bool
	// KeepsRoot keeps the role's writable root layer on its volume
	// (/data/.root) instead of a tmpfs wiped at every start: what people
	// install in acc stays, through restarts and failovers.
	KeepsRoot bool
}

func tcp(port uint16, name string) Port { return Port{Proto: "tcp", Port: port, Name: name} }

var (
	smtp  = tcp(25, "smtp")
	ssh   = tcp(22, "ssh")
	mysql = tcp(3306, "mysql")
)

// catalog is indexed by role name. Every role may relay mail through mail.
var catalog = map[string]Role{
	"fw": {Name: "fw", Needs: []Need{{Role: "mail", Ports: []Port{smtp}}}},
	"lb": {Name: "lb", StartAfter: []string{"web"}, OnSitePath: true,
		Public:     []Port{tcp(80, "http"), tcp(443, "https")},
		Management: []Port{tcp(8404, "haproxy-stats")},
		Needs:      []Need{{Role: "web", Ports: []Port{tcp(80, "http")}}, {Role: "mail", Ports: []Port{smtp}}}},
	"web": {Name: "web", StartAfter: []string{"db"}, OnSitePath: true,
		Needs: []Need{{Role: "db", Ports: []Port{mysql}, Caches: true}, {Role: "mail", Ports: []Port{smtp}}}},
	"db": {Name: "db", OnSitePath: true,
		Management: []Port{mysql},
		Needs:      []Need{{Role: "mail", Ports: []Port{smtp}}}},
	"mail": {Name: "mail"},
	"acc": {Name: "acc", KeepsRoot: true,
		Management: []Port{ssh},
		Needs: []Need{
			{Role: "web", Ports: []Port{tcp(80, "http"), ssh}},
			{Role: "db", Ports: []Port{mysql}, Caches: true},
			{Role: "mail", Ports: []Port{smtp}}}},
	"monitor": {Name: "monitor",
		Management: []Port{tcp(80, "portal")},
		Needs: []Need{
			{Role: "lb", Ports: []Port{tcp(80, "http"), tcp(8404, "haproxy-stats")}},
			{Role: "web", Ports: []Port{tcp(80, "http")}},
			{Role: "db", Ports: []Port{mysql}},
			{Role: "mail", Ports: []Port{smtp}},
			{Role: "acc", Ports: []Port{ssh}}}},
}

// Lookup returns the definition of role name.
func Lookup(name string) (Role, bool) {
	r, ok := catalog[name]
	return r, ok
}

// Names returns every role name, sorted.
func Names() []string {
	out := make([]string, 0, len(catalog))
	for n := range catalog {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
