package qemutests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/images/manifest"
	"magestack/qemu-tests/qemu"
)

// imagesHTTPStack runs monitor on its real Debian image; every other role
// keeps the built-in busybox image, so monitor is the one image the host
// needs from the server.
const imagesHTTPStack = `stack: imgshop
hosts:
  - {name: dh1, mac: "52:54:00:12:34:56"}
public:
  vip: 10.79.0.50/24
internal: 172.16.0.0/24
roles:
  monitor: {count: 1, image: monitor}
`

const (
	imgServer = "10.79.0.1"
	imgGuest  = "10.79.0.10"
)

// TestImagesOverHTTPCachedForReboot: a host with a blank data disk and no
// MAGESTACK-IMAGES disk fetches the one role image it runs (monitor) from
// `magestack netboot` over HTTP, verifies it against the manifest, caches
// it on the data disk and starts monitor1 from it. Rebooted with the server
// stopped, it starts monitor1 again from the cache, and says so.
func TestImagesOverHTTPCachedForReboot(t *testing.T) {
	qemu.Require(t)
	im := qemu.RequireImage(t)
	root, err := qemu.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(root, "build/images")
	m, err := manifest.Read(images)
	if err != nil {
		t.Skipf("no role images (make images): %v", err)
	}
	if _, ok := m.Lookup("monitor"); !ok {
		t.Skipf("%s lists no monitor image (make images)", images)
	}

	n := qemu.NewNet(t, "imghttp")
	tap := n.AddTap("tap-img")
	srv := n.AddClient("imgsrv", imgServer+"/24")
	dir := t.TempDir()
	stackPath := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(stackPath, []byte(imagesHTTPStack), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &qemu.LockedBuffer{}
	netboot := exec.Command(im.Binary, "netboot", "--interface", "eth0", "--stack", stackPath,
		"--image", filepath.Dir(im.Kernel), "--images", images, "--mode", "full", "--range", "10.79.0.100-10.79.0.149")
	netboot.Stdout, netboot.Stderr = out, out
	if err := srv.Start(netboot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { t.Logf("netboot output:\n%s", out.String()) })
	for deadline := time.Now().Add(qemu.Scale(30 * time.Second)); !strings.Contains(out.String(), "role images and their manifest at"); {
		if time.Now().After(deadline) {
			t.Fatalf("netboot did not start serving role images:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	disk := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30) // blank and sparse: magestack partitions and formats it
	f.Close()

	boot := func(name string) *qemu.VM {
		opts := im.Options(fmt.Sprintf("ip=%s::%s:255.255.255.0:dh1:eth0:off magestack.host=dh1 "+
			"magestack.config=http://%s:8080/stack.yaml magestack.images=http://%s:8080/images",
			imgGuest, imgServer, imgServer, imgServer))
		opts.Name = name
		opts.NetNS = n.NetNS()
		opts.NICs = []qemu.NIC{{Tap: tap, MAC: "52:54:00:12:34:56", ROM: "none"}}
		opts.Drives = []qemu.Drive{{File: disk, Format: "raw"}}
		vm := qemu.Start(t, opts)
		t.Cleanup(func() {
			var lines []string
			for _, l := range strings.Split(vm.Console(), "\n") {
				if strings.Contains(l, "image") || strings.Contains(l, "stack ready") || strings.Contains(l, "monitor1") {
					lines = append(lines, l)
				}
			}
			t.Logf("%s: image lines on the console:\n%s", name, strings.Join(lines, "\n"))
		})
		return vm
	}
	monitorReady := unitEvent("ready", "monitor1")

	first := boot("imghttp1")
	for _, step := range []struct {
		what, pattern string
		within        time.Duration
	}{
		{"state disk", `disk: state on the data disk`, 3 * time.Minute},
		{"monitor image fetched from the server", `image fetched\b.*\bimage=monitor\b`, 6 * time.Minute},
		{"images published", `images: verified and published images=monitor\b`, time.Minute},
		{"monitor1 ready", monitorReady, 8 * time.Minute},
		{"stack ready", qemu.ReadyPattern, 6 * time.Minute},
	} {
		if _, err := first.Expect(step.within, step.pattern); err != nil {
			t.Fatalf("first boot: %s: %v", step.what, err)
		}
	}
	requested := regexp.MustCompile(`role image requested"? image=(\S+)`).FindAllStringSubmatch(out.String(), -1)
	if len(requested) == 0 {
		t.Fatalf("the server never served an image")
	}
	for _, r := range requested {
		if r[1] != "monitor" {
			t.Errorf("the host fetched image %s, which none of its roles runs", r[1])
		}
	}
	if err := first.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	if code, err := first.Wait(qemu.Scale(3 * time.Minute)); err != nil || code != 0 {
		t.Fatalf("power off: exit %d, %v", code, err)
	}

	// The image server goes away for good.
	if err := netboot.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := netboot.Wait(); err != nil {
		t.Logf("netboot exit: %v", err)
	}

	second := boot("imghttp2")
	for _, step := range []struct {
		what, pattern string
		within        time.Duration
	}{
		{"state disk", `disk: state on the data disk`, 3 * time.Minute},
		{"server unreachable said", `image server unreachable; using the cached images`, 6 * time.Minute},
		{"monitor from the cache", `image from cache\b.*\bimage=monitor\b.*\bserver=unreachable`, 2 * time.Minute},
		{"monitor1 ready", monitorReady, 8 * time.Minute},
		{"stack ready", qemu.ReadyPattern, 6 * time.Minute},
	} {
		if _, err := second.Expect(step.within, step.pattern); err != nil {
			t.Fatalf("second boot (server stopped): %s: %v", step.what, err)
		}
	}
	if strings.Contains(second.Console(), "image fetched") {
		t.Error("the second boot fetched an image with the server stopped")
	}
}
