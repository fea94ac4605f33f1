package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"magestack/init/firewall"
	"magestack/init/stackfile"
)

// TestFirewallFaces runs show/check/allow against a fresh network
// namespace, as an operator would on a host.
func TestFirewallFaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "msface-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		face := func(args ...string) (int, string, string) {
			var out, errb bytes.Buffer
			code := firewallFace(args, &out, &errb)
			return code, out.String(), errb.String()
		}
		config := []string{"-config", writeDefault(t), "-public", "eth0"}
		if code, out, _ := face(append([]string{"check"}, config...)...); code != 1 || !strings.Contains(out, "table inet magestack (missing)") {
			t.Errorf("check with no table: %d %q", code, out)
		}
		rs, err := firewall.Build(stackfile.Default(), firewall.HostView{PublicIfaces: []string{"eth0"}})
		if err != nil {
			t.Error(err)
			return
		}
		if err := firewall.New().Apply(context.Background(), rs); err != nil {
			t.Error(err)
			return
		}
		if code, out, errs := face(append([]string{"check"}, config...)...); code != 0 {
			t.Errorf("check after apply: %d %q %q", code, out, errs)
		}
		if code, out, _ := face("show"); code != 0 || out != firewall.Render(rs) {
			t.Errorf("show: %d\n%s", code, out)
		}
		if code, out, _ := face("show", "-o", "json"); code != 0 || !strings.Contains(out, `"rule": "iifname \"eth0\" ip daddr 172.16.0.30 tcp dport { 80, 443 } accept"`) || !strings.Contains(out, `"packets": 0`) {
			t.Errorf("show -o json: %d\n%s", code, out)
		}
		if code, _, errs := face("allow", "add", "192.0.2.7", "198.51.100.0/24"); code != 0 {
			t.Errorf("allow add: %d %s", code, errs)
		}
		if code, out, _ := face(append([]string{"check"}, config...)...); code != 1 || !strings.Contains(out, "+ elements = { 192.0.2.7, 198.51.100.0/24 }") {
			t.Errorf("check after allow-list drift: %d %q", code, out)
		}
		if code, _, errs := face("allow", "remove", "nonsense"); code != 2 || !strings.Contains(errs, "nonsense") {
			t.Errorf("allow remove nonsense: %d %q", code, errs)
		}
	}()
	<-done
}

func writeDefault(t *testing.T) string {
	p := t.TempDir() + "/stack.yaml"
	if err := os.WriteFile(p, stackfile.DefaultYAML(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVPNAddPeerFace(t *testing.T) {
	var out, errb bytes.Buffer
	secret := filepath.Join(t.TempDir(), "stack.secret")
	if code := secretsFace([]string{"init", "-o", secret}, io.Discard, &errb); code != 0 {
		t.Fatalf("secrets init: exit %d: %s", code, errb.String())
	}
	code := vpnFace([]string{"add-peer", "-config", writeDefault(t), "-secret", secret, "alice"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"[Interface]", "Address = 10.8.0.2/32", "Endpoint = 10.0.2.50:51820", "AllowedIPs = 10.8.0.0/24, 172.16.0.0/24", "- {name: alice, key: \""} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if code := vpnFace([]string{"add-peer"}, &out, &errb); code != 2 {
		t.Errorf("add-peer without a name: exit %d", code)
	}
}
