package lbsync

import (
	"net/netip"
	"strings"
	"testing"
)

// Answers as HAProxy 2.6.12 gives them.
const serversState = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 web1 172.16.0.11 2 0 1 1 2 8 2 0 6 0 0 0 - 80 - 0 0 - - 0
3 web 2 web2 172.16.0.12 0 1 1 1 0 1 0 0 2 0 0 0 - 80 - 0 0 - - 0
3 web 3 web3 172.16.0.13 2 8 1 1 0 1 0 2 6 0 0 0 - 80 - 0 0 - - 0

`

func TestParseServersState(t *testing.T) {
	got, err := parseServersState(serversState, "web")
	if err != nil {
		t.Fatal(err)
	}
	want := []ServerState{
		{Name: "web1", Addr: netip.MustParseAddrPort("172.16.0.11:80"), OpState: 2, Admin: 0},
		{Name: "web2", Addr: netip.MustParseAddrPort("172.16.0.12:80"), OpState: 0, Admin: 1},
		{Name: "web3", Addr: netip.MustParseAddrPort("172.16.0.13:80"), OpState: 2, Admin: 8},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("server %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if !got[0].Up() || got[1].Up() || !got[1].Maint() || !got[2].Drain() {
		t.Errorf("state helpers wrong: %+v", got)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"refusal", "Can't find backend.\n", "unexpected answer"},
		{"empty", "", "no header"},
		{"short line", "1\n# be_id be_name srv_name srv_addr srv_port srv_op_state srv_admin_state\n3 web\n", "no srv_name field"},
		{"bad address", strings.Replace(serversState, "172.16.0.11", "nope", 1), `address "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseServersState(tc.in, "web"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseSessions(t *testing.T) {
	stat := "# pxname,svname,qcur,qmax,scur,smax\nhttp,FRONTEND,,,7,9\nweb,web1,0,0,3,5\nweb,web2,2,2,1,1\nweb,BACKEND,0,0,4,9\n"
	for _, tc := range []struct {
		server       string
		cur, queued  int
		wantErrMatch string
	}{{"web1", 3, 0, ""}, {"web2", 1, 2, ""}, {"web9", 0, 0, "no server web/web9"}} {
		cur, q, err := parseSessions(stat, "web", tc.server)
		if tc.wantErrMatch != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErrMatch) {
				t.Errorf("%s: err = %v, want %q", tc.server, err, tc.wantErrMatch)
			}
			continue
		}
		if err != nil || cur != tc.cur || q != tc.queued {
			t.Errorf("%s: = %d, %d, %v; want %d, %d", tc.server, cur, q, err, tc.cur, tc.queued)
		}
	}
	if _, _, err := parseSessions("Unknown command.\n", "web", "web1"); err == nil {
		t.Error("a refusal parsed as stats")
	}
}
