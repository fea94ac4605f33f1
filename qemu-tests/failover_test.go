package qemutests

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
	"magestack/qemu-tests/qemu"
)

// pairStackYAML is a pair of hosts with a dedicated pair link and a witness
// on the LAN; the website's VIP is 192.0.2.50.
const pairStackYAML = `stack: pair
hosts:
  - {name: dh1, mac: "52:54:00:aa:01:01", address: 192.0.2.11/24, pair: dh2, pairlink: {mac: "52:54:00:aa:02:01", address: 10.99.0.1/30}}
  - {name: dh2, mac: "52:54:00:aa:01:02", address: 192.0.2.12/24, pair: dh1, pairlink: {mac: "52:54:00:aa:02:02", address: 10.99.0.2/30}}
public: {vip: 192.0.2.50/24}
witness: 192.0.2.5:7700
# Emulated CPUs on a shared 2-core machine stall for hundreds of ms: detect
# loss after 3 s here (1 s is the default for real hardware).
cluster: {suspect: 1s, dead: 3s}
`

var pairMAC = map[string]string{"dh1": "52:54:00:aa:01:01", "dh2": "52:54:00:aa:01:02"}

// pairRig is two hosts, a witness and a website prober on a test LAN.
type pairRig struct {
	net     *qemu.Net
	vms     map[string]*qemu.VM
	prober  *prober
	witness *qemu.LockedBuffer
	cables  map[string]*qemu.Cable // LAN cables of pairRigOptions.Cabled hosts
	// stackPath is the stack file the witness's machine serves the hosts.
	stackPath string
	// opts boot each host again (restart).
	opts map[string]qemu.Options
}

// restart boots a host whose VM was killed again on the same disks, as
// after a repair.
func (r *pairRig) restart(t *testing.T, host string) {
	t.Helper()
	r.vms[host] = qemu.Start(t, r.opts[host])
}

// pairRigOptions varies the pair rig; the zero value is the default rig
// (pairStackYAML with a witness).
type pairRigOptions struct {
	Stack     string // stack YAML; default pairStackYAML
	NoWitness bool   // 192.0.2.5 only serves the stack file
	// Setup runs on the rig network before the hosts boot.
	Setup func(n *qemu.Net)
	// QEMUArgs adds arguments to a host's QEMU command line.
	QEMUArgs func(host string) []string
	// Cabled hosts have their LAN NIC on a qemu.Cable (tap tl-<host> on
	// br0 still), whose loss and delay the test can set.
	Cabled []string
	// DataDisks gives each host a blank data disk: role volumes are DRBD
	// resources replicated over the pair link.
	DataDisks bool
}

func startPairRig(t *testing.T) *pairRig {
	t.Helper()
	return startPairRigWith(t, pairRigOptions{})
}

