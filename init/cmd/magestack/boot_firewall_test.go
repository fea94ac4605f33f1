package main

import (
	"net/netip"
	"slices"
	"testing"

	"magestack/init/stackfile"
)

// TestHostViewRoleForbidden: the provisioning servers reach the firewall
// on paired and single hosts alike.
func TestHostViewRoleForbidden(t *testing.T) {
	servers := []netip.Prefix{netip.MustParsePrefix("10.0.2.2/32")}
	single := stackfile.Default()
	v := hostView(single, single.Hosts[0].Name, servers)
	if !slices.Equal(v.RoleForbidden, servers) || len(v.ClusterPorts) != 0 {
		t.Fatalf("single host: %+v", v)
	}
	pair := stackfile.Default()
	pair.Hosts = []stackfile.Host{
		{Name: "dh1", Address: netip.MustParsePrefix("192.0.2.11/24"), Pair: "dh2"},
		{Name: "dh2", Address: netip.MustParsePrefix("192.0.2.12/24"), Pair: "dh1"},
	}
	v = hostView(pair, "dh1", servers)
	if !slices.Equal(v.RoleForbidden, servers) || len(v.ClusterPorts) != 3 {
		t.Fatalf("paired host: %+v", v)
	}
}
