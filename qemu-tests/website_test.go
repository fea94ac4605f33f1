package qemutests

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/stackfile"
	"magestack/init/stacksecret"
	"magestack/qemu-tests/qemu"
)

// TestWebsiteEndToEnd boots what `make run` boots: the built-in default
// stack, no image named, so every role runs its real Debian image from the
// MAGESTACK-IMAGES disk, with a blank data disk. Through the public address
// (fw's DNAT -> lb1's HAProxy -> Varnish -> web1's nginx + PHP-FPM) the
// default site's PHP page answers on 80 and 443, and writes a row to
// MariaDB on db1.i and reads it back. The certificate on 443 is the one
// derived from the stack secret the host was booted with, so every host of
// the stack serves the same one.
func TestWebsiteEndToEnd(t *testing.T) {
	qemu.Require(t)
	secret, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	vm, base, tlsBase := startDefaultStackVM(t, "website", secret)

	insts, err := stackfile.Default().Instances()
	if err != nil {
		t.Fatal(err)
	}
	ready, err := vm.Expect(10*time.Minute, qemu.ReadyPattern)
	if err != nil {
		t.Fatal(err)
	}
	checkRolesReady(t, vm.Console(), insts)
	t.Logf("stack ready at guest uptime %s ms", ready[1])
	// Every role runs its real image (fw's work is the host's: built in).
	for _, in := range insts {
		want := in.Role
		if in.Role == "fw" {
			want = "busybox"
		}
		if !consoleHasLine(vm.Console(), "role: image in use", "role="+in.Name+" ", "image="+want+" ") {
			t.Errorf("%s did not start from its image %q", in.Name, want)
		}
	}
	// The plain page first (nginx + PHP-FPM via HAProxy), then the database
	// round trip; two checks write two distinct rows.
	waitBody(t, base, "magestack default site on web1", 2*time.Minute)
	first := waitBody(t, base+"?check=1", "db check ok", time.Minute)
	second := waitBody(t, base+"?check=1", "db check ok", time.Minute)
	t.Logf("through the public address: %q", second)
	if first == second {
		t.Errorf("two checks returned the same row: %q", first)
	}

	key, err := secret.ECDSAKey("tls-lb-tls")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Get(tlsBase + "?check=1")
	if err != nil {
		t.Fatalf("https: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "db check ok") {
		t.Errorf("https ?check=1 answered %d %q", resp.StatusCode, body)
	}
	if certs := resp.TLS.PeerCertificates; len(certs) == 0 || !key.PublicKey.Equal(certs[0].PublicKey) {
		t.Errorf("the certificate on 443 is not the one derived from the stack secret")
	}
	// db1's, acc1's and mail1's data are DRBD volumes on the data disk (a
	// single host: Primary, unreplicated), and db1's rows outlive its
	// restart.
	vols := consoleRun(t, vm, "magestack volumes")
	t.Logf("magestack volumes:\n%s", vols)
	for name, size := range map[string]string{"db1": `1\.00G`, "acc1": `1\.00G`, "mail1": `256\.0M`} {
		if !regexp.MustCompile(`(?m)^` + name + `\s+` + size + `\s+\S+\s+Primary\s+UpToDate\s+\S+\s+unreplicated`).MatchString(vols) {
			t.Errorf("%s is not a Primary, UpToDate volume of %s:\n%s", name, size, vols)
		}
	}
	// Postfix's queue is on mail1's volume (made from the image's on the
	// first start), and Postfix uses it.
	queue := consoleRun(t, vm, "ls -ld /run/magestack/volumes/mail1/postfix/active /run/magestack/volumes/mail1/postfix/maildrop")
	t.Logf("mail1's queue on its volume:\n%s", queue)
	if !strings.Contains(queue, "postfix/active") || !strings.Contains(queue, "postfix/maildrop") {
		t.Errorf("the mail queue is not on mail1's volume: %q", queue)
	}
	// acc's root is kept on its volume: a file written through acc's own
	// root (as a package a user installs) is there after a restart.
	consoleRun(t, vm, `pid=$(magestack status | awk '$1=="acc1" && $2=="ready"{print $3}'); echo kept > /proc/$pid/root/opt/installed-by-a-user && sync`)
	consoleRun(t, vm, "magestack restart acc1")
	kept := consoleRunUntil(t, vm, `pid=$(magestack status | awk '$1=="acc1" && $2=="ready"{print $3}'); [ -n "$pid" ] && cat /proc/$pid/root/opt/installed-by-a-user 2>&1; true`,
		`(?m)^kept`, 3*time.Minute)
	t.Logf("acc1's root after a restart: %q", strings.TrimSpace(kept))
	consoleRun(t, vm, "magestack restart db1")
	third := waitBody(t, base+"?check=1", "db check ok", 3*time.Minute)
	// Rows 1-3 came from the checks above (http twice, https once).
	if !strings.Contains(third, "row=4 ") {
		t.Errorf("after restarting db1 the next row is not row 4 (data lost?): %q", third)
	}
	if strings.Contains(vm.Console(), "image refused") {
		t.Errorf("an image failed verification:\n%s", vm.Console())
	}
}

// startDefaultStackVM boots the built-in default stack as `make run` does:
// real images from the images disk, a blank sparse data disk, the host's
// stack secret in its initramfs, ports 80 and 443 forwarded to loopback.
// It returns the website's http and https URLs.
func startDefaultStackVM(t *testing.T, name string, secret stacksecret.Secret) (vm *qemu.VM, base, tlsBase string) {
	t.Helper()
	disk := imagesDisk(t)
	im, err := qemu.RequireImage(t).WithStackSecret(t.TempDir(), secret.Marshal("default"))
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 4<<30); err != nil {
		t.Fatal(err)
	}
	opts := im.Options("magestack.console=shell").RealImages()
	opts.Name = name
	opts.Memory = 3072
	opts.Drives = append(opts.Drives, qemu.Drive{File: disk, Format: "raw", ReadOnly: true}, qemu.Drive{File: data, Format: "raw"})
	httpPort, httpsPort := freeLoopbackPort(t), freeLoopbackPort(t)
	opts.NICs[0].HostFwd = []string{fmt.Sprintf("tcp:127.0.0.1:%d-:80", httpPort), fmt.Sprintf("tcp:127.0.0.1:%d-:443", httpsPort)}
	return qemu.Start(t, opts), fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("https://127.0.0.1:%d/", httpsPort)
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

// consoleHasLine reports whether one console line holds every part.
func consoleHasLine(console string, parts ...string) bool {
	for _, l := range strings.Split(console, "\n") {
		l += " "
		found := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				found = false
				break
			}
		}
		if found {
			return true
		}
	}
	return false
}
