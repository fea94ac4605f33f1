package qemutests

import (
	"strings"
	"testing"
	"time"

	"magestack/qemu-tests/qemu"
)

// TestConfigLiveChange: a running host follows its Git repository. Scaling
// web from 1 to 2 in a commit starts web2 within the poll interval and
// touches no other role; a broken commit is rejected with its position and
// the running stack is left as it was.
func TestConfigLiveChange(t *testing.T) {
	qemu.Require(t)
	repo := newCfgGitRepo(t)
	base := cfgStack("liveshop") + "config:\n  poll: 3s\n"
	repo.commit(base)
	n := qemu.NewNet(t, "cfglive")
	tap := n.AddTap("tap-live")
	srv := n.AddClient("gitsrv", cfgServer+"/24")
	repo.serve(srv)

	vm := cfgBoot(t, n, tap, "live")
	if _, err := vm.Expect(8*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}

	scaled := strings.Replace(base, "web: {count: 1}", "web: {count: 2}", 1)
	if scaled == base {
		t.Fatal("test stack has no `web: {count: 1}` line to scale")
	}
	commit := repo.commit(scaled)
	if _, err := vm.Expect(2*time.Minute, `unit ready unit=web2`); err != nil {
		t.Fatalf("web2 did not start after commit %s: %v", commit[:12], err)
	}
	if _, err := vm.Expect(time.Minute, `config revision applied revision=`+commit[:12]); err != nil {
		t.Fatal(err)
	}
	// Only web2 was touched: no other unit stopped or started since ready.
	after := vm.Console()[strings.Index(vm.Console(), "magestack: stack ready"):]
	for _, unit := range []string{"fw1", "mail1", "db1", "web1", "lb1", "acc1", "monitor1"} {
		if strings.Contains(after, "unit started unit="+unit+" ") || strings.Contains(after, "unit stopped unit="+unit+" ") {
			t.Errorf("%s was restarted by a change that only scaled web", unit)
		}
	}

	broken := strings.Replace(scaled, "roles:", "rolez:", 1)
	bad := repo.commit(broken)
	if _, err := vm.Expect(2*time.Minute, `config revision rejected; the running stack is unchanged revision=`+bad[:12]+`.*rolez: unknown key`); err != nil {
		t.Fatal(err)
	}
	if err := vm.ExpectNot(5*time.Second, `unit stopped unit=`); err != nil {
		t.Errorf("a rejected revision stopped something: %v", err)
	}
}
