package netboot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/pin/tftp/v3"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
	"magestack/init/stacksecret"
)

const testStack = `stack: rack1
hosts:
  - {name: dh1, mac: "52:54:00:aa:00:01", pair: dh2}
  - {name: dh2, mac: "52:54:00:aa:00:02", address: 10.77.0.12/24, gateway: 10.77.0.1, pair: dh1}
`

// inNS runs fn inside ns.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	return nsdo.Do(ns, fn)
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// bootNet makes a server namespace (10.77.0.1/24 on nbsrv0) and a client
// namespace whose veth has the given MAC.
func bootNet(t *testing.T, clientMAC string) (srv, cli netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	s, c := "nbs"+id, "nbc"+id
	sh(t, "ip", "netns", "add", s)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", s).Run() })
	sh(t, "ip", "netns", "add", c)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c).Run() })
	sh(t, "ip", "-n", s, "link", "add", "nbsrv0", "type", "veth", "peer", "name", "nbcli0", "netns", c)
	sh(t, "ip", "-n", c, "link", "set", "nbcli0", "address", clientMAC)
	sh(t, "ip", "-n", s, "addr", "add", "10.77.0.1/24", "dev", "nbsrv0")
	sh(t, "ip", "-n", s, "link", "set", "nbsrv0", "up")
	sh(t, "ip", "-n", s, "link", "set", "lo", "up")
	sh(t, "ip", "-n", c, "link", "set", "nbcli0", "up")
	var err error
	if srv, err = netns.GetFromName(s); err != nil {
		t.Fatal(err)
	}
	if cli, err = netns.GetFromName(c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli
}

func testFiles(t *testing.T) (stack, images, boot string) {
	dir := t.TempDir()
	stack = filepath.Join(dir, "stack.yaml")
	os.WriteFile(stack, []byte(testStack), 0o644)
	images = filepath.Join(dir, "image")
	boot = filepath.Join(dir, "ipxe")
	os.Mkdir(images, 0o755)
	os.Mkdir(boot, 0o755)
	os.WriteFile(filepath.Join(images, "vmlinuz"), bytes.Repeat([]byte("K"), 100000), 0o644)
	os.WriteFile(filepath.Join(images, "initramfs.img"), bytes.Repeat([]byte("I"), 300000), 0o644)
	os.WriteFile(filepath.Join(boot, "undionly.kpxe"), bytes.Repeat([]byte("U"), 70000), 0o644)
	os.WriteFile(filepath.Join(boot, "ipxe.efi"), bytes.Repeat([]byte("E"), 90000), 0o644)
	return stack, images, boot
}

// magestackBin is the product binary, built once, on first use (fuzz
// workers run TestMain too and never need it): the server runs as the
// real `magestack netboot` command inside the server namespace (its TFTP
// transfers open sockets on goroutines, which must all live in that
// namespace, as they do for a real process).
var (
	magestackBin  string
	buildOnce     sync.Once
	buildErr      error
	magestackTemp string
)

func buildMagestack(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "netboot-test")
		if err != nil {
			buildErr = err
			return
		}
		magestackTemp = dir
		magestackBin = filepath.Join(dir, "magestack")
		build := exec.Command("go", "build", "-o", magestackBin, "magestack/init/cmd/magestack")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building magestack: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return magestackBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if magestackTemp != "" {
		os.RemoveAll(magestackTemp)
	}
	os.Exit(code)
}

// lockedBuffer collects a child's output: exec copies into it from its own
// goroutine while the test reads it (the race detector caught a bare
// bytes.Buffer here).
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServer runs `magestack netboot` in ns and waits for its HTTP side.
func startServer(t *testing.T, ns netns.NsHandle, args ...string) *lockedBuffer {
	t.Helper()
	out := &lockedBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName(t, ns), buildMagestack(t), "netboot"}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("netboot did not stop within 10s of SIGINT")
		}
		if t.Failed() {
			t.Logf("netboot output:\n%s", out.String())
		}
	})
	client := nsHTTPClient(t, ns)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := get(client, "http://10.77.0.1:8080/status", ""); err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("netboot did not come up within 20s:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func serverArgs(stack, images, boot string, extra ...string) []string {
	return append([]string{"--interface", "nbsrv0", "--stack", stack, "--image", images, "--bootfiles", boot}, extra...)
}

