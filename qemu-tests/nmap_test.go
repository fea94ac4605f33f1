package qemutests

import (
	"encoding/xml"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// nmapHost is what nmap reports about one scanned address: the number of
// ports in each state ("open", "closed", "filtered", "open|filtered"),
// whether listed one by one or summarised, and the ports listed one by
// one per state.
type nmapHost struct {
	Addr   string
	Up     bool
	Counts map[string]int
	Ports  map[string][]int
	// Reasons per listed port ("syn-ack", "reset", "no-response"...).
	Reasons map[int]string
}

// Total is the number of ports nmap gave a state.
func (h nmapHost) Total() int {
	n := 0
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// nmapXML is the part of nmap's -oX output the checks read.
type nmapXML struct {
	Hosts []struct {
		Status struct {
			State string `xml:"state,attr"`
		} `xml:"status"`
		Addresses []struct {
			Addr string `xml:"addr,attr"`
			Type string `xml:"addrtype,attr"`
		} `xml:"address"`
		Ports struct {
			Extra []struct {
				State string `xml:"state,attr"`
				Count int    `xml:"count,attr"`
			} `xml:"extraports"`
			Ports []struct {
				ID    int `xml:"portid,attr"`
				State struct {
					State  string `xml:"state,attr"`
					Reason string `xml:"reason,attr"`
				} `xml:"state"`
			} `xml:"port"`
		} `xml:"ports"`
	} `xml:"host"`
}

// parseNmapXML reads nmap's XML report into one nmapHost per address.
func parseNmapXML(b []byte) (map[string]nmapHost, error) {
	var run nmapXML
	if err := xml.Unmarshal(b, &run); err != nil {
		return nil, fmt.Errorf("nmap XML: %w", err)
	}
	out := map[string]nmapHost{}
	for _, h := range run.Hosts {
		host := nmapHost{Up: h.Status.State == "up", Counts: map[string]int{}, Ports: map[string][]int{}, Reasons: map[int]string{}}
		for _, a := range h.Addresses {
			if a.Type == "ipv4" {
				host.Addr = a.Addr
			}
		}
		for _, e := range h.Ports.Extra {
			host.Counts[e.State] += e.Count
		}
		for _, p := range h.Ports.Ports {
			host.Counts[p.State.State]++
			host.Ports[p.State.State] = append(host.Ports[p.State.State], p.ID)
			host.Reasons[p.ID] = p.State.Reason
		}
		for _, ports := range host.Ports {
			slices.Sort(ports)
		}
		if host.Addr == "" {
			return nil, fmt.Errorf("nmap XML: a host without an IPv4 address")
		}
		out[host.Addr] = host
	}
	return out, nil
}

// runNmap runs nmap from ns against targets with args and returns its
// report per address. nmap is Debian's (buildroot/install-deps.sh): a
// scanner nobody here wrote, so a scan cannot share the product's
// blind spots.
func runNmap(t *testing.T, ns *qemu.Namespace, args []string, targets ...string) map[string]nmapHost {
	t.Helper()
	if _, err := exec.LookPath("nmap"); err != nil {
		t.Fatalf("nmap is missing: apt-get install nmap (buildroot/install-deps.sh installs it)")
	}
	// -n: no DNS; -Pn: scan even if the host ignores pings (a default-drop
	// firewall does); -oX -: the report on stdout.
	full := append([]string{"-n", "-Pn", "--reason", "-oX", "-"}, args...)
	full = append(full, targets...)
	start := time.Now()
	out, err := ns.Run("nmap", full...)
	if err != nil {
		t.Fatalf("nmap %s: %v", strings.Join(full, " "), err)
	}
	hosts, err := parseNmapXML([]byte(out))
	if err != nil {
		t.Fatalf("nmap %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	t.Logf("nmap %s: %v", strings.Join(full, " "), time.Since(start).Round(time.Second))
	for _, a := range targets {
		h, ok := hosts[a]
		if !ok || !h.Up {
			t.Fatalf("nmap %s: no report for %s (up %v)", strings.Join(full, " "), a, h.Up)
		}
		t.Logf("nmap: %s: %v listed %v", a, h.Counts, h.Ports)
	}
	return hosts
}

func TestParseNmapXML(t *testing.T) {
	// Trimmed from nmap 7.93 -sS -p- --reason -oX - output.
	const report = `<?xml version="1.0" encoding="UTF-8"?>
<nmaprun scanner="nmap" args="nmap -n -Pn -sS -p- --reason -oX - 192.0.2.10" version="7.93">
<scaninfo type="syn" protocol="tcp" numservices="65535" services="1-65535"/>
<host starttime="1" endtime="2"><status state="up" reason="user-set" reason_ttl="0"/>
<address addr="192.0.2.10" addrtype="ipv4"/>
<address addr="52:54:00:12:34:56" addrtype="mac"/>
<ports><extraports state="filtered" count="65533">
<extrareasons reason="no-response" count="65533" proto="tcp" ports="1-79,81-442,444-65535"/>
</extraports>
<port protocol="tcp" portid="80"><state state="open" reason="syn-ack" reason_ttl="63"/><service name="http" method="table" conf="3"/></port>
<port protocol="tcp" portid="443"><state state="closed" reason="reset" reason_ttl="63"/><service name="https" method="table" conf="3"/></port>
</ports></host>
<runstats><finished time="2"/><hosts up="1" down="0" total="1"/></runstats>
</nmaprun>`
	hosts, err := parseNmapXML([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	h := hosts["192.0.2.10"]
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"up", h.Up, true},
		{"total", h.Total(), 65535},
		{"filtered", h.Counts["filtered"], 65533},
		{"open", fmt.Sprint(h.Ports["open"]), "[80]"},
		{"closed", fmt.Sprint(h.Ports["closed"]), "[443]"},
		{"reason 443", h.Reasons[443], "reset"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, err := parseNmapXML([]byte("Starting Nmap")); err == nil {
		t.Error("text output parsed as a report")
	}
}