func startPairRigWith(t *testing.T, o pairRigOptions) *pairRig {
	t.Helper()
	im := qemu.RequireImage(t)
	if o.Stack == "" {
		o.Stack = pairStackYAML
	}
	st, err := stackfile.Parse("pair.yaml", []byte(o.Stack))
	if err != nil {
		t.Fatalf("test stack: %v", err)
	}
	// Both hosts boot with the one stack secret, as netboot hands it out.
	secret, err := stacksecret.New()
	if err != nil {
		t.Fatal(err)
	}
	if im, err = im.WithStackSecret(t.TempDir(), secret.Marshal(st.Name)); err != nil {
		t.Fatal(err)
	}
	// The witness gets its cluster credentials, never the secret, made
	// from the same secret with the operator's command; outside dir,
	// which the witness's machine serves over HTTP.
	witnessCreds, err := witnessCredentials(im.Binary, secret, st.Name, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := qemu.NewNet(t, "pair")
	// The pair link is a second bridge in the same namespace.
	for _, args := range [][]string{
		{"ip", "link", "add", "br1", "type", "bridge"}, {"ip", "link", "set", "br1", "up"},
		{"ip", "tuntap", "add", "dev", "tp-dh1", "mode", "tap"}, {"ip", "link", "set", "tp-dh1", "master", "br1", "up"},
		{"ip", "tuntap", "add", "dev", "tp-dh2", "mode", "tap"}, {"ip", "link", "set", "tp-dh2", "master", "br1", "up"},
	} {
		if out, err := n.Run(args[0], args[1:]...); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	dir := t.TempDir()
	stackPath := filepath.Join(dir, "stack.yaml")
	os.WriteFile(stackPath, []byte(o.Stack), 0o644)

	w := n.AddClient("witness", "192.0.2.5/24")
	var wlog qemu.LockedBuffer
	if !o.NoWitness {
		cmd := exec.Command(im.Binary, "witness", "--stack", stackPath, "--data", "", "--credentials", witnessCreds)
		cmd.Stdout, cmd.Stderr = &wlog, &wlog
		if err := w.Start(cmd); err != nil {
			t.Fatal(err)
		}
	}
	if o.Setup != nil {
		o.Setup(n)
	}
	// The witness's machine also serves the stack file to the hosts.
	var ln net.Listener
	if err := w.Do(func() (err error) { ln, err = net.Listen("tcp", "192.0.2.5:8000"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir))}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		if t.Failed() {
			t.Logf("witness output:\n%s", wlog.String())
		}
	})

	r := &pairRig{net: n, vms: map[string]*qemu.VM{}, witness: &wlog, cables: map[string]*qemu.Cable{}, stackPath: stackPath,
		opts: map[string]qemu.Options{}}
	for i, host := range []string{"dh1", "dh2"} {
		var lan qemu.NIC
		if slices.Contains(o.Cabled, host) {
			r.cables[host] = n.AddCable("tl-" + host)
			lan = r.cables[host].NIC(pairMAC[host])
		} else {
			lan = qemu.NIC{Tap: n.AddTap("tl-" + host), MAC: pairMAC[host]}
		}
		lan.ROM = "none"
		opts := im.Options(fmt.Sprintf("ip=192.0.2.1%d::192.0.2.1:255.255.255.0:%s:eth0:off magestack.host=%s magestack.config=http://192.0.2.5:8000/stack.yaml magestack.console=shell",
			i+1, host, host))
		opts.Name = host
		opts.Memory = 1536
		opts.NetNS = n.NetNS()
		opts.Watchdog = true
		opts.NICs = []qemu.NIC{lan, {Tap: "tp-" + host, MAC: fmt.Sprintf("52:54:00:aa:02:0%d", i+1), ROM: "none"}}
		if o.QEMUArgs != nil {
			opts.ExtraArgs = append(opts.ExtraArgs, o.QEMUArgs(host)...)
		}
		if o.DataDisks {
			data := filepath.Join(t.TempDir(), host+"-data.img")
			if err := os.WriteFile(data, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(data, 3<<30); err != nil {
				t.Fatal(err)
			}
			opts.Drives = append(opts.Drives, qemu.Drive{File: data, Format: "raw"})
		}
		r.opts[host] = opts
		r.vms[host] = qemu.Start(t, opts)
	}
	for _, host := range []string{"dh1", "dh2"} {
		if _, err := r.vms[host].Expect(10*time.Minute, qemu.ReadyPattern); err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		// Each host found the secret it was booted with: the passwords,
		// certificate and VPN key it derives are its peer's.
		want := "secrets: stack secret in place id=" + secret.ID() + " source=provided"
		if !strings.Contains(r.vms[host].Console(), want) {
			t.Errorf("%s: console lacks %q", host, want)
		}
	}
	client := n.AddClient("client", "192.0.2.100/24")
	r.prober = startProber(t, client, "http://192.0.2.50/", 100*time.Millisecond)
	return r
}

// prober requests the website through the VIP every interval and records,
// per request, whether it was answered and which host's MAC the VIP had.
type prober struct {
	mu      sync.Mutex
	results []probe
}

type probe struct {
	at  time.Time
	ok  bool
	mac string
}

func startProber(t *testing.T, ns *qemu.Namespace, url string, every time.Duration) *prober {
	p := &prober{}
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{
		DialContext: nsdo.DialContext(h), DisableKeepAlives: true}}
	var nl *netlink.Handle
	if nl, err = netlink.NewHandleAt(h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r := probe{at: time.Now()}
			if resp, err := client.Get(url); err == nil {
				r.ok = resp.StatusCode == 200
				resp.Body.Close()
			}
			if neighs, err := nl.NeighList(0, netlink.FAMILY_V4); err == nil {
				for _, n := range neighs {
					if n.IP.String() == "192.0.2.50" && len(n.HardwareAddr) == 6 {
						r.mac = n.HardwareAddr.String()
					}
				}
			}
			p.mu.Lock()
			p.results = append(p.results, r)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; nl.Close(); h.Close() })
	return p
}

// waitOK waits for an answered request after since, served by host's MAC.
func (p *prober) waitOK(t *testing.T, since time.Time, mac string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(within))
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, r := range p.results {
			if r.at.After(since) && r.ok && (mac == "" || r.mac == mac) {
				p.mu.Unlock()
				return r.at
			}
		}
		p.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the website did not answer through the VIP (from %s) within %v", mac, within)
	return time.Time{}
}

// macs lists the distinct MACs that answered after since.
func (p *prober) macs(since time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, r := range p.results {
		if r.at.After(since) && r.ok && !seen[r.mac] {
			seen[r.mac] = true
			out = append(out, r.mac)
		}
	}
	return out
}