func TestFullModeBootsKnownHostThroughEveryProtocol(t *testing.T) {
	const mac = "52:54:00:aa:00:01"
	srvNS, cliNS := bootNet(t, mac)
	stack, images, boot := testFiles(t)
	secret, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "stack.secret")
	if err := secret.Save(secretFile, "rack1"); err != nil {
		t.Fatal(err)
	}
	startServer(t, srvNS, serverArgs(stack, images, boot, "--mode", "full", "--secret", secretFile)...)

	var lease *nclient4.Lease
	err = inNS(t, cliNS, func() error {
		c, err := nclient4.New("nbcli0", nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		lease, err = c.Request(ctx,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))))
		return err
	})
	if err != nil {
		t.Fatalf("DHCP: %v", err)
	}
	ack := lease.ACK
	if got := ack.YourIPAddr.String(); !strings.HasPrefix(got, "10.77.0.") {
		t.Fatalf("leased %s, want an address in 10.77.0.0/24", got)
	}
	wantScript := "http://10.77.0.1:8080/boot/" + mac + ".ipxe"
	if ack.BootFileName != wantScript {
		t.Fatalf("iPXE boot file = %q, want %q", ack.BootFileName, wantScript)
	}

	// Bring the leased address up in the client namespace, then fetch the
	// script, the images and a TFTP file as iPXE would.
	sh(t, "ip", "netns", "exec", nsName(t, cliNS), "ip", "addr", "add", ack.YourIPAddr.String()+"/24", "dev", "nbcli0")
	var script, kernelRange, secretCpio string
	var tftpLen int64
	secretURL := "http://10.77.0.1:8080/secret/" + strings.ReplaceAll(mac, ":", "-") + ".cpio"
	err = inNS(t, cliNS, func() error {
		client := nsHTTPClient(t, cliNS)
		body, err := get(client, wantScript, "")
		if err != nil {
			return err
		}
		script = body
		if secretCpio, err = get(client, secretURL, ""); err != nil {
			return fmt.Errorf("the host's own secret: %w", err)
		}
		if _, err := get(client, "http://10.77.0.1:8080/image/vmlinuz", ""); err != nil {
			return err
		}
		if kernelRange, err = get(client, "http://10.77.0.1:8080/image/initramfs.img", "bytes=0-9"); err != nil {
			return err
		}
		for _, bad := range []string{"/image/..%2fstack.yaml", "/image/%2e%2e/%2e%2e/etc/passwd", "/boot/..%2f..%2fetc%2fpasswd", "/boot/52:54:00:aa:00:99.ipxe"} {
			resp, err := client.Get("http://10.77.0.1:8080" + bad)
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return fmt.Errorf("%s served: %q", bad, b)
			}
		}
		tc, err := tftp.NewClient("10.77.0.1:69")
		if err != nil {
			return err
		}
		wt, err := tc.Receive("undionly.kpxe", "octet")
		if err != nil {
			return fmt.Errorf("tftp: %w", err)
		}
		tftpLen, err = wt.WriteTo(io.Discard)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The secret arrives as a cpio the kernel unpacks before the initramfs,
	// at the path PID 1 looks in.
	got := readCpioFile(t, []byte(secretCpio), "etc/magestack/stack.secret")
	if s2, err := stacksecret.Parse("initrd", got); err != nil || !s2.Equal(secret) {
		t.Errorf("the served initrd does not hold the stack secret: %v", err)
	}
	// Anyone but the address leased to that MAC is refused: here the
	// server's own namespace asks, for the secret and for the stack file
	// (fence credentials).
	for _, u := range []string{secretURL, "http://10.77.0.1:8080/stack.yaml"} {
		if _, err := get(nsHTTPClient(t, srvNS), u, ""); err == nil {
			t.Errorf("%s was served to an address not leased to a host", u)
		}
	}
	if err := inNS(t, cliNS, func() error {
		_, err := get(nsHTTPClient(t, cliNS), "http://10.77.0.1:8080/stack.yaml", "")
		return err
	}); err != nil {
		t.Errorf("the known host could not fetch its stack file: %v", err)
	}
	if strings.Index(script, "initrd --name secret.cpio "+secretURL) > strings.Index(script, "initrd http://10.77.0.1:8080/image/initramfs.img") {
		t.Errorf("the secret's initrd must come first:\n%s", script)
	}
	for _, want := range []string{"#!ipxe", "kernel http://10.77.0.1:8080/image/vmlinuz initrd=secret.cpio initrd=initramfs.img", "magestack.host=dh1",
		"magestack.config=http://10.77.0.1:8080/stack.yaml", "initrd --name secret.cpio " + secretURL, "initrd http://10.77.0.1:8080/image/initramfs.img"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if kernelRange != "IIIIIIIIII" {
		t.Errorf("range request returned %q", kernelRange)
	}
	if tftpLen != 70000 {
		t.Errorf("tftp sent %d bytes, want 70000", tftpLen)
	}
	// The TFTP step is recorded when the server sees the last ACK, a moment
	// after the client has its data: poll the live view briefly.
	var snap []HostProgress
	for deadline := time.Now().Add(5 * time.Second); ; {
		snap = nil
		body, err := get(nsHTTPClient(t, srvNS), "http://10.77.0.1:8080/status", "")
		if err == nil {
			json.Unmarshal([]byte(body), &snap)
		}
		if len(snap) == 1 && len(snap[0].Steps) >= 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(snap) != 1 || snap[0].Host != "dh1" {
		t.Fatalf("progress = %+v, want one host dh1", snap)
	}
	for _, step := range []string{"offer", "ack", "script", "kernel", "initramfs", "tftp"} {
		if _, ok := snap[0].Steps[step]; !ok {
			t.Errorf("progress lacks step %q: %v", step, snap[0].Steps)
		}
	}
}

func TestUnknownMACGetsNoOffer(t *testing.T) {
	srvNS, cliNS := bootNet(t, "52:54:00:aa:00:77")
	stack, images, boot := testFiles(t)
	startServer(t, srvNS, serverArgs(stack, images, boot)...)
	err := inNS(t, cliNS, func() error {
		c, err := nclient4.New("nbcli0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(1))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.DiscoverOffer(context.Background(), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")))
		return err
	})
	if err == nil {
		t.Fatal("an unknown MAC got an offer")
	}
}

