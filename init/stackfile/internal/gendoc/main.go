// Command gendoc writes docs/stackfile.md, the stack file reference, from
// the Go types of package stackfile and their doc comments, so the
// reference cannot drift from what the parser accepts. Run through
// `go generate ./init/stackfile`; a test fails when the file is stale.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"magestack/init/stackfile"
)

func main() {
	dir := flag.String("dir", ".", "directory of package stackfile")
	out := flag.String("out", "../../docs/stackfile.md", "file to write")
	flag.Parse()
	doc, err := generate(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, doc, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}

// typeOrder is the order the reference presents the stack file's types.
var typeOrder = []string{"Stack", "Host", "PairLink", "Fence", "Public", "TLS", "VPN", "VPNPeer", "Cluster", "ConfigSource", "Role", "Cache", "User", "Site"}

// generate renders the reference from the Go files in dir.
func generate(dir string) ([]byte, error) {
	fset := token.NewFileSet()
	structs := map[string]*ast.StructType{}
	docs := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if n := e.Name(); strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		f, err := parser.ParseFile(fset, dir+"/"+n, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				structs[ts.Name.Name] = st
				d := ts.Doc.Text()
				if d == "" {
					d = gd.Doc.Text()
				}
				docs[ts.Name.Name] = d
			}
		}
	}

	var b bytes.Buffer
	b.WriteString(header)
	if err := checkExamples(); err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, "## A small stack\n\n```yaml\n%s```\n\n## A two-host stack using most fields\n\n```yaml\n%s```\n\n", smallExample, fullExample)
	b.WriteString("## Fields\n\nKeys are lower case. A key not listed here is an error (with a \"did you mean\" hint). Optional keys may be left out; the defaults are given in the descriptions.\n\n")
	for _, name := range typeOrder {
		st, ok := structs[name]
		if !ok {
			return nil, fmt.Errorf("type %s not found in %s", name, dir)
		}
		title := name
		if name == "Stack" {
			title = "Stack (the top level of the file)"
		}
		fmt.Fprintf(&b, "### %s\n\n%s\n", title, paragraph(docs[name]))
		b.WriteString("| key | type | required | description |\n|---|---|---|---|\n")
		for _, f := range st.Fields.List {
			if len(f.Names) == 0 || !f.Names[0].IsExported() || f.Tag == nil {
				continue
			}
			tag, _ := strconv.Unquote(f.Tag.Value)
			key, _, _ := strings.Cut(reflect.StructTag(tag).Get("yaml"), ",")
			if key == "-" {
				continue
			}
			req := "no"
			if strings.Contains(f.Doc.Text()+f.Comment.Text(), "Required.") {
				req = "yes"
			}
			desc := oneLine(f.Doc.Text() + " " + f.Comment.Text())
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", key, typeName(f.Type), req, desc)
		}
		b.WriteString("\n")
	}

	b.WriteString("## Role defaults\n\nA role left out of `roles` runs with these settings; a role that is written takes each omitted field from here.\n\n")
	b.WriteString("| role | count | cpu | memory | pids | volume |\n|---|---|---|---|---|---|\n")
	defs := stackfile.RoleDefaults()
	for _, r := range stackfile.RoleNames() {
		d := defs[r]
		vol := "none"
		if d.Volume != 0 {
			vol = d.Volume.String()
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %d | %s |\n", r, d.Count, d.CPUWeight, d.Memory, d.Pids, vol)
	}
	b.WriteString("\n")
	b.WriteString(rules)
	fmt.Fprintf(&b, "## The embedded default stack\n\nWhat a host runs when no config source is given (`make run` boots it):\n\n```yaml\n%s```\n", stackfile.DefaultYAML())
	return b.Bytes(), nil
}

// checkExamples refuses to document examples the parser rejects.
func checkExamples() error {
	for name, ex := range map[string]string{"small example": smallExample, "full example": fullExample} {
		if _, err := stackfile.Parse(name, []byte(ex)); err != nil {
			return fmt.Errorf("documented %s does not parse: %w", name, err)
		}
	}
	return nil
}

