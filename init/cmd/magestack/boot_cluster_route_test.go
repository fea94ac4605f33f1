package main

import (
	"testing"

	"magestack/init/stackfile"
)

// TestPairRaftAddr: a paired host dials its peer's raft on the peer's
// pair-link address; without pair links raft stays on the LAN.
func TestPairRaftAddr(t *testing.T) {
	const withLinks = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:aa:01:01", address: 192.0.2.11/24, pair: dh2, pairlink: {mac: "52:54:00:aa:02:01", address: 10.99.0.1/30}}
  - {name: dh2, mac: "52:54:00:aa:01:02", address: 192.0.2.12/24, pair: dh1, pairlink: {mac: "52:54:00:aa:02:02", address: 10.99.0.2/30}}
witness: 192.0.2.5:7700
`
	const noLinks = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:aa:01:01", address: 192.0.2.11/24, pair: dh2}
  - {name: dh2, mac: "52:54:00:aa:01:02", address: 192.0.2.12/24, pair: dh1}
witness: 192.0.2.5:7700
`
	tests := []struct{ name, yaml, host, want string }{
		{"dh1 dials dh2 on the pair link", withLinks, "dh1", "10.99.0.2:7700"},
		{"dh2 dials dh1 on the pair link", withLinks, "dh2", "10.99.0.1:7700"},
		{"no pair link: the LAN only", noLinks, "dh1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := stackfile.Parse("stack.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			h, _, _ := st.HostByName(tt.host)
			if got := pairRaftAddr(st, h); got != tt.want {
				t.Errorf("pairRaftAddr(%s) = %q, want %q", tt.host, got, tt.want)
			}
		})
	}
}