func TestMalformedPacketsDoNotStopTheServer(t *testing.T) {
	const mac = "52:54:00:aa:00:02"
	srvNS, cliNS := bootNet(t, mac)
	stack, images, boot := testFiles(t)
	startServer(t, srvNS, serverArgs(stack, images, boot)...)
	sh(t, "ip", "netns", "exec", nsName(t, cliNS), "ip", "addr", "add", "10.77.0.50/24", "dev", "nbcli0")
	err := inNS(t, cliNS, func() error {
		for _, port := range []string{"67", "69"} {
			conn, err := net.Dial("udp4", "10.77.0.1:"+port)
			if err != nil {
				return err
			}
			for _, junk := range [][]byte{{}, {1}, bytes.Repeat([]byte{0xff}, 600), append([]byte{1, 1, 6, 0}, make([]byte, 300)...), {0, 1, 0, 0}, {0, 9}} {
				conn.Write(junk)
			}
			conn.Close()
		}
		time.Sleep(200 * time.Millisecond)
		c, err := nclient4.New("nbcli0", nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		if err != nil {
			return err
		}
		defer c.Close()
		lease, err := c.Request(context.Background(), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")))
		if err != nil {
			return fmt.Errorf("no lease after junk: %w", err)
		}
		if got := lease.ACK.YourIPAddr.String(); got != "10.77.0.12" {
			return fmt.Errorf("dh2 leased %s, want its reserved 10.77.0.12", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	stack, images, boot := testFiles(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("stack: x\nhosts: []\nrolez: {}\n"), 0o644)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"missing stack", Options{Interface: "lo", StackFile: "/nonexistent.yaml", ImageDir: images, BootDir: boot}, "--stack"},
		{"invalid stack", Options{Interface: "lo", StackFile: bad, ImageDir: images, BootDir: boot}, "does not validate"},
		{"missing images", Options{Interface: "lo", StackFile: stack, ImageDir: t.TempDir(), BootDir: boot}, "--image"},
		{"missing boot files", Options{Interface: "lo", StackFile: stack, ImageDir: images, BootDir: t.TempDir()}, "--bootfiles"},
		{"bad interface", Options{Interface: "nosuch0", StackFile: stack, ImageDir: images, BootDir: boot}, `--interface "nosuch0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func get(c *http.Client, url, rng string) (string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), err
}

// nsHTTPClient dials from ns.
func nsHTTPClient(t *testing.T, ns netns.NsHandle) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsdo.DialContext(ns)}}
}

// nsName finds the name `ip netns` knows a handle by.
func nsName(t *testing.T, h netns.NsHandle) string {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		other, err := netns.GetFromName(e.Name())
		if err == nil {
			same := other.Equal(h)
			other.Close()
			if same {
				return e.Name()
			}
		}
	}
	t.Fatal("namespace has no name")
	return ""
}

// readCpioFile is the content of name in the newc archive b.
func readCpioFile(t *testing.T, b []byte, name string) []byte {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatalf("secret initrd: %v", err)
	}
	for _, r := range recs {
		if r.Name == name {
			if r.Mode&0o777 != 0o600 {
				t.Errorf("%s mode %o, want 0600", name, r.Mode&0o777)
			}
			data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
	t.Fatalf("secret initrd lacks %s", name)
	return nil
}
