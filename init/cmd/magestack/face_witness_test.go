package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/clusterconf"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

// witnessHelperEnv makes the test binary run witnessMain itself (the
// arguments follow "--"): TestWitnessHelperProcess is the real process
// the signal tests start.
const witnessHelperEnv = "MAGESTACK_WITNESS_HELPER"

func TestWitnessHelperProcess(t *testing.T) {
	if os.Getenv(witnessHelperEnv) != "1" {
		t.Skip("helper process for the witness signal tests")
	}
	// A fresh network namespace has its loopback down.
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	if m := os.Getenv(memberHelperEnv); m != "" {
		os.Exit(runTestMember(m, args[1]))
	}
	os.Exit(witnessMain(args))
}

// memberHelperEnv makes the helper run a host's raft member and heartbeats
// (no roles) instead of the witness, so a witness can be tested in a
// cluster that has a leader.
const memberHelperEnv = "MAGESTACK_MEMBER_HELPER"

// memberSecretEnv names the stack secret file a member helper derives its
// cluster credentials from (the witness gets its file from the same one).
const memberSecretEnv = "MAGESTACK_MEMBER_SECRET"

func runTestMember(name, stackPath string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	_, conf, err := loadWitnessStack(stackPath)
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	conf, err = clusterconf.For(mustStack(stackPath), name)
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	secret, err := stacksecret.Load(os.Getenv(memberSecretEnv))
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	creds, err := clusterauth.Derive(secret, name)
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	hb, err := heartbeat.New(heartbeat.Config{ID: name, Paths: conf.Paths, Logger: log, Key: creds.HeartbeatKey()})
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	go hb.Run(ctx)
	cfg := conf.Self
	cfg.Logger = log
	cfg.ServerTLS = creds.ServerConfig(conf.IDs())
	cfg.ClientTLS = creds.ClientConfig(conf.IDs(), "")
	node, err := cluster.Start(cfg)
	if err != nil {
		log.Error("member", "err", err)
		return 1
	}
	// Raft logs warnings only: say who leads, for the test to wait on.
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			node.Shutdown()
			return 0
		case <-t.C:
			fmt.Printf("member %s: state=%s leader=%q\n", name, node.State(), node.Leader())
		}
	}
}

// newSecretFile is a fresh stack secret in a file of its own.
func newSecretFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stack.secret")
	var errb bytes.Buffer
	if code := secretsFace([]string{"init", "-o", p}, io.Discard, &errb); code != 0 {
		t.Fatalf("secrets init: exit %d: %s", code, errb.String())
	}
	return p
}

func mustStack(path string) *stackfile.Stack {
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	s, err := stackfile.Parse(path, data)
	if err != nil {
		panic(err)
	}
	return s
}

const witnessTestStack = `stack: shopw
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.0.2.11/24, gateway: 192.0.2.1, pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 192.0.2.12/24, gateway: 192.0.2.1, pair: dh1}
internal: 172.16.0.0/24
witness: 127.0.0.1:7700
vpn: {port: 51820, subnet: 10.8.0.0/24}
roles:
  web: {count: 1}
`

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startWitness runs `magestack witness` as a real process in a network
// namespace of its own (its ports and its nftables table stay there) and
// waits until it votes.
func startWitness(t *testing.T, extra ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	return startWitnessIn(t, "", witnessTestStack, "", extra...)
}

// startWitnessIn is startWitness in the named namespace ns ("" a new one)
// with the given stack file, and credentials derived from the stack secret
// file at secret ("" a new secret).
func startWitnessIn(t *testing.T, ns, stackYAML, secret string, extra ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	dir := t.TempDir()
	stack := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(stack, []byte(stackYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	if secret == "" {
		secret = newSecretFile(t)
	}
	creds := filepath.Join(dir, "witness.pem")
	var errb bytes.Buffer
	if code := secretsFace([]string{"member", "witness", "-secret", secret, "-o", creds}, io.Discard, &errb); code != 0 {
		t.Fatalf("secrets member witness: exit %d: %s", code, errb.String())
	}
	args := append([]string{"-test.run=^TestWitnessHelperProcess$", "--", "--stack", stack, "--data", filepath.Join(dir, "raft"), "--credentials", creds}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	if ns == "" {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	} else {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args...)...)
	}
	cmd.Env = append(os.Environ(), witnessHelperEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	voting := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "voting for stack shopw") {
				voting <- true
			}
		}
	}()
	select {
	case <-voting:
	case <-time.After(20 * time.Second):
		t.Fatalf("the witness did not start voting:\n%s", logs)
	}
	return cmd, logs
}