func typeName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.Ident:
		switch t.Name {
		case "string":
			return "string"
		case "int":
			return "integer"
		case "uint16":
			return "integer 0..65535"
		case "Size":
			return "[size](#values)"
		case "Duration":
			return "[duration](#values)"
		}
		return "[" + t.Name + "](#" + strings.ToLower(t.Name) + ")"
	case *ast.SelectorExpr:
		switch t.Sel.Name {
		case "Prefix":
			return "[prefix](#values)"
		case "Addr":
			return "[address](#values)"
		}
		return t.Sel.Name
	case *ast.StarExpr:
		return typeName(t.X)
	case *ast.ArrayType:
		return "list of " + typeName(t.Elt)
	case *ast.MapType:
		return "map of " + typeName(t.Key) + " to " + typeName(t.Value)
	}
	return fmt.Sprintf("%T", e)
}

var spaces = regexp.MustCompile(`\s+`)

func oneLine(s string) string {
	s = strings.TrimSpace(spaces.ReplaceAllString(s, " "))
	// Markdown would take <name> for an HTML tag and hide it.
	return strings.NewReplacer("|", "\\|", "<", "&lt;", ">", "&gt;").Replace(s)
}

func paragraph(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return oneLine(s) + "\n"
}

const header = `# The stack file

<!-- Generated by init/stackfile/internal/gendoc from the Go types; do not edit.
     Run: go generate ./init/stackfile -->

One YAML document describes a whole magestack stack: its hosts, addresses, VPN, witness and
roles. Hosts fetch it from a config source (a path, an http(s) URL or a Git repository), validate
it, apply only what changed, and keep the last good revision. A file that fails validation never
replaces the running one.

Check a file before committing it:

    magestack config validate stack.yaml      # exit 1 and one line per problem
    magestack config show stack.yaml          # the stack with every default filled in
    magestack config diff old.yaml new.yaml   # which instances a change touches

`

const smallExample = `stack: shop1
hosts:
  - {name: dh1, mac: "52:54:00:12:34:56", address: 192.0.2.11/24, gateway: 192.0.2.1}
public: {vip: 192.0.2.50/24}
roles:
  web: {count: 2}
`

const fullExample = `stack: shop1
hosts:
  - name: dh1
    mac: "52:54:00:00:00:01"
    address: 192.0.2.11/24
    gateway: 192.0.2.1
    pair: dh2
    pairlink: {mac: "52:54:00:00:01:01", address: 10.9.0.1/24}
    fence: {type: redfish, address: "https://10.0.0.21", user: fence, password: secret}
  - name: dh2
    mac: "52:54:00:00:00:02"
    pair: dh1                    # no address: DHCP
    pairlink: {mac: "52:54:00:00:01:02", address: 10.9.0.2/24}
    fence: {type: ipmi, address: "10.0.0.22:623", user: fence, password: secret}
public:
  vip: 192.0.2.50/24
  allow: [203.0.113.0/24, 198.51.100.7/32]
  ratelimit: 200
internal: 172.16.0.0/24
pairnet: 10.9.0.0/24
vpn:
  port: 51820
  subnet: 10.8.0.0/24
  peers:
    - {name: alice, key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
    - {name: bob, key: "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=", address: 10.8.0.20}
witness: 10.0.0.5:7700
cluster: {heartbeat: 100ms, suspect: 300ms, dead: 1s, holddown: 2m}
config:
  source: "git+https://git.example.net/stacks.git#main:shop1.yaml"
  poll: 30s
roles:
  web: {count: 3, memory: 1GiB, settings: {php.memory_limit: 512M}}
  db:
    volume: 20GiB
    redis: [{name: sessions, memory: 256MiB}, {name: cache, memory: 1GiB}]
    memcached: [{name: fpc}]
  monitor: {count: 0}
users:
  - name: alice
    keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMx4iXq9wmXQ0dN4c2Tfcr7iHZ+gUM3D0lEqlkbQ3o6D alice@laptop"]
sites:
  - {group: shop1, name: www, domains: [www.shop1.example, shop1.example], maintenanceallow: [203.0.113.0/24]}
  - {group: shop1, name: admin, domains: [admin.shop1.example]}
`

