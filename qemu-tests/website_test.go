package qemutests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/init/stackfile"
	"magestack/qemu-tests/qemu"
)

// websiteStack is the default stack with every role but fw on its real
// Debian image (images/recipes; fw keeps busybox) from the
// MAGESTACK-IMAGES disk.
const websiteStack = `
stack: website
hosts:
  - name: dh1
    mac: "52:54:00:12:34:56"
public:
  vip: 10.0.2.50/24
internal: 172.16.0.0/24
roles:
  lb: {count: 1, image: lb, memory: 256MiB}
  web: {count: 1, image: web, memory: 512MiB}
  db: {count: 1, image: db, memory: 768MiB}
  mail: {count: 1, image: mail}
  acc: {count: 1, image: acc}
  monitor: {count: 1, image: monitor}
`

// TestWebsiteEndToEnd boots the stack with the role images attached as a
// read-only virtio disk and asks the default site's PHP page, through the
// public address (fw's DNAT -> lb1's HAProxy -> web1's nginx + PHP-FPM), to
// write a row to MariaDB on db1.i and read it back.
func TestWebsiteEndToEnd(t *testing.T) {
	qemu.Require(t)
	vm, base := startWebsiteVM(t, "website", websiteStack, 3072)

	for _, in := range []string{"db1", "web1", "lb1"} {
		if _, err := vm.Expect(8*time.Minute, unitEvent("ready", in)); err != nil {
			t.Fatalf("%s never became ready: %v", in, err)
		}
	}
	ready, err := vm.Expect(4*time.Minute, qemu.ReadyPattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stack ready at guest uptime %s ms", ready[1])
	// The plain page first (nginx + PHP-FPM via HAProxy), then the database
	// round trip; two checks write two distinct rows.
	waitBody(t, base, "magestack default site on web1", 2*time.Minute)
	first := waitBody(t, base+"?check=1", "db check ok", time.Minute)
	second := waitBody(t, base+"?check=1", "db check ok", time.Minute)
	t.Logf("through the public address: %q", second)
	if first == second {
		t.Errorf("two checks returned the same row: %q", first)
	}
	if strings.Contains(vm.Console(), "image refused") {
		t.Errorf("an image failed verification:\n%s", vm.Console())
	}
}

// imagesDisk is build/images.img, the MAGESTACK-IMAGES disk `make images`
// writes; the test is skipped without it.
func imagesDisk(t *testing.T) string {
	t.Helper()
	root, err := qemu.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(root, "build/images.img")
	if _, err := os.Stat(disk); err != nil {
		t.Skipf("no role images disk %s (make images): %v", disk, err)
	}
	return disk
}

// startWebsiteVM boots one host on stackYAML (served to it over HTTP from
// the host's loopback) with the role images disk attached, a console shell,
// and the guest's port 80 forwarded to a loopback port: base is the
// website's URL as a public client sees it.
func startWebsiteVM(t *testing.T, name, stackYAML string, memoryMiB int) (vm *qemu.VM, base string) {
	t.Helper()
	disk := imagesDisk(t)
	if _, err := stackfile.Parse(name+".yaml", []byte(stackYAML)); err != nil {
		t.Fatalf("test stack is invalid: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, stackYAML)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	im := qemu.RequireImage(t)
	opts := im.Options(fmt.Sprintf("magestack.console=shell magestack.config=http://10.0.2.2:%d/stack.yaml", l.Addr().(*net.TCPAddr).Port))
	opts.Name = name
	opts.Memory = max(opts.Memory, memoryMiB)
	opts.Drives = append(opts.Drives, qemu.Drive{File: disk, Format: "raw", ReadOnly: true})
	if len(opts.NICs) != 1 || !opts.NICs[0].User {
		t.Fatalf("image options: want one user-mode NIC, got %+v", opts.NICs)
	}
	port := freeLoopbackPort(t)
	opts.NICs[0].HostFwd = []string{fmt.Sprintf("tcp:127.0.0.1:%d-:80", port)}
	return qemu.Start(t, opts), fmt.Sprintf("http://127.0.0.1:%d/", port)
}
