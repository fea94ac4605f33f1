package stackfile

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// one is the smallest valid stack; cases append to it.
const one = "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\"}\n"

const keyA = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
const keyB = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every line of the error, in order
	}{
		// Decoding: keys, types, YAML itself.
		{"unknown top key", one + "rolez: {}\n",
			[]string{`stack.yaml:4:1: rolez: unknown key (did you mean "roles"?)`}},
		{"unknown nested key", one + "roles:\n  db: {count: 1, volum: 20GiB}\n",
			[]string{`stack.yaml:5:18: roles.db.volum: unknown key (did you mean "volume"?)`}},
		{"unknown key far from any", one + "zebra: 1\n",
			[]string{`stack.yaml:4:1: zebra: unknown key (valid: stack, hosts, public, internal, pairnet, vpn, witness, cluster, config, roles, users, sites)`}},
		{"key case", one + "Internal: 10.0.0.0/24\n",
			[]string{`stack.yaml:4:1: Internal: unknown key (did you mean "internal"?)`}},
		{"int wanted", one + "roles:\n  web: {count: two}\n",
			[]string{`stack.yaml:5:16: roles.web.count: expected an integer, got "two"`}},
		{"quoted int", one + "roles:\n  web: {count: \"2\"}\n",
			[]string{`stack.yaml:5:16: roles.web.count: expected an integer, got "2"`}},
		{"uint range", one + "vpn: {port: 70000}\n",
			[]string{`stack.yaml:4:13: vpn.port: 70000 is out of range 0..65535`}},
		{"negative port", one + "vpn: {port: -1}\n",
			[]string{`stack.yaml:4:13: vpn.port: -1 is out of range 0..65535`}},
		{"prefix wanted", one + "internal: 172.16.0.1\n",
			[]string{`stack.yaml:4:11: internal: expected an address with prefix length (like 192.0.2.10/24), got "172.16.0.1"`}},
		{"addr wanted", one + "vpn: {peers: [{name: a, key: " + keyA + ", address: 10.8.0/24}]}\n",
			[]string{`stack.yaml:4:85: vpn.peers[0].address: expected an IP address, got "10.8.0/24"`}},
		{"size wanted", one + "roles:\n  db: {volume: lots}\n",
			[]string{`stack.yaml:5:16: roles.db.volume: expected a size (like 512MiB or 20GiB), got "lots"`}},
		{"duration wanted", one + "cluster: {dead: 5}\n",
			[]string{`stack.yaml:4:17: cluster.dead: expected a duration (like 100ms, 1s, 2m), got number 5`}},
		{"list wanted", "stack: s\nhosts: dh1\n",
			[]string{`stack.yaml:2:8: hosts: expected a list, got "dh1"`}},
		{"mapping wanted", one + "roles: [web]\n",
			[]string{`stack.yaml:4:8: roles: expected a mapping, got a list`}},
		{"role count written bare", one + "roles:\n  web: 2\n",
			[]string{`stack.yaml:5:8: roles.web: expected a mapping, got number 2 (write {count: 2})`}},
		{"string wanted", "stack: {a: 1}\n" + one[9:],
			[]string{`stack.yaml:1:8: stack: expected a string, got a mapping`}},
		{"duplicate key", one + "internal: 10.0.0.0/24\ninternal: 10.1.0.0/24\n",
			[]string{`stack.yaml:5:1: internal: key written twice`}},
		{"merge key", one + "base: &b {count: 1}\nroles:\n  web: {<<: *b}\n",
			[]string{`stack.yaml:4:1: base: unknown key (valid: stack, hosts, public, internal, pairnet, vpn, witness, cluster, config, roles, users, sites)`,
				`stack.yaml:6:9: roles.web: YAML merge keys (<<) are not supported: write the fields out`}},
		{"not a mapping", "- a\n- b\n",
			[]string{`stack.yaml:1:1: expected a mapping of stack fields (stack, hosts, roles, ...), got a list`}},
		{"syntax", "stack: s\nhosts: [\n",
			[]string{`stack.yaml:2: YAML syntax: did not find expected node content`}},
		{"two documents", one + "---\nstack: t\n",
			[]string{`stack.yaml:4:1: a stack file holds one YAML document; remove the second "---" section`}},
		{"many decode errors", one + "roles:\n  web: {count: x, cpu: y}\n",
			[]string{`stack.yaml:5:16: roles.web.count: expected an integer, got "x"`,
				`stack.yaml:5:24: roles.web.cpu: expected an integer, got "y"`}},

		// Semantics: the stack and its hosts.
		{"empty file", "",
			[]string{`stack.yaml: stack: the stack's name is required (stack: shop1)`, `stack.yaml: hosts: at least one host is required`}},
		{"no hosts", "stack: s\n",
			[]string{`stack.yaml:1:1: hosts: at least one host is required`}},
		{"bad stack name", "stack: Shop_1\nhosts: [{name: dh1, mac: \"52:54:00:00:00:01\"}]\n",
			[]string{`stack.yaml:1:1: stack: "Shop_1" is not a valid name: lower-case letters, digits and '-', at most 63`}},
		{"duplicate host name", one + "  - {name: dh1, mac: \"52:54:00:00:00:02\"}\n",
			[]string{`stack.yaml:4:6: hosts[1].name: host "dh1" is already defined at hosts[0]`}},
		{"missing mac", one + "  - {name: dh2}\n",
			[]string{`stack.yaml:4:5: hosts[1].mac: a MAC address is required`}},
		{"invalid mac", one + "  - {name: dh2, mac: \"52:54:00:00:00\"}\n",
			[]string{`stack.yaml:4:17: hosts[1].mac: invalid MAC "52:54:00:00:00": want six hex bytes like 52:54:00:12:34:56`}},
		{"duplicate mac", one + "  - {name: dh2, mac: \"52:54:00:00:00:01\"}\n",
			[]string{`stack.yaml:4:17: hosts[1].mac: MAC 52:54:00:00:00:01 is already used by hosts[0].mac`}},
		{"duplicate mac other case", one + "  - {name: dh2, mac: \"52:54:00:00:00:0a\", pairlink: {mac: \"52:54:00:00:00:0A\", address: 10.9.0.2/24}}\n",
			[]string{`stack.yaml:4:54: hosts[1].pairlink.mac: MAC 52:54:00:00:00:0a is already used by hosts[1].mac`}},
		{"duplicate address", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 192.0.2.11/24}\n  - {name: dh2, mac: \"52:54:00:00:00:02\", address: 192.0.2.11/24}\n",
			[]string{`stack.yaml:4:43: hosts[1].address: address 192.0.2.11 is already used by hosts[0].address`}},
		{"network address", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 192.0.2.0/24}\n",
			[]string{`stack.yaml:3:43: hosts[0].address: 192.0.2.0/24 is the network address of its subnet, not a host address`}},
		{"gateway without address", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", gateway: 192.0.2.1}\n",
			[]string{`stack.yaml:3:43: hosts[0].gateway: a gateway needs a static address (address: is empty, so the host uses DHCP)`}},
		{"gateway outside", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 192.0.2.11/24, gateway: 198.51.100.1}\n",
			[]string{`stack.yaml:3:67: hosts[0].gateway: 198.51.100.1 is outside the host's subnet 192.0.2.0/24`}},
		{"pair missing", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", pair: dh9}\n",
			[]string{`stack.yaml:3:43: hosts[0].pair: no host named "dh9" (did you mean "dh1"?)`}},
		{"pair self", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", pair: dh1}\n",
			[]string{`stack.yaml:3:43: hosts[0].pair: host "dh1" cannot pair with itself`}},
		{"pair not back", one + "  - {name: dh2, mac: \"52:54:00:00:00:02\", pair: dh1}\n",
			[]string{`stack.yaml:4:43: hosts[1].pair: peer "dh1" does not pair back (give it pair: dh2)`}},
		{"pair elsewhere", one[:len(one)-2] + ", pair: dh3}\n  - {name: dh2, mac: \"52:54:00:00:00:02\", pair: dh1}\n  - {name: dh3, mac: \"52:54:00:00:00:03\", pair: dh1}\n",
			[]string{`stack.yaml:4:43: hosts[1].pair: peer "dh1" pairs with "dh3", not back with "dh2"`}},
		{"pairlink outside pairnet", "stack: s\npairnet: 10.9.0.0/24\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", pairlink: {mac: \"52:54:00:00:01:01\", address: 10.10.0.1/24}}\n",
			[]string{`stack.yaml:4:80: hosts[0].pairlink.address: 10.10.0.1 is outside pairnet 10.9.0.0/24`}},
		{"fence type", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", fence: {type: redfsh, address: https://bmc1}}\n",
			[]string{`stack.yaml:3:51: hosts[0].fence.type: unknown fence type "redfsh" (did you mean "redfish"?)`}},
		{"fence incomplete", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", fence: {}}\n",
			[]string{`stack.yaml:3:43: hosts[0].fence.type: a fence needs a type (ipmi, qmp, redfish)`,
				`stack.yaml:3:43: hosts[0].fence.address: a fence needs the device's address`}},

		// Subnets and addresses.
		{"internal overlaps vpn", one + "internal: 10.8.0.0/16\n",
			[]string{`stack.yaml:4:1: internal: subnet 10.8.0.0/16 overlaps vpn.subnet 10.8.0.0/24`}},
		{"pairnet overlaps internal", one + "pairnet: 172.16.0.128/25\n",
			[]string{`stack.yaml:4:1: pairnet: subnet 172.16.0.128/25 overlaps internal 172.16.0.0/24`}},
		{"public overlaps internal", one + "public: {vip: 172.16.0.200/24}\n",
			[]string{`stack.yaml:4:10: public.vip: subnet 172.16.0.0/24 overlaps internal 172.16.0.0/24`}},
		{"host address overlaps vpn", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 10.8.0.5/16}\n",
			[]string{`stack.yaml:3:43: hosts[0].address: subnet 10.8.0.0/16 overlaps vpn.subnet 10.8.0.0/24`}},
		{"host bits set", one + "internal: 172.16.0.1/24\n",
			[]string{`stack.yaml:4:1: internal: 172.16.0.1/24 has host bits set; did you mean 172.16.0.0/24?`}},
		{"vip outside host subnet", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 192.0.2.11/24}\npublic: {vip: 198.51.100.5/24}\n",
			[]string{`stack.yaml:4:10: public.vip: 198.51.100.5 is outside host dh1's public subnet 192.0.2.0/24`}},
		{"vip is host address", "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\", address: 192.0.2.11/24}\npublic: {vip: 192.0.2.11/24}\n",
			[]string{`stack.yaml:4:10: public.vip: 192.0.2.11 is host dh1's own address (hosts[0].address); the VIP must be a separate address`}},
		{"allow duplicate", one + "public: {allow: [203.0.113.0/24, 203.0.113.0/24]}\n",
			[]string{`stack.yaml:4:34: public.allow[1]: 203.0.113.0/24 is already listed at public.allow[0]`}},
		{"internal ipv6", one + "internal: \"fd00::/64\"\n",
			[]string{`stack.yaml:4:1: internal: fd00::/64: the internal subnet must be IPv4 for now`}},
		{"allow ipv6", one + "public: {allow: [\"2001:db8::/48\"]}\n",
			[]string{`stack.yaml:4:18: public.allow[0]: 2001:db8::/48: allow-list entries must be IPv4 for now`}},
		{"ratelimit", one + "public: {ratelimit: -5}\n",
			[]string{`stack.yaml:4:10: public.ratelimit: must be -1 (off), 0 (default) or a positive number of connections per second, got -5`}},
		{"internal too small", one + "internal: 172.16.0.0/26\n",
			[]string{`stack.yaml:4:1: internal: 172.16.0.0/26 is too small: web1 needs address offset 100; use a /25 or larger`}},
		{"internal too small for web", one + "internal: 172.16.0.0/25\nroles:\n  web: {count: 30}\n",
			[]string{`stack.yaml:4:1: internal: 172.16.0.0/25 is too small: web30 needs address offset 129; use a /24 or larger`}},

		// VPN.
		{"vpn port zero", one + "vpn: {port: 0}\n",
			[]string{`stack.yaml:4:7: vpn.port: port 0 is not usable: want 1..65535 (omit the key for the default 51820)`}},
		{"vpn key", one + "vpn: {peers: [{name: alice, key: abc}]}\n",
			[]string{`stack.yaml:4:29: vpn.peers[0].key: "abc" is not a WireGuard key: want 32 bytes in base64, 44 characters (wg genkey | wg pubkey)`}},
		{"vpn key length", one + "vpn: {peers: [{name: alice, key: \"AAAA\"}]}\n",
			[]string{`stack.yaml:4:29: vpn.peers[0].key: "AAAA" is not a WireGuard key: want 32 bytes in base64, 44 characters (wg genkey | wg pubkey)`}},
		{"vpn private key", one + "vpn: {privatekey: nope}\n",
			[]string{`stack.yaml:4:7: vpn.privatekey: "nope" is not a WireGuard key: want 32 bytes in base64, 44 characters (wg genkey | wg pubkey)`}},
		{"vpn duplicate peer", one + "vpn: {peers: [{name: a, key: \"" + keyA + "\"}, {name: a, key: \"" + keyA + "\"}]}\n",
			[]string{`stack.yaml:4:80: vpn.peers[1].name: peer "a" is already defined at vpn.peers[0]`,
				`stack.yaml:4:89: vpn.peers[1].key: key already used by vpn.peers[0]`}},
		{"vpn peer address", one + "vpn: {peers: [{name: a, key: \"" + keyA + "\", address: 10.9.0.5}, {name: b, key: \"" + keyB + "\", address: 10.8.0.1}]}\n",
			[]string{`stack.yaml:4:78: vpn.peers[0].address: 10.9.0.5 is outside vpn.subnet 10.8.0.0/24`,
				`stack.yaml:4:161: vpn.peers[1].address: 10.8.0.1 is fw's own VPN address (the subnet's first)`}},
		{"vpn peer address taken by an earlier automatic one", one + "vpn: {peers: [{name: a, key: \"" + keyA + "\"}, {name: b, key: \"" + keyB + "\", address: 10.8.0.2}]}\n",
			[]string{`stack.yaml:4:142: vpn.peers[1].address: 10.8.0.2 is already used by vpn.peers[0] (a)`}},
		{"vpn peer broadcast", one + "vpn: {peers: [{name: a, key: \"" + keyA + "\", address: 10.8.0.255}]}\n",
			[]string{`stack.yaml:4:78: vpn.peers[0].address: 10.8.0.255 is the network or broadcast address of vpn.subnet 10.8.0.0/24`}},
		{"vpn subnet full", one + "vpn: {subnet: 10.8.0.0/30, peers: [{name: a, key: \"" + keyA + "\"}, {name: b, key: \"" + keyB + "\"}]}\n",
			[]string{`stack.yaml:4:100: vpn.peers[1]: no free address left in vpn.subnet 10.8.0.0/30 for this peer`}},
		{"vpn subnet ipv6", one + "vpn: {subnet: \"fd00::/64\"}\n",
			[]string{`stack.yaml:4:7: vpn.subnet: fd00::/64: the VPN subnet must be IPv4 with at least 4 addresses (a /30 or larger)`}},

		// Witness, cluster, config.
		{"witness not host:port", one + "witness: 10.0.0.5\n",
			[]string{`stack.yaml:4:1: witness: "10.0.0.5" is not host:port (like 10.0.0.5:7700)`}},
		{"witness port", one + "witness: 10.0.0.5:77000\n",
			[]string{`stack.yaml:4:1: witness: port "77000" out of range 1..65535`}},
		{"witness no host", one + "witness: \":7700\"\n",
			[]string{`stack.yaml:4:1: witness: ":7700" has no host`}},
		{"witness by name", one + "witness: prov1:7700\n",
			[]string{`stack.yaml:4:1: witness: "prov1:7700": the witness is given by IP address (like 10.0.0.5:7700), not by name`}},
		{"cluster order", one + "cluster: {heartbeat: 500ms, suspect: 300ms, dead: 200ms}\n",
			[]string{`stack.yaml:4:29: cluster.suspect: 300ms must be longer than the heartbeat interval 500ms`,
				`stack.yaml:4:45: cluster.dead: 200ms must be longer than suspect 300ms`}},
		{"cluster negative", one + "cluster: {holddown: -1s}\n",
			[]string{`stack.yaml:4:11: cluster.holddown: must be positive, got -1s`}},
		{"config source", one + "config: {source: \"ftp://x/y\"}\n",
			[]string{`stack.yaml:4:10: config.source: config source "ftp://x/y": scheme "ftp" unsupported (want a path, http(s)://, or git+https/http/ssh/file://)`}},
		{"config git transport", one + "config: {source: \"git+gopher://h/r#main:x\"}\n",
			[]string{`stack.yaml:4:10: config.source: config source "git+gopher://h/r#main:x": git transport "gopher" unsupported (want git+https, git+http, git+ssh or git+file)`}},
		{"config poll", one + "config: {poll: 10ms}\n",
			[]string{`stack.yaml:4:10: config.poll: 10ms is too short: at least 1s`}},
		{"config signedby", one + "config: {signedby: [\"ssh-rsa AAA\"]}\n",
			[]string{`stack.yaml:4:21: config.signedby[0]: want an ASCII-armored OpenPGP public key (gpg --armor --export KEYID)`}},

		// Roles.
		{"unknown role", one + "roles:\n  wbe: {count: 2}\n",
			[]string{`stack.yaml:5:3: roles.wbe: unknown role (did you mean "web"?)`}},
		{"unknown role far", one + "roles:\n  cache: {}\n",
			[]string{`stack.yaml:5:3: roles.cache: unknown role (valid: fw, mail, db, web, lb, acc, monitor)`}},
		{"negative count", one + "roles:\n  web: {count: -1}\n",
			[]string{`stack.yaml:5:9: roles.web.count: must be ≥ 0, got -1`}},
		{"singleton count", one + "roles:\n  db: {count: 2}\n",
			[]string{`stack.yaml:5:8: roles.db.count: db runs at most 1 instance (only web scales), got 2`}},
		{"web count", one + "roles:\n  web: {count: 151}\n",
			[]string{`stack.yaml:5:9: roles.web.count: 151 instances, at most 150`}},
		{"cpu", one + "roles:\n  web: {cpu: 20000}\n",
			[]string{`stack.yaml:5:9: roles.web.cpu: cpu weight 20000 out of range 1..10000`}},
		{"memory", one + "roles:\n  web: {memory: 1MiB}\n",
			[]string{`stack.yaml:5:9: roles.web.memory: 1MiB is too little memory for a role: at least 16MiB`}},
		{"pids", one + "roles:\n  web: {pids: -3}\n",
			[]string{`stack.yaml:5:9: roles.web.pids: must be ≥ 0, got -3`}},
		{"role host", one + "roles:\n  db: {hosts: [dh2]}\n",
			[]string{`stack.yaml:5:16: roles.db.hosts[0]: no host named "dh2" (did you mean "dh1"?)`}},
		{"setting name", one + "roles:\n  web: {settings: {\"a b\": x}}\n",
			[]string{`stack.yaml:5:20: roles.web.settings.a b: setting names are letters, digits, '_', '.' and '-'`}},

		// Users.
		{"user name", one + "users: [{name: Alice}]\n",
			[]string{`stack.yaml:4:10: users[0].name: "Alice" is not a valid user name: lower-case letters, digits, '_' and '-', starting with a letter or '_'`}},
		{"user key", one + "users: [{name: alice, keys: [\"ssh-ed25519 nope\"]}]\n",
			[]string{`stack.yaml:4:30: users[0].keys[0]: not an OpenSSH public key (like "ssh-ed25519 AAAA... alice@laptop")`}},
		{"user duplicate", one + "users: [{name: al}, {name: al}]\n",
			[]string{`stack.yaml:4:22: users[1].name: user "al" is already defined at users[0]`}},
		{"user takes a system account", one + "users: [{name: ok}, {name: www-data}]\n",
			[]string{`stack.yaml:4:22: users[1].name: "www-data" is a system account of the role images; choose another name (admins log in as root with admin: true)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("stack.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("parsed without error: %+v", s)
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n got: %q\nwant: %q", got, tt.want)
			}
			fes := FieldErrors(err)
			if len(fes) != len(tt.want) {
				t.Errorf("FieldErrors gave %d problems, want %d", len(fes), len(tt.want))
			}
			for _, fe := range fes {
				if fe.File != "stack.yaml" {
					t.Errorf("%v: file %q, want stack.yaml", fe, fe.File)
				}
			}
		})
	}
}

func TestParseValidStacks(t *testing.T) {
	full := `stack: shop1
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.0.2.11/24, gateway: 192.0.2.1, pair: dh2,
     pairlink: {mac: "52:54:00:00:01:01", address: 10.9.0.1/24}, fence: {type: qmp, address: /run/qmp-dh1.sock}}
  - {name: dh2, mac: "52:54:00:00:00:02", pair: dh1,
     pairlink: {mac: "52:54:00:00:01:02", address: 10.9.0.2/24}, fence: {type: redfish, address: https://bmc2}}
public: {vip: 192.0.2.50/24, allow: [203.0.113.0/24, 198.51.100.7/32], ratelimit: -1}
internal: 172.16.0.0/24
pairnet: 10.9.0.0/24
vpn: {port: 51821, subnet: 10.8.0.0/24, peers: [{name: alice, key: "` + keyA + `"}, {name: bob, key: "` + keyB + `", address: 10.8.0.9}]}
witness: 10.0.0.5:7700
cluster: {heartbeat: 50ms, suspect: 200ms, dead: 600ms}
config: {source: "git+https://git.example/stacks.git#main:shop1.yaml", poll: 30s}
roles:
  web: {count: 3, memory: 1GiB, settings: {php.memory_limit: 512M}}
  db: {volume: 20GiB}
  mail: {count: 0}
users:
  - {name: alice, keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMx4iXq9wmXQ0dN4c2Tfcr7iHZ+gUM3D0lEqlkbQ3o6D alice@laptop"]}
`
	s, err := Parse("shop1.yaml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Roles["db"].Count; got != 1 {
		t.Errorf("db written without count: count %d, want the default 1", got)
	}
	if got := s.Roles["mail"].Count; got != 0 {
		t.Errorf("mail count: %d, want 0 as written", got)
	}
	if got := s.Roles["web"].Settings["php.memory_limit"]; got != "512M" {
		t.Errorf("web setting: %q", got)
	}
	if s.Roles["web"].Pids != roleDefaults["web"].Pids || s.Roles["acc"].Count != 1 {
		t.Errorf("defaults not filled: web %+v acc %+v", s.Roles["web"], s.Roles["acc"])
	}
	if s.Cluster.HoldDown.D().String() != "1m0s" || s.VPN.Port != 51821 {
		t.Errorf("cluster/vpn: %+v %+v", s.Cluster, s.VPN)
	}
	insts, err := s.Instances()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, in := range insts {
		names = append(names, in.Name+"@"+in.Host)
	}
	if got, want := strings.Join(names, " "), "fw1@dh1 db1@dh1 web1@dh2 web2@dh1 web3@dh2 lb1@dh1 acc1@dh2 monitor1@dh1"; got != want {
		t.Errorf("instances: %s\nwant:       %s", got, want)
	}
}

func TestAliasBombIsBounded(t *testing.T) {
	// 1000 users, each with the same 1000 keys: a million nodes from a
	// 20 KiB file.
	keys := strings.Repeat("x, ", 999) + "x"
	users := strings.Repeat("*u, ", 999) + "*u"
	doc := one + "users: [&u {name: a, keys: [" + keys + "]}, " + users + "]\n"
	_, err := Parse("bomb.yaml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "document too large or too deeply aliased") {
		t.Fatalf("alias bomb: %.300v", err)
	}
	if n := len(FieldErrors(err)); n > maxErrors+1 {
		t.Errorf("%d problems reported, want at most %d", n, maxErrors+1)
	}
}

func TestFileTooLarge(t *testing.T) {
	_, err := Parse("big.yaml", make([]byte, MaxFileSize+1))
	var fe *FieldError
	if !errors.As(err, &fe) || !strings.Contains(fe.Msg, "more than the 1048576") {
		t.Fatalf("got %v", err)
	}
}

func TestValidateWithoutSourceHasNoPosition(t *testing.T) {
	s := *Default()
	s.src = nil // as if built in code
	s.Roles = map[string]Role{"web": {Count: -1, CPUWeight: 1}}
	err := s.Validate()
	if err == nil || err.Error() != "roles.web.count: must be ≥ 0, got -1" {
		t.Fatalf("got %v", err)
	}
}

func TestHint(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{"cuont", ` (did you mean "count"?)`},
		{"volume", ` (did you mean "volume"?)`},
		{"imgae", ` (did you mean "image"?)`},
		{"xyz", ` (valid: count, volume, image)`},
	} {
		if h := hint(tt.got, []string{"count", "volume", "image"}); h != tt.want {
			t.Errorf("hint(%q) = %q, want %q", tt.got, h, tt.want)
		}
	}
}

func TestMACsAreNormalised(t *testing.T) {
	s, err := Parse("stack.yaml", []byte("stack: s\nhosts:\n  - {name: dh1, mac: \"52-54-00-AB-CD-EF\", pairlink: {mac: \"52:54:00:00:01:0A\", address: 10.9.0.1/24}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Hosts[0].MAC != "52:54:00:ab:cd:ef" || s.Hosts[0].PairLink.MAC != "52:54:00:00:01:0a" {
		t.Errorf("MACs %q %q", s.Hosts[0].MAC, s.Hosts[0].PairLink.MAC)
	}
}

func TestNewFieldsErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"redis outside db", one + "roles:\n  web: {redis: [{name: a}]}\n",
			[]string{`stack.yaml:5:9: roles.web.redis: only db runs Redis instances`}},
		{"cache port clash", one + "roles:\n  db: {redis: [{name: a}, {name: b, port: 3306}], memcached: [{name: a, port: 6379}]}\n",
			[]string{`stack.yaml:5:37: roles.db.redis[1].port: port 3306 is already used by MariaDB`,
				`stack.yaml:5:73: roles.db.memcached[0].port: port 6379 is already used by redis a`}},
		{"cache name", one + "roles:\n  db: {redis: [{name: a}, {name: a}]}\n",
			[]string{`stack.yaml:5:28: roles.db.redis[1].name: redis instance "a" is already defined`}},
		{"tls half", one + "public: {tls: {cert: x}}\n",
			[]string{`stack.yaml:4:10: public.tls: give both cert and key (PEM), or leave tls out for a self-signed certificate`}},
		{"tls not pem", one + "public: {tls: {cert: x, key: y}}\n",
			[]string{`stack.yaml:4:10: public.tls: certificate and key are not a usable PEM pair: tls: failed to find any PEM data in certificate input`}},
		{"site names", one + "sites: [{group: ../x, name: Www, domains: [a.example]}]\n",
			[]string{`stack.yaml:4:10: sites[0].group: "../x" is not a valid directory name: lower-case letters, digits, '.', '_' and '-'`,
				`stack.yaml:4:23: sites[0].name: "Www" is not a valid directory name: lower-case letters, digits, '.', '_' and '-'`}},
		{"site domains", one + "sites: [{group: g, name: a, domains: [shop.example]}, {group: g, name: b, domains: [shop.example, \"bad domain\"]}, {group: g, name: c}]\n",
			[]string{`stack.yaml:4:85: sites[1].domains[0]: shop.example is already served by sites[0] (g/a)`,
				`stack.yaml:4:99: sites[1].domains[1]: "bad domain" is not a host name (lower case, like shop.example.com or *.example.com)`,
				`stack.yaml:4:115: sites[2].domains: a site needs at least one domain`}},
		{"site twice", one + "sites: [{group: g, name: a, domains: [x.example]}, {group: g, name: a, domains: [y.example]}]\n",
			[]string{`stack.yaml:4:63: sites[1].name: site g/a is already defined at sites[0]`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("stack.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("parsed without error")
			}
			if got := err.Error(); got != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n got: %q\nwant: %q", strings.Split(got, "\n"), tt.want)
			}
		})
	}
}

func TestNewFieldsValid(t *testing.T) {
	cert, _ := os.ReadFile("testdata/shop1-cert.pem")
	key, _ := os.ReadFile("testdata/shop1-key.pem")
	doc := one + "public:\n  tls:\n    cert: |\n" + indent(string(cert), "      ") + "    key: |\n" + indent(string(key), "      ") +
		"roles:\n  db: {redis: [{name: sessions}, {name: cache, memory: 1GiB}], memcached: [{name: fpc}, {name: two, port: 11300}]}\n" +
		"sites: [{group: shop1, name: www, domains: [www.shop1.example, \"*.shop1.example\"], maintenanceallow: [203.0.113.0/24]}]\n"
	s, err := Parse("stack.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	db := s.Roles["db"]
	if db.Redis[0].Port != 6379 || db.Redis[1].Port != 6380 || db.Memcached[0].Port != 11211 || db.Memcached[1].Port != 11300 {
		t.Errorf("cache ports %+v %+v", db.Redis, db.Memcached)
	}
	out, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse("again.yaml", out)
	if err != nil || !Equal(s, again) {
		t.Fatalf("round trip: %v\n%s", err, out)
	}
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// Two user names whose uids collide are refused with both named; the uid
// does not depend on the list's order.
func TestUserUIDs(t *testing.T) {
	byUID := map[int]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		n := fmt.Sprintf("u%d", i)
		u := User{Name: n}.UID()
		if u < 20000 || u >= 60000 {
			t.Fatalf("uid %d of %s is outside 20000..59999", u, n)
		}
		if prev, ok := byUID[u]; ok {
			a, b = prev, n
		}
		byUID[u] = n
	}
	const head = "stack: s\nhosts:\n  - {name: dh1, mac: \"52:54:00:00:00:01\"}\n"
	_, err := Parse("stack.yaml", []byte(head+"users: [{name: "+a+"}, {name: "+b+"}]\n"))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("user %q would get the same uid", b)) || !strings.Contains(err.Error(), a) {
		t.Fatalf("colliding users %s and %s: err = %v", a, b, err)
	}
	if (User{Name: "alice"}).UID() != (User{Name: "alice", Admin: true, Keys: []string{"x"}}).UID() {
		t.Error("the uid depends on more than the name")
	}
}
