// Package netbootbench measures `magestack netboot` against dnsmasq (DHCP
// and TFTP) plus a plain HTTP server (busybox httpd) serving the same files:
// N clients at once each do a DHCP exchange, then fetch the boot loader over
// TFTP and the kernel and initramfs over HTTP. It also measures DHCP
// exchanges per second. Everything runs in network namespaces it creates.
package netbootbench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/pin/tftp/v3"
	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
)

// Options for a run.
type Options struct {
	Binary   string // build/magestack
	ImageDir string // holds vmlinuz and initramfs.img
	BootDir  string // holds undionly.kpxe (Debian's ipxe)
	Clients  int    // concurrent clients, default 20
	Rounds   int    // runs per server, median reported; default 3
}

const (
	srvNS  = "nbbench-srv"
	cliNS  = "nbbench-cli"
	srvIP  = "10.78.0.1"
	dataIP = "10.78.0.2"
)

// Result is one server's figures.
type Result struct {
	Name       string
	AllServed  time.Duration // median over rounds
	DHCPPerSec float64
}

// Run measures both servers and prints a table with ratios to w.
func Run(w io.Writer, o Options) error {
	if o.Clients == 0 {
		o.Clients = 20
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	for _, bin := range []string{"dnsmasq", "busybox", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("netboot bench needs %s: %w", bin, err)
		}
	}
	cleanup, err := setupNet(o.Clients)
	defer cleanup()
	if err != nil {
		return err
	}
	cli, err := netns.GetFromName(cliNS)
	if err != nil {
		return err
	}
	defer cli.Close()

	stack := filepath.Join(os.TempDir(), "nbbench-stack.yaml")
	os.WriteFile(stack, []byte("stack: bench\nhosts:\n  - {name: dh1, mac: \"52:54:00:bb:00:ff\"}\n"), 0o644)
	defer os.Remove(stack)

	servers := []struct {
		name  string
		start func() (func(), error)
		http  string
	}{
		{"magestack netboot", func() (func(), error) {
			return startIn(srvNS, o.Binary, "netboot", "--interface", "srv0", "--stack", stack, "--image", o.ImageDir,
				"--bootfiles", o.BootDir, "--discover", "--range", "10.78.0.100-10.78.0.250")
		}, "http://" + srvIP + ":8080/image/"},
		{"dnsmasq + busybox httpd", func() (func(), error) {
			stop1, err := startIn(srvNS, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=srv0",
				"--bind-interfaces", "--dhcp-range=10.78.0.100,10.78.0.250,1h", "--dhcp-leasefile=/dev/null",
				"--enable-tftp", "--tftp-root="+o.BootDir, "--dhcp-boot=undionly.kpxe", "--dhcp-authoritative", "--no-ping")
			if err != nil {
				return stop1, err
			}
			stop2, err := startIn(srvNS, "busybox", "httpd", "-f", "-p", srvIP+":8081", "-h", o.ImageDir)
			return func() { stop1(); stop2() }, err
		}, "http://" + srvIP + ":8081/"},
	}
	var results []Result
	for _, s := range servers {
		stop, err := s.start()
		if err != nil {
			stop()
			return fmt.Errorf("%s: %w", s.name, err)
		}
		time.Sleep(500 * time.Millisecond)
		res := Result{Name: s.name}
		var times []time.Duration
		for r := 0; r < o.Rounds; r++ {
			d, err := allServed(cli, o.Clients, s.http)
			if err != nil {
				stop()
				return fmt.Errorf("%s: %w", s.name, err)
			}
			times = append(times, d)
		}
		slices.Sort(times)
		res.AllServed = times[len(times)/2]
		if res.DHCPPerSec, err = dhcpRate(cli, o.Clients, 5*time.Second); err != nil {
			stop()
			return fmt.Errorf("%s: dhcp rate: %w", s.name, err)
		}
		stop()
		results = append(results, res)
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Fprintf(w, "netboot: %d concurrent clients (DHCP exchange, TFTP undionly.kpxe, HTTP vmlinuz + initramfs), median of %d\n", o.Clients, o.Rounds)
	fmt.Fprintf(w, "  %-26s %14s %16s\n", "server", "all served", "DHCP exch./s")
	for _, r := range results {
		fmt.Fprintf(w, "  %-26s %12.0fms %16.0f\n", r.Name, float64(r.AllServed.Microseconds())/1000, r.DHCPPerSec)
	}
	if len(results) == 2 && results[1].AllServed > 0 {
		fmt.Fprintf(w, "  ratio magestack/reference: all served %.2f (target ≤ 1.0), DHCP rate %.2f (higher is better)\n",
			float64(results[0].AllServed)/float64(results[1].AllServed), results[0].DHCPPerSec/results[1].DHCPPerSec)
	}
	return nil
}

// setupNet makes the server namespace (srv0 at 10.78.0.1) and a client
// namespace with one macvlan per simulated client on the veth's far end
// (own MAC each, for DHCP) plus a data interface at 10.78.0.2 for downloads.
func setupNet(clients int) (func(), error) {
	cleanup := func() {
		exec.Command("ip", "netns", "del", srvNS).Run()
		exec.Command("ip", "netns", "del", cliNS).Run()
	}
	cleanup()
	cmds := [][]string{
		{"netns", "add", srvNS}, {"netns", "add", cliNS},
		{"-n", srvNS, "link", "add", "srv0", "type", "veth", "peer", "name", "par0", "netns", cliNS},
		{"-n", srvNS, "addr", "add", srvIP + "/24", "dev", "srv0"},
		{"-n", srvNS, "link", "set", "srv0", "up"}, {"-n", srvNS, "link", "set", "lo", "up"},
		{"-n", cliNS, "link", "set", "par0", "up"}, {"-n", cliNS, "link", "set", "lo", "up"},
		{"-n", cliNS, "addr", "add", dataIP + "/24", "dev", "par0"},
	}
	for i := 0; i < clients; i++ {
		name := fmt.Sprintf("c%d", i)
		cmds = append(cmds,
			[]string{"-n", cliNS, "link", "add", name, "link", "par0", "type", "macvlan", "mode", "bridge"},
			[]string{"-n", cliNS, "link", "set", name, "address", fmt.Sprintf("52:54:00:bb:%02x:%02x", i/256, i%256)},
			[]string{"-n", cliNS, "link", "set", name, "up"})
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return cleanup, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return cleanup, nil
}

func startIn(ns string, args ...string) (func(), error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &out
	if err := cmd.Start(); err != nil {
		return func() {}, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	select {
	case <-done:
		return stop, fmt.Errorf("%s exited at once: %s", args[0], out.String())
	case <-time.After(300 * time.Millisecond):
	}
	return stop, nil
}

var pxe = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))}

