package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"magestack/init/stackfile"
	"magestack/services"
)

var witnessPorts = []services.Port{{Proto: "tcp", Port: 7700}, {Proto: "udp", Port: 7701}, {Proto: "tcp", Port: 7702}}

func TestBuildWitness(t *testing.T) {
	cases := []struct {
		name    string
		stack   string
		ports   []services.Port
		want    string // the input chain's rules, one per line
		wantErr string
	}{
		{"three hosts", "three-hosts.yaml", witnessPorts, `iifname "lo" counter packets 0 bytes 0 accept
ct state established,related counter packets 0 bytes 0 accept
ip saddr { 192.0.2.11, 192.0.2.12, 192.0.2.13 } tcp dport { 7700, 7702 } counter packets 0 bytes 0 accept comment "cluster from the hosts"
ip saddr { 192.0.2.11, 192.0.2.12, 192.0.2.13 } udp dport 7701 counter packets 0 bytes 0 accept comment "cluster from the hosts"
tcp dport { 7700, 7702 } counter packets 0 bytes 0 drop comment "cluster ports: hosts only"
udp dport 7701 counter packets 0 bytes 0 drop comment "cluster ports: hosts only"`, ""},
		{"pair, tcp only", "pair-fenced.yaml", witnessPorts[:1], `iifname "lo" counter packets 0 bytes 0 accept
ct state established,related counter packets 0 bytes 0 accept
ip saddr { 192.0.2.11, 192.0.2.12 } tcp dport 7700 counter packets 0 bytes 0 accept comment "cluster from the hosts"
tcp dport 7700 counter packets 0 bytes 0 drop comment "cluster ports: hosts only"`, ""},
		{"no static host", "", witnessPorts, "", "no host has a static IPv4 address"},
		{"no ports", "three-hosts.yaml", nil, "", "no cluster ports"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := BuildWitness(loadStack(t, tc.stack), tc.ports)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rs.TableOrDefault() != WitnessTable || len(rs.Chains) != 1 || rs.Chains[0].Policy != "accept" {
				t.Fatalf("want one accept-policy chain in %s:\n%s", WitnessTable, Render(rs))
			}
			var got []string
			for _, r := range rs.Chains[0].Rules {
				got = append(got, r.String())
			}
			if g := strings.Join(got, "\n"); g != tc.want {
				t.Errorf("rules:\n%s\nwant:\n%s", g, tc.want)
			}
		})
	}
}

// TestWitnessNamespace applies the witness policy in a namespace holding
// the witness address and an operator's own table, with the hosts and a
// stranger on its LAN: the hosts reach the cluster ports, the stranger
// only the machine's other services, and the operator's table is the same
// before and after, and after the witness's table is removed.
func TestWitnessNamespace(t *testing.T) {
	const (
		witness  = "192.0.2.5"
		dh1, dh2 = "192.0.2.11", "192.0.2.12"
		stranger = "192.0.2.100"
	)
	wNS, wFD := netns(t)
	lanNS, lanFD := netns(t)
	veth(t, wNS, "eth0", lanNS, "eth0")
	ipns(t, wNS, "link", "set", "lo", "up")
	ipns(t, wNS, "addr", "add", witness+"/24", "dev", "eth0")
	for _, a := range []string{dh1, dh2, stranger} {
		ipns(t, lanNS, "addr", "add", a+"/24", "dev", "eth0")
	}
	nftLoad(t, wNS, "table inet operator {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 2222 drop\n\t}\n}\n")
	operatorBefore := nftListTable(t, wNS, "operator")

	for _, p := range []int{7700, 7702, 22} {
		serve(t, wFD, fmt.Sprintf("%s:%d", witness, p), fmt.Sprintf("witness-%d", p))
	}
	hb := serveUDP(t, wFD, witness+":7701")

	stack := stackfile.Default()
	stack.Hosts = []stackfile.Host{
		{Name: "dh1", Address: netip.MustParsePrefix(dh1 + "/24"), Pair: "dh2"},
		{Name: "dh2", Address: netip.MustParsePrefix(dh2 + "/24"), Pair: "dh1"},
	}
	rs, err := BuildWitness(stack, witnessPorts)
	if err != nil {
		t.Fatal(err)
	}
	fw := NewInNetNS(wFD)
	defer fw.Close()
	if err := fw.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if got := nftListTable(t, wNS, WitnessTable); got != Render(rs) {
		t.Errorf("live witness table differs from Render:\n%s\nwant:\n%s", got, Render(rs))
	}

	for _, src := range []string{dh1, dh2} {
		for _, p := range []int{7700, 7702} {
			if got, err := dialFrom(lanFD, src, fmt.Sprintf("%s:%d", witness, p), reachTimeout); err != nil || got != fmt.Sprintf("witness-%d", p) {
				t.Errorf("host %s -> witness:%d: %q %v", src, p, got, err)
			}
		}
		sendUDP(t, lanFD, src, witness+":7701")
		if from := received(hb, reachTimeout); from != src {
			t.Errorf("heartbeat from host %s arrived from %q", src, from)
		}
	}
	for _, p := range []int{7700, 7702} {
		if got, err := dialFrom(lanFD, stranger, fmt.Sprintf("%s:%d", witness, p), blockTimeout); err == nil {
			t.Errorf("stranger reached witness:%d (%q)", p, got)
		}
	}
	sendUDP(t, lanFD, stranger, witness+":7701")
	if from := received(hb, blockTimeout); from != "" {
		t.Errorf("the stranger's heartbeat arrived (from %s)", from)
	}
	// The rest of the machine is the operator's business.
	if got, err := dialFrom(lanFD, stranger, witness+":22", reachTimeout); err != nil || got != "witness-22" {
		t.Errorf("stranger -> witness:22 (not a cluster port): %q %v, want it left open", got, err)
	}
	if got := nftListTable(t, wNS, "operator"); got != operatorBefore {
		t.Errorf("the operator's table changed:\n%s\nwas:\n%s", got, operatorBefore)
	}
	if err := fw.RemoveTable(context.Background(), WitnessTable); err != nil {
		t.Fatal(err)
	}
	if err := fw.RemoveTable(context.Background(), WitnessTable); err != nil {
		t.Fatalf("removing an absent table: %v", err)
	}
	if got := nftListTable(t, wNS, "operator"); got != operatorBefore {
		t.Errorf("the operator's table changed by the removal:\n%s", got)
	}
	if got, err := dialFrom(lanFD, stranger, witness+":7700", reachTimeout); err != nil {
		t.Errorf("after removal the stranger is still refused (%q %v): the table stayed", got, err)
	}
}

// nftLoad loads a ruleset into a namespace with the nft CLI (a fixture).
func nftLoad(t *testing.T, ns, text string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft CLI is missing (package nftables)")
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
}

// nftListTable is `nft list table inet name` in a namespace.
func nftListTable(t *testing.T, ns, name string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", name).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v\n%s", name, err, out)
	}
	return string(out)
}
