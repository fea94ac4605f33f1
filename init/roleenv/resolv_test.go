package roleenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoleResolvConf(t *testing.T) {
	for _, tt := range []struct {
		name, host string
		want       []string // lines after the comment; nil: ""
	}{
		{"dhcp servers and search", "nameserver 10.0.2.3\nsearch example.net\n", []string{"nameserver 10.0.2.3", "search example.net"}},
		{"loopback servers are the role's own: left out", "nameserver 127.0.0.53\nnameserver 192.0.2.1\noptions edns0\n", []string{"nameserver 192.0.2.1", "options edns0"}},
		{"only loopback: keep the image's file", "nameserver 127.0.0.1\n", nil},
		{"junk and comments dropped", "# c\nnameserver not-an-ip\nsortlist 1.2.3.4\nnameserver 2001:db8::1\n", []string{"nameserver 2001:db8::1"}},
		{"empty", "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(p, []byte(tt.host), 0o644); err != nil {
				t.Fatal(err)
			}
			got := RoleResolvConf(p)
			if tt.want == nil {
				if got != "" {
					t.Fatalf("got %q, want none", got)
				}
				return
			}
			lines := strings.Split(strings.TrimSpace(got), "\n")
			if len(lines) < 1 || !strings.HasPrefix(lines[0], "#") || strings.Join(lines[1:], "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got:\n%s\nwant lines %q", got, tt.want)
			}
		})
	}
	if RoleResolvConf(filepath.Join(t.TempDir(), "missing")) != "" {
		t.Error("a missing host file gave content")
	}
}