const rules = `## Values

| kind | written as |
|---|---|
| prefix | an address with prefix length: ` + "`192.0.2.11/24`, `fd00::/64`" + `. Subnets (internal, pairnet, vpn.subnet, public.allow) must have no host bits set. |
| address | an IPv4 or IPv6 address: ` + "`10.8.0.9`" + ` |
| size | a whole number with an optional unit: KiB, MiB, GiB, TiB (binary), K, M, G, T (decimal), B: ` + "`512MiB`, `20GiB`" + ` |
| duration | Go duration syntax: ` + "`100ms`, `1s`, `2m`, `1h30m`" + ` |
| MAC | six hex bytes: ` + "`\"52:54:00:12:34:56\"`" + ` (quote it) |
| integer | decimal, ` + "`0x`" + ` hex or ` + "`0o`" + ` octal; a quoted number is a string, not an integer |

YAML anchors and aliases work; merge keys (` + "`<<`" + `) do not. A file holds one document of at most 1 MiB.

## Config sources

` + "`config.source`" + `, and the kernel command line's ` + "`magestack.config=`" + `, take:

| source | example |
|---|---|
| a path (inside the initramfs or on disk) | ` + "`/etc/magestack/stack.yaml`" + ` |
| an http(s) URL (TLS verified against the system roots) | ` + "`https://config.example.net/shop1.yaml`" + ` |
| a Git repository at a ref, with the file's path | ` + "`git+https://git.example.net/stacks.git#main:shop1.yaml`" + ` |
| the same over file:// or ssh:// (host key checked against known_hosts) | ` + "`git+file:///srv/git/stacks.git#main:shop1.yaml`, `git+ssh://git@git.example.net/stacks.git#v3:shop1.yaml`" + ` |

In a Git source the fragment is ` + "`ref:path`" + `: the ref is a branch, tag or commit hash (empty: the repository's
default branch) and the path defaults to ` + "`stack.yaml`" + `. The revision of a Git source is its commit hash;
of any other source, the SHA-256 of the file. With ` + "`config.signedby`" + `, only commits signed by one of the
listed OpenPGP keys are accepted.

## Validation

Every problem is reported, not just the first, one per line, as
` + "`file:line:column: field.path: message`" + ` — for example
` + "`stack.yaml:12:5: roles.web.count: must be ≥ 0, got -1`" + `. List items are numbered from 0
(` + "`hosts[1].mac`" + `). Problems with a defaulted field point at the nearest field written in the file.

Decoding: unknown keys (with the closest valid key as a hint), keys written twice, values of the wrong
type (with the type expected), YAML syntax errors, more than one document.

Meaning:
- ` + "`stack`" + ` is required and is a DNS label; at least one and at most 19 hosts.
- Hosts: names are unique DNS labels; MACs are valid and unique across hosts and pair links; addresses
  are unique and are host addresses (not the subnet's network address); a gateway needs a static
  address inside whose subnet it lies.
- Pairs: the peer exists, is not the host itself, and names the host back as its pair.
- Fences: type is redfish, ipmi or qmp; the address is given.
- internal and public.allow are IPv4 for now (the firewall builds IPv4 rules for them).
- Subnets: internal, vpn.subnet, pairnet and the public subnet (the VIP's and hosts' static
  addresses) do not overlap one another; the internal subnet is large enough for every host and
  instance address (the default role layout needs at least a /25, more than 28 web instances a /24).
- ` + "`public.vip`" + ` lies inside every static host address's subnet and is none of the hosts' addresses.
- VPN: port 1..65535; the subnet is IPv4, a /30 or larger; keys are WireGuard keys (32 bytes, base64);
  peer names and keys are unique. fw takes the subnet's first address; a peer without an address gets
  the next free one in list order, and an explicit address must lie inside the subnet, be neither its
  network nor broadcast address, and not be taken by fw or an earlier peer.
- ` + "`witness`" + ` is host:port with a port in 1..65535.
- Cluster timings: heartbeat < suspect < dead, none negative.
- ` + "`config.source`" + ` has a supported form; ` + "`config.poll`" + ` is at least 1s; signedby entries are armored
  OpenPGP public keys.
- Roles: only fw, mail, db, web, lb, acc, monitor; count ≥ 0, at most 150 for web and at most 1 for
  every other role (they are singletons of the stack; the pair peer holds the standby); cpu 1..10000;
  memory at least 16MiB; pids ≥ 0; hosts named in ` + "`roles.X.hosts`" + ` exist.
- Redis and Memcached instances: only in db; names unique per kind; ports unique and not 3306.
- public.tls: cert and key are both given and form a PEM pair.
- Sites: group and name are directory names, group/name unique; at least one domain each, every
  domain a lower-case host name (a leading ` + "`*.`" + ` allowed) served by one site only.
- Users: names are login names and unique; keys are OpenSSH public keys.

`
