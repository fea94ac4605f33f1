package main

import (
	"net/netip"
	"slices"
	"testing"

	"magestack/init/stackfile"
)

// TestHostViewRoleForbidden: the provisioning servers reach the firewall
// on paired and single hosts alike; a paired host opens its cluster and
// volume replication ports to its peers.
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
	var ports []uint16
	for _, p := range v.ClusterPorts {
		ports = append(ports, p.Port)
	}
	// raft, heartbeats, cluster RPC, and db1's, mail1's and acc1's DRBD
	// ports.
	slices.Sort(ports)
	if !slices.Equal(v.RoleForbidden, servers) || !slices.Equal(ports, []uint16{7700, 7701, 7702, 7840, 7850, 7860}) {
		t.Fatalf("paired host: %+v", v)
	}
}
