package qemu

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHarnessPXEBoot proves the harness's network-boot plumbing without the
// product: a VM with no -kernel on a tap boots with QEMU's iPXE ROM from
// dnsmasq (DHCP, in the test's namespace) and an HTTP server the test runs
// inside the same namespace, into nopinit. It exercises Boot "n", taps in a
// namespace, the bridge's checksum setting and console watching of firmware.
func TestHarnessPXEBoot(t *testing.T) {
	Require(t)
	for _, fw := range []Firmware{BIOS, UEFI} {
		name := "bios"
		if fw == UEFI {
			name = "uefi"
		}
		t.Run(name, func(t *testing.T) { testPXEBoot(t, fw) })
	}
}

func testPXEBoot(t *testing.T, fw Firmware) {
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Fatalf("%s=1 but dnsmasq is missing (apt-get install dnsmasq-base): %v", EnvQEMU, err)
	}
	const server = "192.0.2.1"
	n := NewNet(t, "pxe")
	n.AddAddr(BridgeName, server+"/24")
	tap := n.AddTap("tap0")

	dir := t.TempDir()
	initrd := nopInitramfs(t, dir, nil)
	kernel := nopKernel(t)

	// HTTP: the listener is created inside the namespace, the server
	// goroutines may run anywhere (the socket keeps its namespace).
	var mu sync.Mutex
	var served []string
	mux := http.NewServeMux()
	mux.HandleFunc("/boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "#!ipxe\nkernel http://%s:8080/vmlinuz initrd=initramfs.img console=ttyS0 quiet panic=-1\ninitrd http://%s:8080/initramfs.img\nboot\n", server, server)
	})
	mux.HandleFunc("/vmlinuz", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, kernel) })
	mux.HandleFunc("/initramfs.img", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, initrd) })
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served = append(served, r.URL.Path)
		mu.Unlock()
		mux.ServeHTTP(w, r)
	})
	var ln net.Listener
	if err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", server+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: logged, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// DHCP: iPXE says "iPXE" in its user class and gets the script URL.
	leases := filepath.Join(dir, "leases")
	dhcp := exec.Command(dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface="+BridgeName, "--bind-interfaces", "--user=root",
		"--dhcp-leasefile="+leases, "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-range=192.0.2.50,192.0.2.99,1h",
		"--dhcp-userclass=set:ipxe,iPXE",
		"--dhcp-boot=tag:ipxe,http://"+server+":8080/boot.ipxe",
		"--log-dhcp")
	dhcpLog, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer dhcpLog.Close()
	dhcp.Stdout, dhcp.Stderr = dhcpLog, dhcpLog
	if err := n.Start(dhcp); err != nil {
		t.Fatal(err)
	}
	// iPXE gives up DHCP after about 15 s of silence and the firmware
	// then moves on (UEFI resets, and QEMU exits): start the VM only once
	// dnsmasq serves, so a slow start on a loaded machine is not a failure.
	if err := waitForLog(dhcpLog.Name(), "DHCP, IP range", 30*time.Second); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}

	vm := Start(t, Options{
		Boot: "n", Memory: 512, NetNS: n.NetNS(), Firmware: fw,
		NICs: []NIC{{Tap: tap, MAC: "52:54:00:aa:00:02", BootIndex: 1}},
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(dhcpLog.Name())
			t.Logf("dnsmasq log:\n%s", b)
		}
	})
	if _, err := vm.Expect(2*time.Minute, `iPXE`); err != nil {
		t.Fatalf("no iPXE ROM on the console: %v", err)
	}
	if _, err := vm.Expect(3*time.Minute, `boot\.ipxe`); err != nil {
		t.Fatalf("iPXE did not fetch the script (DHCP over the bridge failed?): %v", err)
	}
	if _, err := vm.Expect(3*time.Minute, NopInitPattern); err != nil {
		t.Fatal(err)
	}
	want := map[Firmware]string{BIOS: "bios", UEFI: "uefi"}[fw]
	if _, err := vm.Expect(time.Minute, `nopinit: firmware=`+want); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(served)
	mu.Unlock()
	if got != "[/boot.ipxe /vmlinuz /initramfs.img]" {
		t.Fatalf("HTTP requests %s, want script, kernel, initramfs", got)
	}
	b, err := os.ReadFile(leases)
	if err != nil || len(b) == 0 {
		t.Fatalf("dnsmasq recorded no lease: %v", err)
	}
	t.Logf("lease: %s", b)
}

// waitForLog waits until the file at path contains text, within limit
// (scaled); the error quotes what the file holds.
func waitForLog(path, text string, limit time.Duration) error {
	deadline := time.Now().Add(Scale(limit))
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), text) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q within %v:\n%s", text, limit, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