// exchange runs one DHCP DORA on interface ifname and releases the lease.
func exchange(ctx context.Context, ifname string) (*nclient4.Lease, error) {
	c, err := nclient4.New(ifname, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	lease, err := c.Request(ctx, pxe...)
	if err != nil {
		return nil, err
	}
	c.Release(lease)
	return lease, nil
}

// allServed runs n clients at once through the whole boot fetch and
// returns the time until the last one finished.
func allServed(cli netns.NsHandle, n int, httpBase string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: nsdo.DialContext(cli), MaxIdleConnsPerHost: n}}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := nsdo.Do(cli, func() error {
				lease, err := exchange(ctx, fmt.Sprintf("c%d", i))
				if err != nil {
					return fmt.Errorf("client %d dhcp: %w", i, err)
				}
				if lease.ACK.BootFileName == "" {
					return fmt.Errorf("client %d: no boot file in the answer", i)
				}
				tc, err := tftp.NewClient(srvIP + ":69")
				if err != nil {
					return err
				}
				tc.SetBlockSize(1468)
				wt, err := tc.Receive("undionly.kpxe", "octet")
				if err != nil {
					return fmt.Errorf("client %d tftp: %w", i, err)
				}
				if _, err := wt.WriteTo(io.Discard); err != nil {
					return fmt.Errorf("client %d tftp: %w", i, err)
				}
				return nil
			})
			if err == nil {
				for _, f := range []string{"vmlinuz", "initramfs.img"} {
					if err = fetch(ctx, client, httpBase+f); err != nil {
						break
					}
				}
			}
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func fetch(ctx context.Context, c *http.Client, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// dhcpRate counts complete DHCP exchanges per second with n concurrent
// clients for d.
func dhcpRate(cli netns.NsHandle, n int, d time.Duration) (float64, error) {
	var mu sync.Mutex
	count := 0
	var firstErr error
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			nsdo.Do(cli, func() error {
				for time.Now().Before(deadline) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := exchange(ctx, fmt.Sprintf("c%d", i))
					cancel()
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if err == nil {
						count++
					}
					mu.Unlock()
				}
				return nil
			})
		}(i)
	}
	wg.Wait()
	if count == 0 {
		return 0, fmt.Errorf("no exchange completed: %v", firstErr)
	}
	return float64(count) / d.Seconds(), nil
}