// TestFailoverPairLinkCutPlannedMoveHardwareLoss: cutting only the pair link
// changes nothing; `magestack failover --to dh2` moves everything to dh2 on
// purpose; then dh2's hardware is lost and dh1 takes everything back, the
// website answering through the VIP from whichever host holds lb. db1's
// volume is replicated over the pair link (blank data disks, DRBD protocol
// C): a synced write made on dh1 is on dh2 after the planned move, and one
// made on dh2 is on dh1 after dh2's hardware is lost.
func TestFailoverPairLinkCutPlannedMoveHardwareLoss(t *testing.T) {
	qemu.Require(t)
	// The hosts poll the stack file often: a change is applied below.
	r := startPairRigWith(t, pairRigOptions{Stack: pairStackYAML + "config: {poll: 2s}\n", DataDisks: true})
	start := time.Now()
	r.prober.waitOK(t, start, pairMAC["dh1"], 2*time.Minute)
	// db1 runs on dh1 by placement; its volume is mounted on the host at
	// /run/magestack/volumes/db1 while dh1 is Primary.
	vols := consoleRunUntil(t, r.vms["dh1"], "magestack volumes", `(?m)^db1\s.*Primary\s+UpToDate\s+UpToDate\s+Connected`, 2*time.Minute)
	t.Logf("dh1 volumes:\n%s", vols)
	if !strings.Contains(r.vms["dh1"].Console(), "volume: formatted volume=db1") {
		t.Error("dh1 did not format db1's new volume")
	}
	consoleRun(t, r.vms["dh1"], "echo written-on-dh1 > /run/magestack/volumes/db1/order-1 && sync")

	// Cut only the pair link: heartbeats still flow over the LAN.
	if err := r.vms["dh1"].SetLink("net1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.vms["dh2"].Expect(30*time.Second, `heartbeat: path dead.*peer=dh1 path=pair`); err != nil {
		t.Errorf("losing the pair link was not reported: %v", err)
	}
	for _, h := range []string{"dh1", "dh2"} {
		if err := r.vms[h].ExpectNot(5*time.Second, `failover: moving instances`); err != nil {
			t.Errorf("%s: a pair-link cut caused a failover: %v", h, err)
		}
	}
	r.vms["dh1"].SetLink("net1", true)

	// Maintenance switched on at dh1 is a cluster setting: dh2, which runs
	// web1 (the stack spreads the roles over the pair), puts web1 in the
	// mode.
	consoleRun(t, r.vms["dh1"], "magestack maintenance on")
	consoleRunUntil(t, r.vms["dh2"], "magestack maintenance status", `web1=on`, time.Minute)
	// An operator acting on the host that does not run the instance is
	// pointed at the one that does.
	if out := consoleRun(t, r.vms["dh1"], "magestack reload web1 2>&1 || true"); !strings.Contains(out, "web1 runs on dh2, not on this host (dh1)") {
		t.Errorf("magestack reload web1 on dh1 while dh2 runs it:\n%s", out)
	}

	// The cut was fenced (dh2's copy of db1 recorded outdated); a planned
	// move is refused until the link is back and dh2 has resynced.
	consoleRunUntil(t, r.vms["dh1"], "magestack volumes | tee /tmp/v; grep -q 'is outdated' /tmp/v || echo no-outdated-copy",
		`(?ms)^db1\s.*UpToDate\s+UpToDate\s+Connected.*^acc1\s.*UpToDate\s+UpToDate\s+Connected.*^no-outdated-copy`, 2*time.Minute)

	// Planned move, from dh1's console.
	planned := time.Now()
	if err := r.vms["dh1"].SendConsole("magestack failover --to dh2; echo @@rc=$?@@\n"); err != nil {
		t.Fatal(err)
	}
	if m, err := r.vms["dh1"].Expect(3*time.Minute, `@@rc=(\d+)@@`); err != nil || m[1] != "0" {
		t.Fatalf("magestack failover --to dh2: %v %v", m, err)
	}
	moved := r.prober.waitOK(t, planned, pairMAC["dh2"], 2*time.Minute)
	t.Logf("planned move: website answered from dh2 %v after the command", moved.Sub(planned))
	// db1 moved with its data: dh1 demoted, dh2 promoted without a check
	// having anything to repair.
	consoleRunUntil(t, r.vms["dh2"], "cat /run/magestack/volumes/db1/order-1 2>&1; true", `written-on-dh1`, 2*time.Minute)
	if strings.Contains(r.vms["dh2"].Console(), "volume: filesystem repaired volume=db1") {
		t.Error("the planned move needed a filesystem repair of db1")
	}
	consoleRun(t, r.vms["dh2"], "echo written-on-dh2 > /run/magestack/volumes/db1/order-2 && sync")

	// A new revision of the stack file: a second web instance and web's
	// memory limit. The cluster places web2 where the stack file says
	// (dh1); dh2, which runs web1, gives it a new environment; dh1 starts
	// web1 with the new limit when it has to take over.
	newStack := pairStackYAML + "config: {poll: 2s}\nroles: {fw: {}, lb: {}, web: {count: 2, memory: 300MiB}, db: {}, mail: {}, acc: {}, monitor: {}}\n"
	if err := os.WriteFile(r.stackPath, []byte(newStack), 0o644); err != nil {
		t.Fatal(err)
	}
	applied := `applied:\s+` + fmt.Sprintf("%x", sha256.Sum256([]byte(newStack)))[:12]
	consoleRunUntil(t, r.vms["dh2"], "cat /sys/fs/cgroup/magestack/web1/memory.max", `(?m)^314572800\s*$`, 2*time.Minute)
	consoleRunUntil(t, r.vms["dh1"], "magestack config status", applied, time.Minute)
	consoleRunUntil(t, r.vms["dh2"], "magestack config status", applied, time.Minute)
	consoleRunUntil(t, r.vms["dh1"], "magestack status", `this host runs web2\b`, time.Minute)

	// Hardware loss of dh2, which now holds lb1 and the VIP.
	lost := time.Now()
	r.vms["dh2"].Kill()
	back := r.prober.waitOK(t, lost, pairMAC["dh1"], 3*time.Minute)
	t.Logf("website answered again from dh1 %v after dh2 was lost", back.Sub(lost))
	// The write dh2 synced before it died is on dh1's copy.
	consoleRunUntil(t, r.vms["dh1"], "cat /run/magestack/volumes/db1/order-2 2>&1; true", `written-on-dh2`, 2*time.Minute)
	t.Logf("dh1 volumes after the loss:\n%s", consoleRun(t, r.vms["dh1"], "magestack volumes"))
	// The raft leader decides: dh1 itself, or the witness.
	decided := regexp.MustCompile(`failover: moving instances.*from=dh2 to=dh1`)
	if !decided.MatchString(r.vms["dh1"].Console()) && !decided.MatchString(r.witness.String()) {
		t.Error("neither dh1 nor the witness logged the move of dh2's instances")
	}
	time.Sleep(qemu.Scale(3 * time.Second))
	if got := r.prober.macs(back.Add(-time.Nanosecond)); len(got) != 1 || got[0] != pairMAC["dh1"] {
		t.Errorf("after the failover the VIP answered from %v, want only dh1 %s", got, pairMAC["dh1"])
	}
	// web1 came up on dh1 in the mode the cluster keeps, and it can be
	// switched off with dh2 gone (dh1 and the witness are a majority).
	consoleRunUntil(t, r.vms["dh1"], "magestack maintenance status", `web1=on`, time.Minute)
	if out := consoleRun(t, r.vms["dh1"], "magestack status"); !regexp.MustCompile(`this host runs .*\bweb2\b`).MatchString(out) {
		t.Errorf("dh1 does not run web2 after taking over:\n%s", out)
	}
	if out := consoleRun(t, r.vms["dh1"], "cat /sys/fs/cgroup/magestack/web1/memory.max"); !strings.Contains(out, "314572800") {
		t.Errorf("web1 taken over by dh1 has memory.max %q, want the new revision's 314572800", strings.TrimSpace(out))
	}
	consoleRun(t, r.vms["dh1"], "magestack maintenance off")
	consoleRunUntil(t, r.vms["dh1"], "magestack maintenance status", `web1=off`, time.Minute)
	// The operator's view: owners, epochs and standby, the lost peer dead.
	if err := r.vms["dh1"].SendConsole("magestack status; echo @@rc=$?@@\n"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{`cluster: this host`, `(?m)^lb1\s+dh1\s+\d+\s+dh2`, `(?m)^dh2\s+dead`, `@@rc=0@@`} {
		if _, err := r.vms["dh1"].Expect(time.Minute, p); err != nil {
			t.Errorf("magestack status on dh1: %v", err)
		}
	}
}

// witnessCredentials writes secret to dir and makes the witness's cluster
// credentials from it with `magestack secrets member`, as an operator
// does; it returns the credentials file's path.
func witnessCredentials(binary string, secret stacksecret.Secret, stack, dir string) (string, error) {
	secretPath := filepath.Join(dir, "stack.secret")
	if err := secret.Save(secretPath, stack); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "witness.pem")
	if b, err := exec.Command(binary, "secrets", "member", "witness", "-secret", secretPath, "-o", out).CombinedOutput(); err != nil {
		return "", fmt.Errorf("magestack secrets member witness: %v: %s", err, b)
	}
	return out, nil
}
