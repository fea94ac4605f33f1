package stackfile

import (
	"strings"
	"testing"
)

const diffBase = `stack: shop1
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.0.2.11/24, pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 192.0.2.12/24, pair: dh1}
public: {vip: 192.0.2.50/24, allow: [203.0.113.0/24]}
vpn: {peers: [{name: alice, key: "` + keyA + `"}]}
roles:
  web: {count: 1, settings: {php.memory_limit: 256M}}
users: [{name: al, keys: []}]
`

func mustParse(t *testing.T, doc string) *Stack {
	t.Helper()
	s, err := Parse("stack.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return s
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name     string
		old, new string // replacements applied to diffBase: "from=>to"
		want     string
	}{
		{"identical", "", "", "no changes\n"},
		{"web scaled up touches only web2", "", "web: {count: 1,=>web: {count: 2,",
			"+ instance web2 (172.16.0.101 on dh1)\n~ firewall ruleset: instances\n"},
		{"web scaled down", "web: {count: 1,=>web: {count: 3,", "",
			"- instance web3 (172.16.0.102 on dh2)\n- instance web2 (172.16.0.101 on dh1)\n~ firewall ruleset: instances\n"},
		{"role switched off", "", "roles:\n=>roles:\n  monitor: {count: 0}\n",
			"- instance monitor1 (172.16.0.70 on dh1)\n~ firewall ruleset: instances\n"},
		{"service setting", "", "256M=>512M",
			"~ instance web1: settings.php.memory_limit (update in place)\n"},
		{"setting added to two web instances", "web: {count: 1,=>web: {count: 2,", "web: {count: 1, settings: {=>web: {count: 2, settings: {opcache: on, ",
			"~ instance web1: settings.opcache (update in place)\n~ instance web2: settings.opcache (update in place)\n"},
		{"resources", "", "roles:\n=>roles:\n  db: {memory: 2GiB, cpu: 300}\n",
			"~ instance db1: cpu, memory (update in place)\n"},
		{"image and volume recreate", "", "roles:\n=>roles:\n  db: {image: mariadb-11, volume: 50GiB}\n",
			"~ instance db1: image, volume (recreate)\n"},
		{"allow-list", "", "[203.0.113.0/24]=>[198.51.100.0/24]",
			"- allow 203.0.113.0/24\n+ allow 198.51.100.0/24\n"},
		{"vip", "", "vip: 192.0.2.50/24=>vip: 192.0.2.60/24",
			"~ firewall ruleset: public.vip\n"},
		{"vpn port", "", "vpn: {=>vpn: {port: 51999, ",
			"~ firewall ruleset: vpn.port\n"},
		{"vpn peer added", "", "peers: [=>peers: [{name: bob, key: \"" + keyB + "\"}, ",
			"+ vpn peer bob\n"},
		{"vpn peer key changed", "", keyA + "=>" + keyB,
			"~ vpn peer alice\n"},
		{"vpn peer removed", "", "peers: [{name: alice, key: \"" + keyA + "\"}]=>peers: []",
			"- vpn peer alice\n"},
		{"host address", "", "192.0.2.12/24=>192.0.2.13/24",
			"~ firewall ruleset: hosts\n~ host dh2: address\n"},
		{"host fence", "", "pair: dh1}=>pair: dh1, fence: {type: qmp, address: /run/qmp.sock}}",
			"~ host dh2: fence\n"},
		{"users", "", "keys: []=>keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMx4iXq9wmXQ0dN4c2Tfcr7iHZ+gUM3D0lEqlkbQ3o6D a\"]",
			"~ instance acc1: users (update in place)\n"},
		{"internal subnet moves every instance", "", "vpn: {=>internal: 172.17.0.0/24\nvpn: {",
			"~ instance fw1: address (recreate)\n~ instance mail1: address (recreate)\n~ instance db1: address (recreate)\n~ instance web1: address (recreate)\n~ instance lb1: address (recreate)\n~ instance acc1: address (recreate)\n~ instance monitor1: address (recreate)\n~ firewall ruleset: internal, instances\n"},
		{"placement", "", "roles:\n=>roles:\n  db: {hosts: [dh2]}\n",
			"~ instance db1: host (recreate)\n~ firewall ruleset: instances\n"},
		{"a new site reloads web and lb only", "", "users:=>sites: [{group: g, name: www, domains: [www.shop1.example]}]\nusers:",
			"~ instance web1: sites (update in place)\n~ instance lb1: sites (update in place)\n"},
		// The first listed instance takes the default's port 6379: web
		// learns its name, the firewall keeps its openings.
		{"a Redis instance named in db", "", "roles:\n=>roles:\n  db: {redis: [{name: sessions}]}\n",
			"~ instance db1: redis (update in place)\n~ instance web1: caches (update in place)\n"},
		{"a second Redis instance opens its port", "roles:\n=>roles:\n  db: {redis: [{name: sessions}]}\n", "roles:\n=>roles:\n  db: {redis: [{name: sessions}, {name: cache}]}\n",
			"~ instance db1: redis (update in place)\n~ instance web1: caches (update in place)\n~ firewall ruleset: roles.db cache ports\n"},
		{"a Redis memory change keeps the firewall", "roles:\n=>roles:\n  db: {redis: [{name: sessions}]}\n", "roles:\n=>roles:\n  db: {redis: [{name: sessions, memory: 64MiB}]}\n",
			"~ instance db1: redis (update in place)\n"},
		{"cluster and config", "", "roles:\n=>cluster: {dead: 2s}\nconfig: {poll: 10s}\nroles:\n",
			"~ cluster: cluster.dead\n~ config: config.poll\n"},
	}
	apply := func(repl string) string {
		if repl == "" {
			return diffBase
		}
		from, to, _ := strings.Cut(repl, "=>")
		if !strings.Contains(diffBase, from) {
			t.Fatalf("%q not in the base stack", from)
		}
		return strings.Replace(diffBase, from, to, 1)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, new := mustParse(t, apply(tt.old)), mustParse(t, apply(tt.new))
			c, err := Diff(old, new)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.String(); got != tt.want {
				t.Errorf("diff:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestDiffFromNothingAddsEverything(t *testing.T) {
	s := Default()
	c, err := Diff(nil, s)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, in := range c.Added {
		names = append(names, in.Name)
	}
	if got := strings.Join(names, " "); got != "fw1 mail1 db1 web1 lb1 acc1 monitor1" {
		t.Errorf("added %s", got)
	}
	if len(c.HostsAdded) != 1 || c.Empty() {
		t.Errorf("changes %+v", c)
	}
}
