package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"magestack/init/stackfile"
	"magestack/services"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func loadStack(t *testing.T, file string) *stackfile.Stack {
	t.Helper()
	if file == "" {
		return stackfile.Default()
	}
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	s, err := stackfile.Parse(file, data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// goldenCases are the stacks whose rulesets are pinned as nft text.
var goldenCases = []struct {
	name  string
	stack string
	host  HostView
}{
	{"default", "", HostView{PublicIfaces: []string{"eth0"}, HostName: "dh1"}},
	{"three-hosts", "three-hosts.yaml", HostView{
		PublicIfaces: []string{"eth0"}, PairIfaces: []string{"pair0"}, HostName: "dh1",
		LBAddr: netip.MustParseAddr("172.16.0.30"), APIPort: 7701,
		ClusterPorts: []services.Port{{Proto: "tcp", Port: 7700}, {Proto: "udp", Port: 7702}},
	}},
	{"pair-fenced", "pair-fenced.yaml", HostView{
		PublicIfaces: []string{"eth0"}, PairIfaces: []string{"pair0"}, HostName: "dh1",
		ClusterPorts: []services.Port{{Proto: "tcp", Port: 7700}, {Proto: "udp", Port: 7701}, {Proto: "tcp", Port: 7702}},
	}},
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Build(loadStack(t, tc.stack), tc.host)
			if err != nil {
				t.Fatal(err)
			}
			got := Render(rs)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("ruleset differs from %s:\n%s", path, strings.Join(lineDiff(strings.Split(string(want), "\n"), strings.Split(got, "\n")), "\n"))
			}
		})
	}
}

func TestBuildRejectsBadConfig(t *testing.T) {
	good := HostView{PublicIfaces: []string{"eth0"}}
	cases := []struct {
		name   string
		mutate func(s *stackfile.Stack, h *HostView)
		want   string
	}{
		{"vpn overlaps internal", func(s *stackfile.Stack, h *HostView) { s.VPN.Subnet = netip.MustParsePrefix("172.16.0.128/25") }, "vpn.subnet: 172.16.0.128/25 overlaps internal 172.16.0.0/24"},
		{"pairnet overlaps vpn", func(s *stackfile.Stack, h *HostView) { s.PairNet = netip.MustParsePrefix("10.8.0.0/16") }, "pairnet: 10.8.0.0/16 overlaps vpn.subnet"},
		{"vpn port zero", func(s *stackfile.Stack, h *HostView) { s.VPN.Port = 0 }, "vpn.port: must be in 1..65535"},
		{"ipv6 allow", func(s *stackfile.Stack, h *HostView) {
			s.Public.Allow = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
		}, "public.allow[0]: 2001:db8::/32 is not an IPv4"},
		{"unknown role", func(s *stackfile.Stack, h *HostView) { s.Roles["cache"] = stackfile.Role{Count: 1} }, "roles.cache: unknown role"},
		{"bad ratelimit", func(s *stackfile.Stack, h *HostView) { s.Public.RateLimit = -5 }, "public.ratelimit: -5"},
		{"no uplink", func(s *stackfile.Stack, h *HostView) { h.PublicIfaces = nil }, "host: no public interface"},
		{"long ifname", func(s *stackfile.Stack, h *HostView) { h.PublicIfaces = []string{"averyveryverylongname"} }, "interface name \"averyveryverylongname\""},
		{"lb outside internal", func(s *stackfile.Stack, h *HostView) { h.LBAddr = netip.MustParseAddr("10.9.9.9") }, "lb address 10.9.9.9 is not inside internal"},
		{"bad cluster port", func(s *stackfile.Stack, h *HostView) { h.ClusterPorts = []services.Port{{Proto: "sctp", Port: 1}} }, "bad cluster port sctp/1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, h := stackfile.Default(), good
			tc.mutate(s, &h)
			rs, err := Build(s, h)
			if err == nil {
				t.Fatalf("Build accepted it:\n%s", Render(rs))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// TestBuildPolicyShape checks properties every ruleset must have,
// independent of the golden text.
func TestBuildPolicyShape(t *testing.T) {
	rs, err := Build(stackfile.Default(), HostView{PublicIfaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	policy := map[string]string{"input": "drop", "forward": "drop", "output": "accept", "prerouting": "accept", "postrouting": "accept"}
	for _, c := range rs.Chains {
		if policy[c.Name] != c.Policy {
			t.Errorf("chain %s policy %s, want %s", c.Name, c.Policy, policy[c.Name])
		}
		for i, r := range c.Rules {
			n := 0
			for _, s := range r.Stmts {
				if _, ok := s.(Counter); ok {
					n++
				}
			}
			if n != 1 {
				t.Errorf("chain %s rule %d has %d counters: %s", c.Name, i, n, r)
			}
		}
		if c.Name == "input" || c.Name == "forward" {
			if first := c.Rules[0].String(); c.Name == "input" && !strings.HasPrefix(first, `iifname "lo"`) {
				t.Errorf("input does not start with loopback: %s", first)
			}
		}
	}
}

// Each Redis and Memcached instance the stack file lists gets its own port,
// opened from web and acc to db, and from no other role.
func TestCachePortsOpenFromWebAndAccOnly(t *testing.T) {
	s, err := stackfile.Parse("caches.yaml", []byte(`stack: caches
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
public: {vip: 192.0.2.50/24}
roles:
  db: {redis: [{name: sessions}, {name: cache}], memcached: [{name: a}, {name: b, port: 11300}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Build(s, HostView{PublicIfaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	text := Render(rs)
	const want = "tcp dport { 3306, 6379, 6380, 11211, 11300 }"
	for _, tt := range []struct {
		from  string
		opens bool
	}{{"web", true}, {"acc", true}, {"lb", false}, {"mail", false}, {"monitor", false}, {"fw", false}} {
		var line string
		for _, l := range strings.Split(text, "\n") {
			if strings.Contains(l, `comment "`+tt.from+` -> db"`) {
				line = l
			}
		}
		if got := strings.Contains(line, want); got != tt.opens {
			t.Errorf("%s -> db opens the caches: %v, want %v (rule: %q)", tt.from, got, tt.opens, line)
		}
		for _, port := range []string{"6379", "6380", "11211", "11300"} {
			if !tt.opens && strings.Contains(line, port) {
				t.Errorf("%s reaches cache port %s: %q", tt.from, port, line)
			}
		}
	}
}
