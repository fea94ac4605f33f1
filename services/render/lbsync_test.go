package render

import (
	"strings"
	"testing"

	"magestack/services/lbsync"
)

// The rendered haproxy.cfg and services/lbsync must agree on the section
// that holds the web servers, the admin socket and the check settings, or
// servers added at run time would land elsewhere or be checked differently.
func TestHAProxyConfigMatchesLBSync(t *testing.T) {
	for _, tc := range []struct {
		name, settings, section string
	}{
		{"plain", "", "\nbackend web\n"},
		{"varnish", "  lb: {count: 1, settings: {varnish: \"true\"}}\n", "\nlisten web_pool\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stack := parse(t, strings.Replace(threeWebs, "roles:\n", "roles:\n"+tc.settings, 1))
			cfg := content(t, renderRole(t, stack, testSecrets(t), "lb1"), "/etc/haproxy/haproxy.cfg")
			if !strings.Contains(cfg, tc.section) || !strings.Contains(cfg, tc.section[1:len(tc.section)-1]) {
				t.Errorf("haproxy.cfg has no %q section:\n%s", strings.TrimSpace(tc.section), cfg)
			}
			if got := WebBackend(stack); !strings.HasSuffix(strings.TrimSpace(tc.section), " "+got) {
				t.Errorf("WebBackend = %q, want the section %q", got, strings.TrimSpace(tc.section))
			}
			if !strings.Contains(cfg, "stats socket "+AdminSocket+" ") {
				t.Errorf("haproxy.cfg has no admin socket at %s:\n%s", AdminSocket, cfg)
			}
			sec := cfg[strings.Index(cfg, tc.section):]
			for _, w := range []string{"web1", "web2", "web3"} {
				line := sec[strings.Index(sec, "server "+w+" "):]
				line = line[:strings.IndexByte(line, '\n')]
				if !strings.HasSuffix(line, " "+lbsync.CheckArgs) {
					t.Errorf("server line %q does not end with lbsync's check settings %q", line, lbsync.CheckArgs)
				}
			}
			if !strings.Contains(sec, "timeout check ") {
				t.Errorf("the web section has no check timeout: slow checks on a loaded host would take every server out")
			}
			if !strings.Contains(sec, "balance roundrobin") {
				t.Errorf("the web section has no dynamic algorithm (roundrobin): add server would be refused")
			}
		})
	}
}
