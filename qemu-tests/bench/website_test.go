package main

import (
	"slices"
	"strings"
	"testing"

	"magestack/init/firewall"
	"magestack/init/stackfile"
)

// TestPublicTo: the plain-vs-role comparison aims the stack's public rules
// at web1 and nothing else; lb1's own traffic to web1 stays allowed (a
// retarget that also rewrote lb1's role-to-role rule would make HAProxy
// mark web1 down).
func TestPublicTo(t *testing.T) {
	stack := stackfile.Default()
	insts, err := stack.Instances()
	if err != nil {
		t.Fatal(err)
	}
	addr := map[string]string{}
	for _, in := range insts {
		addr[in.Name] = in.Addr.String()
	}
	lb, web := insts[0].Addr, insts[0].Addr
	for _, in := range insts {
		switch in.Name {
		case "lb1":
			lb = in.Addr
		case "web1":
			web = in.Addr
		}
	}
	rs, err := firewall.Build(stack, firewall.HostView{PublicIfaces: []string{"pub0"}, InternalBridge: "ms-int"})
	if err != nil {
		t.Fatal(err)
	}
	before := firewall.Render(rs)
	got := firewall.Render(publicTo(rs, "pub0", lb, web))
	if firewall.Render(rs) != before {
		t.Fatal("publicTo changed its input")
	}
	for _, want := range []string{
		"dnat ip to " + addr["web1"],
		"ip daddr " + addr["web1"] + " tcp dport { 80, 443 }",
		"ip saddr " + addr["lb1"] + " ip daddr " + addr["web1"] + " tcp dport 80",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("retargeted ruleset lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "dnat ip to "+addr["lb1"]) {
		t.Errorf("still DNATs to lb1:\n%s", got)
	}
	// Only public rules differ: the same number of lines, and every line
	// that changed mentions pub0.
	a, b := strings.Split(before, "\n"), strings.Split(got, "\n")
	if len(a) != len(b) {
		t.Fatalf("%d lines became %d", len(a), len(b))
	}
	changed := 0
	for i := range a {
		if a[i] != b[i] {
			changed++
			if !strings.Contains(b[i], `"pub0"`) {
				t.Errorf("non-public rule changed: %q -> %q", a[i], b[i])
			}
		}
	}
	if changed == 0 {
		t.Error("nothing retargeted")
	}
}

func TestPairedRatios(t *testing.T) {
	rps := func(r latencyStats) float64 { return r.RPS }
	st := func(v float64) latencyStats { return latencyStats{RPS: v} }
	tests := []struct {
		name       string
		side, base map[int]latencyStats
		want       []float64
	}{
		{"rounds paired, not pooled: drift cancels, round order", map[int]latencyStats{3: st(180), 1: st(90), 2: st(50)},
			map[int]latencyStats{1: st(100), 2: st(50), 3: st(200)}, []float64{0.9, 1, 0.9}},
		{"a round missing on either side is skipped", map[int]latencyStats{1: st(50), 2: st(80)},
			map[int]latencyStats{2: st(100), 3: st(100)}, []float64{0.8}},
		{"zero base is skipped", map[int]latencyStats{1: st(50)}, map[int]latencyStats{1: st(0)}, nil},
		{"nothing", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pairedRatios(tt.side, tt.base, rps); !slices.Equal(got, tt.want) {
				t.Errorf("pairedRatios = %v, want %v", got, tt.want)
			}
		})
	}
}
