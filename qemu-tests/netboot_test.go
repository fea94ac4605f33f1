package qemutests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/init/stacksecret"
	"magestack/qemu-tests/qemu"
)

// netbootStack is the rack the PXE scenarios boot: two known hosts, no
// fixed addresses (they take them from DHCP).
const netbootStack = `stack: rack1
hosts:
  - {name: dh1, mac: "52:54:00:aa:00:01"}
  - {name: dh2, mac: "52:54:00:aa:00:02"}
public:
  vip: 10.77.0.50/24
roles:
  web: {count: 1}
`

// pxeRack is a test network with `magestack netboot` running on a
// provisioning namespace at 10.77.0.1.
type pxeRack struct {
	net    *qemu.Net
	server *qemu.Namespace
	out    *qemu.LockedBuffer
	image  qemu.Image
	// secretID is the public ID of the stack secret netboot hands out.
	secretID string
}

func startPXERack(t *testing.T, name string, mode string, extra ...string) *pxeRack {
	t.Helper()
	im := qemu.RequireImage(t)
	net := qemu.NewNet(t, name)
	srv := net.AddClient("prov", "10.77.0.1/24")
	dir := t.TempDir()
	stackPath := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(stackPath, []byte(netbootStack), 0o644); err != nil {
		t.Fatal(err)
	}
	// The rack's two hosts share one stack secret, handed out by netboot.
	secret, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	secretPath := filepath.Join(dir, "stack.secret")
	if err := secret.Save(secretPath, "rack1"); err != nil {
		t.Fatal(err)
	}
	out := &qemu.LockedBuffer{}
	args := append([]string{"netboot", "--interface", "eth0", "--stack", stackPath, "--image", filepath.Dir(im.Kernel),
		"--mode", mode, "--range", "10.77.0.100-10.77.0.149", "--secret", secretPath, "--cmdline", qemu.TestImageArg}, extra...)
	cmd := exec.Command(im.Binary, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := srv.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("netboot output:\n%s", out.String())
		}
	})
	r := &pxeRack{net: net, server: srv, out: out, image: im, secretID: secret.ID()}
	deadline := time.Now().Add(qemu.Scale(30 * time.Second))
	for !strings.Contains(out.String(), "scripts and images at") {
		if time.Now().After(deadline) {
			t.Fatalf("netboot did not start:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

// pxeVM boots a machine with no kernel from its NIC.
func (r *pxeRack) pxeVM(t *testing.T, name, mac string, fw qemu.Firmware, rom string) *qemu.VM {
	tap := r.net.AddTap("tap-" + name)
	return qemu.Start(t, qemu.Options{
		Name: name, Memory: 2048, RNG: true, Firmware: fw, Boot: "n", NetNS: r.net.NetNS(),
		NICs: []qemu.NIC{{Tap: tap, MAC: mac, ROM: rom, BootIndex: 1}},
	})
}

// status asks the running server for its live view, as staff would.
func (r *pxeRack) status(t *testing.T) []map[string]any {
	t.Helper()
	out, err := r.server.Run(r.image.Binary, "netboot", "status", "--server", "http://10.77.0.1:8080", "-o", "json")
	if err != nil {
		t.Fatalf("netboot status: %v\n%s", err, out)
	}
	var hosts []map[string]any
	if err := json.Unmarshal([]byte(out), &hosts); err != nil {
		t.Fatalf("netboot status -o json: %v\n%s", err, out)
	}
	return hosts
}

func (r *pxeRack) waitStep(t *testing.T, host, step string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(timeout))
	for time.Now().Before(deadline) {
		for _, h := range r.status(t) {
			steps, _ := h["steps"].(map[string]any)
			if h["host"] == host && steps[step] != nil {
				return
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("netboot status never showed %s at step %q: %+v", host, step, r.status(t))
}

// TestNetbootIPXEFullDHCPTwoHostsAndUnknownMAC: two machines with QEMU's
// own iPXE ROM boot at once through full-DHCP netboot, each into its own
// identity; a machine with an unknown MAC gets nothing.
func TestNetbootIPXEFullDHCPTwoHostsAndUnknownMAC(t *testing.T) {
	qemu.Require(t)
	r := startPXERack(t, "pxe", "full")
	vm1 := r.pxeVM(t, "dh1", "52:54:00:aa:00:01", qemu.BIOS, "")
	vm2 := r.pxeVM(t, "dh2", "52:54:00:aa:00:02", qemu.BIOS, "")
	stranger := r.pxeVM(t, "stranger", "52:54:00:aa:00:99", qemu.BIOS, "")

	for _, c := range []struct {
		vm   *qemu.VM
		host string
	}{{vm1, "dh1"}, {vm2, "dh2"}} {
		if _, err := c.vm.Expect(3*time.Minute, `magestack netboot: `+c.host); err != nil {
			t.Fatalf("%s: iPXE did not run its boot script: %v", c.host, err)
		}
		if _, err := c.vm.Expect(2*time.Minute, `hostname set name=`+c.host); err != nil {
			t.Fatalf("%s: host did not take its name from the stack file: %v", c.host, err)
		}
		// The secret's initrd arrived: both hosts derive from one secret.
		if _, err := c.vm.Expect(2*time.Minute, `secrets: stack secret in place id=`+r.secretID+` source=provided`); err != nil {
			t.Fatalf("%s: the stack secret netboot hands out was not used: %v", c.host, err)
		}
		if _, err := c.vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
			t.Fatalf("%s: %v", c.host, err)
		}
	}
	r.waitStep(t, "dh1", "ready", 30*time.Second)
	r.waitStep(t, "dh2", "ready", 30*time.Second)
	for _, h := range r.status(t) {
		if h["mac"] == "52:54:00:aa:00:99" {
			if steps, _ := h["steps"].(map[string]any); len(steps) > 0 {
				t.Errorf("unknown MAC made progress: %v", h)
			}
		}
	}
	if strings.Contains(stranger.Console(), "magestack") {
		t.Errorf("the unknown machine booted something:\n%s", stranger.Console())
	}
	t.Logf("netboot live view:\n%s", r.out.String())
}

// TestNetbootUEFIChainloadsIPXEOverTFTP: OVMF's own PXE (no iPXE option
// ROM) fetches ipxe.efi over TFTP, which then boots the host over HTTP.
func TestNetbootUEFIChainloadsIPXEOverTFTP(t *testing.T) {
	qemu.Require(t)
	if _, err := os.Stat(qemu.OVMFPath); err != nil {
		t.Fatalf("UEFI firmware missing (%v): install Debian's ovmf", err)
	}
	r := startPXERack(t, "uefi", "full")
	vm := r.pxeVM(t, "dh1", "52:54:00:aa:00:01", qemu.UEFI, "none")
	if _, err := vm.Expect(8*time.Minute, `magestack netboot: dh1`); err != nil {
		t.Fatalf("ipxe.efi did not run the boot script: %v", err)
	}
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	r.waitStep(t, "dh1", "tftp", 10*time.Second)
	r.waitStep(t, "dh1", "ready", 30*time.Second)
}

// TestNetbootProxyDHCPBesideDnsmasq: addresses come from the site's DHCP
// server (dnsmasq), boot information from magestack netboot in proxy mode.
func TestNetbootProxyDHCPBesideDnsmasq(t *testing.T) {
	qemu.Require(t)
	r := startPXERack(t, "proxy", "proxy")
	site := r.net.AddClient("site", "10.77.0.2/24")
	dnsmasq := exec.Command("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0",
		"--bind-interfaces", "--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,10m", "--dhcp-leasefile=/dev/null",
		"--log-dhcp")
	var dlog qemu.LockedBuffer
	dnsmasq.Stdout, dnsmasq.Stderr = &dlog, &dlog
	if err := site.Start(dnsmasq); err != nil {
		t.Fatal(err)
	}
	vm := r.pxeVM(t, "dh1", "52:54:00:aa:00:01", qemu.BIOS, "")
	if _, err := vm.Expect(3*time.Minute, `magestack netboot: dh1`); err != nil {
		t.Fatalf("iPXE did not get the script from the proxy: %v\ndnsmasq:\n%s", err, dlog.String())
	}
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatalf("%v\ndnsmasq:\n%s", err, dlog.String())
	}
	if !strings.Contains(dlog.String(), "DHCPACK") || !strings.Contains(dlog.String(), "52:54:00:aa:00:01") {
		t.Errorf("dnsmasq never leased to the host:\n%s", dlog.String())
	}
	r.waitStep(t, "dh1", "ready", 30*time.Second)
	for _, h := range r.status(t) {
		if addr, _ := h["addr"].(string); addr != "" {
			t.Errorf("proxy mode handed out address %s to %v", addr, h["mac"])
		}
	}
}

// TestNetbootDiscovery: with --discover, a machine the stack file does not
// know boots into discovery, reports its hardware to the boot server and
// runs nothing else.
func TestNetbootDiscovery(t *testing.T) {
	qemu.Require(t)
	r := startPXERack(t, "disc", "full", "--discover")
	vm := r.pxeVM(t, "stranger", "52:54:00:aa:00:77", qemu.BIOS, "")
	if _, err := vm.Expect(6*time.Minute, `magestack: discovery reported`); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Console(), "unit started") {
		t.Error("a discovery boot started roles")
	}
	for _, h := range r.status(t) {
		if h["mac"] != "52:54:00:aa:00:77" {
			continue
		}
		hw, _ := h["hardware"].(map[string]any)
		nics, _ := hw["nics"].([]any)
		if len(nics) == 0 || hw["memory_bytes"] == nil || hw["cpus"] == nil {
			t.Fatalf("discovered hardware incomplete: %v", hw)
		}
		t.Logf("discovered: %v", hw)
		return
	}
	t.Fatalf("netboot status has no discovered machine: %v", r.status(t))
}