// witnessTable lists the witness's table in the process's namespace.
func witnessTable(t *testing.T, pid int) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft CLI is missing (package nftables)")
	}
	out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "nft", "list", "table", "inet", "magestack_witness").CombinedOutput()
	return string(out), err
}

// TestWitnessStopsOnSignal: issue 14 says the witness ignores SIGTERM and
// SIGINT. A real witness process gets each signal once it votes, with its
// firewall on: it must exit 0, promptly, having stopped raft and removed
// its table.
func TestWitnessStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, logs := startWitness(t)
			table, err := witnessTable(t, cmd.Process.Pid)
			if err != nil || !strings.Contains(table, `tcp dport { 7700, 7702 } counter packets`) ||
				!strings.Contains(table, "ip saddr { 192.0.2.11, 192.0.2.12 }") {
				t.Fatalf("witness table while running: %v\n%s", err, table)
			}
			start := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, err, logs)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("still running 15 s after %v\n%s", sig, logs)
			}
			t.Logf("%v: exited 0 after %v", sig, time.Since(start).Round(time.Millisecond))
			for _, want := range []string{"witness: stopping", "witness: firewall removed", "witness: stopped"} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("log lacks %q:\n%s", want, logs)
				}
			}
		})
	}
}

// TestWitnessFirewallFlag: --firewall=false leaves nftables alone.
func TestWitnessFirewallFlag(t *testing.T) {
	cmd, logs := startWitness(t, "--firewall=false")
	if out, err := witnessTable(t, cmd.Process.Pid); err == nil {
		t.Fatalf("--firewall=false, yet the table exists:\n%s", out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
	if !strings.Contains(logs.String(), "--firewall=false") {
		t.Errorf("no warning about the open cluster ports:\n%s", logs)
	}
}

// TestWitnessUsageMentionsFirewall: the operator learns about the table
// and the flag from --help.
func TestWitnessUsageMentionsFirewall(t *testing.T) {
	for _, want := range []string{"inet magestack_witness", "--firewall=false", "SIGTERM", "magestack-witness.service"} {
		if !strings.Contains(witnessUsage, want) {
			t.Errorf("usage text lacks %q", want)
		}
	}
}

const witnessClusterStack = `stack: shopw
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.0.2.11/24, gateway: 192.0.2.1, pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 192.0.2.12/24, gateway: 192.0.2.1, pair: dh1}
internal: 172.16.0.0/24
witness: 192.0.2.5:7700
vpn: {port: 51820, subnet: 10.8.0.0/24}
roles:
  web: {count: 1}
`

// TestWitnessStopsInACluster: the same signal test with both hosts' raft
// members and heartbeats running (helper processes in one namespace), so
// the witness is a follower or the leader of a working cluster when the
// signal comes; the hosts keep a leader after it leaves.
func TestWitnessStopsInACluster(t *testing.T) {
	t.Run("follower", func(t *testing.T) { witnessInCluster(t, false) })
	// Started first, the witness has the highest term when the hosts
	// come up: they vote for it.
	t.Run("leader", func(t *testing.T) { witnessInCluster(t, true) })
}

func witnessInCluster(t *testing.T, witnessFirst bool) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns := fmt.Sprintf("mswit-%d-%t", os.Getpid(), witnessFirst)
	for _, c := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", "192.0.2.11/32", "dev", "lo"}, {"-n", ns, "addr", "add", "192.0.2.12/32", "dev", "lo"},
		{"-n", ns, "addr", "add", "192.0.2.5/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", c, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	dir := t.TempDir()
	stack := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(stack, []byte(witnessClusterStack), 0o644); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	var logs *lockedBuffer
	secret := newSecretFile(t)
	if witnessFirst {
		cmd, logs = startWitnessIn(t, ns, witnessClusterStack, secret)
		time.Sleep(1500 * time.Millisecond)
	}
	members := map[string]*lockedBuffer{}
	for _, name := range []string{"dh1", "dh2"} {
		cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestWitnessHelperProcess$", "--", name, stack)
		cmd.Env = append(os.Environ(), witnessHelperEnv+"=1", memberHelperEnv+"="+name, memberSecretEnv+"="+secret)
		members[name] = &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = members[name], members[name]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	if !witnessFirst {
		cmd, logs = startWitnessIn(t, ns, witnessClusterStack, secret)
	}
	// Wait for a working cluster: some member has won an election and the
	// witness has heard the hosts' heartbeats.
	deadline := time.Now().Add(30 * time.Second)
	var leader string
	for {
		if leader = leaderSeen(members["dh1"].String()); leader != "" && strings.Count(logs.String(), "peer alive") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader with the witness in 30 s:\nwitness:\n%s\ndh1:\n%s", logs, members["dh1"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // a few rounds of replication and heartbeats
	role := "follower"
	if leaderSeen(members["dh1"].String()) == "witness" {
		role = "leader"
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("witness (%s) exit after SIGTERM: %v\n%s", role, err, logs)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("witness (%s) still running 15 s after SIGTERM\n%s", role, logs)
	}
	t.Logf("witness as %s: exited 0 after %v", role, time.Since(start).Round(time.Millisecond))
	if witnessFirst && role != "leader" {
		t.Logf("the witness did not win the election this time (leader %s): covered as a follower only", leader)
	}
	if !strings.Contains(logs.String(), "witness: stopped") {
		t.Errorf("no clean stop logged:\n%s", logs)
	}
}

// leaderSeen is the leader a member's last status line names, "" none.
func leaderSeen(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if _, l, ok := strings.Cut(lines[i], " leader="); ok {
			return strings.Trim(l, `"`)
		}
	}
	return ""
}

// TestWitnessUnit: the shipped systemd unit runs the witness with flags it
// knows, stops it with SIGTERM and waits longer than the witness's own
// stop bound before SIGKILL.
func TestWitnessUnit(t *testing.T) {
	data, err := os.ReadFile("../../dist/magestack-witness.service")
	if err != nil {
		t.Fatal(err)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	exec := strings.Fields(kv["ExecStart"])
	if len(exec) < 2 || exec[1] != "witness" {
		t.Fatalf("ExecStart %q does not run `magestack witness`", kv["ExecStart"])
	}
	var o witnessOpts
	fs := witnessFlagSet(&o)
	if err := fs.Parse(exec[2:]); err != nil || o.stack == "" || fs.NArg() != 0 {
		t.Fatalf("ExecStart flags %q: %v (stack %q, extra %v)", exec[2:], err, o.stack, fs.Args())
	}
	if !strings.HasPrefix(o.data, "/var/lib/"+kv["StateDirectory"]) {
		t.Errorf("--data %s is not under StateDirectory=%s", o.data, kv["StateDirectory"])
	}
	if kv["KillSignal"] != "SIGTERM" {
		t.Errorf("KillSignal=%s", kv["KillSignal"])
	}
	stop, err := time.ParseDuration(kv["TimeoutStopSec"] + "s")
	if err != nil || stop <= witnessStopBound {
		t.Errorf("TimeoutStopSec=%s must exceed the witness's own stop bound %v", kv["TimeoutStopSec"], witnessStopBound)
	}
	if !strings.Contains(kv["CapabilityBoundingSet"], "CAP_NET_ADMIN") {
		t.Errorf("the witness needs CAP_NET_ADMIN for its table")
	}
}

// TestWitnessSecondSignalExits: a second signal during a slow stop exits
// at once instead of waiting for the stop (witnessExit is replaced).
func TestWitnessSecondSignalExits(t *testing.T) {
	exited := make(chan int, 1)
	witnessExit = func(code int) { exited <- code }
	defer func() { witnessExit = os.Exit }()
	ctx, release := witnessSignals(slog.New(slog.DiscardHandler))
	defer release()
	self := os.Getpid()
	syscall.Kill(self, syscall.SIGTERM)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not cancel the witness's context")
	}
	select {
	case code := <-exited:
		t.Fatalf("exited (%d) on the first signal", code)
	case <-time.After(100 * time.Millisecond):
	}
	syscall.Kill(self, syscall.SIGINT)
	select {
	case code := <-exited:
		if code != 1 {
			t.Fatalf("exit status %d, want 1", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second signal did not exit")
	}
}
