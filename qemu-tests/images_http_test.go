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
// stopped, it starts monitor1 again from the cache, and says so. Rebooted
// once more with the server back but serving monitor under a digest that
// does not match, it refuses that file by name and keeps the cached image.
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
	startNetboot := func(images string) (*exec.Cmd, *qemu.LockedBuffer) {
		out := &qemu.LockedBuffer{}
		cmd := exec.Command(im.Binary, "netboot", "--interface", "eth0", "--stack", stackPath,
			"--image", filepath.Dir(im.Kernel), "--images", images, "--mode", "full", "--range", "10.79.0.100-10.79.0.149")
		cmd.Stdout, cmd.Stderr = out, out
		if err := srv.Start(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { t.Logf("netboot (%s) output:\n%s", images, out.String()) })
		for deadline := time.Now().Add(qemu.Scale(30 * time.Second)); !strings.Contains(out.String(), "role images and their manifest at"); {
			if time.Now().After(deadline) {
				t.Fatalf("netboot did not start serving role images:\n%s", out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		return cmd, out
	}
	stopNetboot := func(cmd *exec.Cmd) {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Logf("netboot exit: %v", err)
		}
	}
	netboot, out := startNetboot(images)

	disk := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	// Blank and sparse: magestack partitions and formats it; the default
	// volumes (db1, acc1: 1 GiB each) are preallocated on it.
	f.Truncate(4 << 30)
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

	// The image server goes away.
	stopNetboot(netboot)

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
	if err := second.SystemPowerdown(); err != nil {
		t.Fatal(err)
	}
	if code, err := second.Wait(qemu.Scale(3 * time.Minute)); err != nil || code != 0 {
		t.Fatalf("power off: exit %d, %v", code, err)
	}

	// The server comes back with a manifest whose monitor digest is not
	// that of the file it serves: the host downloads it, refuses it by
	// name and keeps running monitor from the image it had.
	bad := t.TempDir()
	if err := os.Symlink(filepath.Join(images, "monitor.squashfs"), filepath.Join(bad, "monitor.squashfs")); err != nil {
		t.Fatal(err)
	}
	monitor, _ := m.Lookup("monitor")
	monitor.SHA256 = strings.Repeat("ab", 32)
	if err := (&manifest.Manifest{Version: manifest.Version, Images: []manifest.Image{monitor}}).Write(bad); err != nil {
		t.Fatal(err)
	}
	netboot, out = startNetboot(bad)
	third := boot("imghttp3")
	for _, step := range []struct {
		what, pattern string
		within        time.Duration
	}{
		{"state disk", `disk: state on the data disk`, 3 * time.Minute},
		{"bad image refused by name, previous kept", `keeping the previously cached image\b.*\bimage=monitor\b.*image monitor \(http://` +
			regexp.QuoteMeta(imgServer) + `:8080/images/monitor.squashfs\): sha256 [0-9a-f]{64}, manifest says (ab){32}: refused, keeping the previously verified image`, 8 * time.Minute},
		{"monitor1 ready", monitorReady, 8 * time.Minute},
		{"stack ready", qemu.ReadyPattern, 6 * time.Minute},
	} {
		if _, err := third.Expect(step.within, step.pattern); err != nil {
			t.Fatalf("third boot (bad digest served): %s: %v", step.what, err)
		}
	}
	if !strings.Contains(out.String(), "role image requested") {
		t.Error("the third boot never asked for the changed monitor image")
	}
	stopNetboot(netboot)
}
