package firewall

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"magestack/init/stackfile"
	"magestack/services"
)

func TestRoleForbidden(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(s *stackfile.Stack)
		extra  []netip.Prefix
		want   []netip.Prefix
	}{
		{"default stack: the vip only (its host is on DHCP)", func(s *stackfile.Stack) {}, nil,
			prefixes("10.0.2.50/32")},
		{"hosts, pair links, pairnet folds them", func(s *stackfile.Stack) {
			s.Hosts = []stackfile.Host{
				{Name: "dh1", Address: netip.MustParsePrefix("192.0.2.11/24"),
					PairLink: &stackfile.PairLink{Address: netip.MustParsePrefix("10.99.0.1/30")}},
				{Name: "dh2", Address: netip.MustParsePrefix("192.0.2.12/24"),
					PairLink: &stackfile.PairLink{Address: netip.MustParsePrefix("10.99.0.2/30")}},
			}
			s.PairNet = netip.MustParsePrefix("10.99.0.0/30")
			s.Public.VIP = netip.Prefix{}
		}, nil, prefixes("10.99.0.0/30", "192.0.2.11/32", "192.0.2.12/32")},
		{"pair links without pairnet", func(s *stackfile.Stack) {
			s.Hosts = []stackfile.Host{{Name: "dh1", PairLink: &stackfile.PairLink{Address: netip.MustParsePrefix("10.99.0.1/30")}}}
			s.Public.VIP = netip.Prefix{}
		}, nil, prefixes("10.99.0.1/32")},
		{"witness, fence devices, config server", func(s *stackfile.Stack) {
			s.Public.VIP = netip.Prefix{}
			s.Witness = "203.0.113.5:7700"
			s.Config.Source = "git+https://198.51.100.9/stacks.git#main:shop.yaml"
			s.Hosts = []stackfile.Host{
				{Name: "dh1", Fence: &stackfile.Fence{Type: "redfish", Address: "https://198.18.0.11:8443/redfish/v1"}},
				{Name: "dh2", Fence: &stackfile.Fence{Type: "ipmi", Address: "198.18.0.12"}},
				{Name: "dh3", Fence: &stackfile.Fence{Type: "qmp", Address: "/run/qmp-dh3.sock"}},
				{Name: "dh4", Fence: &stackfile.Fence{Type: "ipmi", Address: "bmc4.example.net:623"}},
			}
		}, nil, prefixes("198.18.0.11/32", "198.18.0.12/32", "198.51.100.9/32", "203.0.113.5/32")},
		{"ipv6 witness and names are left out", func(s *stackfile.Stack) {
			s.Public.VIP = netip.Prefix{}
			s.Witness = "[2001:db8::5]:7700"
			s.Config.Source = "https://config.example.net/shop.yaml"
		}, nil, nil},
		{"extra from the host, folded", func(s *stackfile.Stack) { s.Public.VIP = netip.Prefix{} },
			prefixes("10.0.2.2/32", "10.0.2.0/24", "10.0.2.2/32", "2001:db8::/32"), prefixes("10.0.2.0/24")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := stackfile.Default()
			tc.mutate(s)
			got := RoleForbidden(s, tc.extra)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("RoleForbidden = %v, want %v", got, tc.want)
			}
			if _, err := setElements(true, got); err != nil {
				t.Fatalf("does not load into an interval set: %v", err)
			}
		})
	}
}

// ruleIndex is the position of the first rule of chain whose text
// contains want, -1 when none.
func ruleIndex(rs *Ruleset, chain, want string) int {
	for _, c := range rs.Chains {
		if c.Name != chain {
			continue
		}
		for i, r := range c.Rules {
			if strings.Contains(r.String(), want) {
				return i
			}
		}
	}
	return -1
}

// TestBuildRolesFenced checks, for every stack of the golden cases, that
// role traffic is dropped before any rule could accept it: in input
// before the first rule trusting a source address or a port, in forward
// right after conntrack and before any allow or egress rule.
func TestBuildRolesFenced(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Build(loadStack(t, tc.stack), tc.host)
			if err != nil {
				t.Fatal(err)
			}
			in := ruleIndex(rs, "input", `iifname "ms-int" counter packets 0 bytes 0 drop`)
			if in < 0 {
				t.Fatal("input: no drop for the roles' bridge")
			}
			for _, c := range rs.Chains {
				if c.Name != "input" {
					continue
				}
				for i, r := range c.Rules[:in] {
					txt := r.String()
					if strings.Contains(txt, "dport") || strings.Contains(txt, "saddr") || strings.Contains(txt, "icmp") {
						t.Errorf("input rule %d accepts before the roles' drop: %s", i, txt)
					}
				}
			}
			fwdIf := ruleIndex(rs, "forward", `iifname "ms-int" ip daddr @`+ForbiddenSet)
			fwdSrc := ruleIndex(rs, "forward", `ip saddr 172.16.0.0/24 ip daddr @`+ForbiddenSet)
			if fwdIf != 2 || fwdSrc != 3 {
				t.Fatalf("forward: forbidden drops at %d and %d, want 2 and 3 (right after conntrack)", fwdIf, fwdSrc)
			}
			if eg := ruleIndex(rs, "forward", "roles -> internet"); eg < fwdSrc {
				t.Errorf("forward: egress accept at %d precedes the forbidden drops", eg)
			}
			set := setNamed(rs, ForbiddenSet)
			if set == nil || !set.Interval {
				t.Fatalf("no interval set %s: %+v", ForbiddenSet, set)
			}
		})
	}
}

func setNamed(rs *Ruleset, name string) *Set {
	for i := range rs.Sets {
		if rs.Sets[i].Name == name {
			return &rs.Sets[i]
		}
	}
	return nil
}

// TestBuildForbiddenCoversCluster: in a paired stack every address a
// member listens on for cluster traffic is in the set roles cannot reach.
func TestBuildForbiddenCoversCluster(t *testing.T) {
	s := loadStack(t, "pair-fenced.yaml")
	rs, err := Build(s, HostView{PublicIfaces: []string{"eth0"}, HostName: "dh1",
		ClusterPorts: []services.Port{{Proto: "tcp", Port: 7700}}, RoleForbidden: prefixes("198.51.100.10/32")})
	if err != nil {
		t.Fatal(err)
	}
	set := setNamed(rs, ForbiddenSet)
	covered := func(a string) bool {
		return slices.ContainsFunc(set.Elements, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) })
	}
	for _, a := range []string{"192.0.2.11", "192.0.2.12", "10.99.0.1", "10.99.0.2", "192.0.2.50",
		"203.0.113.5", "198.18.0.11", "198.18.0.12", "198.51.100.9", "198.51.100.10"} {
		if !covered(a) {
			t.Errorf("%s is not in %s: %v", a, ForbiddenSet, set.Elements)
		}
	}
	for _, a := range []string{"192.0.2.1", "8.8.8.8", "172.16.0.40"} {
		if covered(a) {
			t.Errorf("%s (gateway, internet, a role) is in %s", a, ForbiddenSet)
		}
	}
}

func TestServerPrefixes(t *testing.T) {
	got := ServerPrefixes("http://10.0.2.2:8080/stack.yaml", "", "https://images.example.net/i",
		"git+ssh://192.0.2.9/stacks.git#main:s.yaml", "198.51.100.3:80", "http://[2001:db8::1]/x")
	want := prefixes("10.0.2.2/32", "192.0.2.9/32", "198.51.100.3/32")
	if !slices.Equal(got, want) {
		t.Fatalf("ServerPrefixes = %v, want %v", got, want)
	}
}
