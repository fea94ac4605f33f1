package qemutests

import (
	"bufio"
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
	"magestack/qemu-tests/qemu"
)

// Console wording these scenarios rely on: PID 1 logs its supervisor's
// events through klog as `unit <kind> unit=<name> msg=...` (init/supervise's
// slog messages). ADJUST HERE if that wording changes.
const (
	unitEventPattern = `unit %s\b.*\bunit=%s\b`
)

func unitEvent(kind, unit string) string {
	return fmt.Sprintf(unitEventPattern, regexp.QuoteMeta(kind), regexp.QuoteMeta(unit))
}

// checkRolesReady asserts, from a console that has printed the ready line,
// that every instance became ready, and dependents only after what they
// start after: web after db, lb after web (roles start in parallel
// otherwise, so the other ready lines come in any order).
func checkRolesReady(t *testing.T, console string, insts []stackfile.Instance) {
	t.Helper()
	readyAt := map[string]int{}
	for _, in := range insts {
		loc := regexp.MustCompile(unitEvent("ready", in.Name)).FindStringIndex(console)
		if loc == nil {
			t.Errorf("%s never became ready before the ready line", in.Name)
			continue
		}
		readyAt[in.Name] = loc[0]
	}
	for _, dep := range [][2]string{{"db1", "web1"}, {"web1", "lb1"}} {
		started := regexp.MustCompile(unitEvent("started", dep[1])).FindStringIndex(console)
		if _, ok := readyAt[dep[0]]; ok && started != nil && started[0] < readyAt[dep[0]] {
			t.Errorf("%s started before %s was ready", dep[1], dep[0])
		}
	}
	if ready := strings.Index(console, "magestack: stack ready"); ready >= 0 {
		for n, at := range readyAt {
			if at > ready {
				t.Errorf("%s became ready after the ready line", n)
			}
		}
	}
}

// freeLoopbackPort returns a TCP port on 127.0.0.1 nobody listens on now.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// bootWithWebForward boots the image with the guest's port 80 forwarded to
// a loopback port of this host (QEMU user networking), so a request walks
// the public path: uplink, fw's DNAT, the bridge, lb1.
func bootWithWebForward(t *testing.T, name, appendArgs string) (*qemu.VM, string) {
	t.Helper()
	im := qemu.RequireImage(t)
	opts := im.Options(appendArgs)
	opts.Name = name
	port := freeLoopbackPort(t)
	if len(opts.NICs) != 1 || !opts.NICs[0].User {
		t.Fatalf("image options: want one user-mode NIC, got %+v", opts.NICs)
	}
	opts.NICs[0].HostFwd = []string{fmt.Sprintf("tcp:127.0.0.1:%d-:80", port)}
	return qemu.Start(t, opts), fmt.Sprintf("http://127.0.0.1:%d/", port)
}

func getBody(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// waitBody polls url until its body contains want (the guest is slow under
// TCG); the timeout only catches a hang.
func waitBody(t *testing.T, url, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(qemu.Scale(timeout))
	var body string
	var err error
	for time.Now().Before(deadline) {
		body, err = getBody(url)
		if err == nil && strings.Contains(body, want) {
			return body
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s never answered with %q: last %q, %v", url, want, body, err)
	return ""
}

// TestRolesAllSevenReadyAndServing: in the default stack every role
// instance becomes ready, in the stack's start order, before the ready line;
// the website answers from lb1 through the public path.
func TestRolesAllSevenReadyAndServing(t *testing.T) {
	qemu.Require(t)
	vm, url := bootWithWebForward(t, "roles", "")
	insts, err := stackfile.Default().Instances()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	checkRolesReady(t, vm.Console(), insts)
	body := waitBody(t, url, "website via lb1", time.Minute)
	if !strings.Contains(body, "stack default") {
		t.Errorf("lb1 page does not name the stack: %q", body)
	}
	// Nothing restarted while the stack came up.
	for _, in := range insts {
		if strings.Contains(vm.Console(), "unit exited unit="+in.Name+" ") {
			t.Errorf("%s exited during boot:\n%s", in.Name, vm.Console())
		}
	}
}

// memhogStack is the default stack with web1 capped at 64 MiB and the
// memhog test hook on: after 10 s it grows until the cgroup's memory.max
// OOM-kills it, and role-init restarts it.
const memhogStack = `
stack: memhog
hosts:
  - name: dh1
    mac: "52:54:00:12:34:56"
public:
  vip: 10.0.2.50/24
internal: 172.16.0.0/24
roles:
  web: {count: 1, memory: 64MiB, settings: {test.memhog: "true"}}
`

// TestRolesMemoryHogOOMKilledOthersKeepServing: the hog in web1 is
// OOM-killed by web1's own memory.max (the guest has 2 GiB, so only the
// cgroup limit can kill it) and restarted, repeatedly, while every other
// role keeps running and the website keeps answering.
func TestRolesMemoryHogOOMKilledOthersKeepServing(t *testing.T) {
	qemu.Require(t)
	if _, err := stackfile.Parse("memhog.yaml", []byte(memhogStack)); err != nil {
		t.Fatalf("test stack is invalid: %v", err)
	}
	// The guest fetches the stack from this host's loopback through QEMU
	// user networking (10.0.2.2 is the host).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, memhogStack)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	cfg := fmt.Sprintf("magestack.config=http://10.0.2.2:%d/stack.yaml", l.Addr().(*net.TCPAddr).Port)

	vm, url := bootWithWebForward(t, "memhog", cfg+" magestack.console=shell")
	if _, err := vm.Expect(6*time.Minute, qemu.ReadyPattern); err != nil {
		t.Fatal(err)
	}
	waitBody(t, url, "website via lb1", time.Minute)
	// Two OOM kills: the hog came back after the first.
	for i := 1; i <= 2; i++ {
		if _, err := vm.Expect(3*time.Minute, unitEvent("oom", "web1")); err != nil {
			t.Fatalf("OOM kill %d of web1's hog not reported: %v", i, err)
		}
		waitBody(t, url, "website via lb1", time.Minute)
	}
	// On the operator console: the limit from the stack file is web1's
	// memory.max, the kills are counted there, and every role is ready.
	run := func(cmd string, patterns ...string) {
		t.Helper()
		if err := vm.SendConsole(cmd + "; echo @@rc=$?@@\n"); err != nil {
			t.Fatal(err)
		}
		for _, p := range patterns {
			if _, err := vm.Expect(2*time.Minute, p); err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
		}
		if m, err := vm.Expect(2*time.Minute, `@@rc=(\d+)@@`); err != nil || m[1] != "0" {
			t.Fatalf("%s: exit %v, %v", cmd, m, err)
		}
	}
	run("cat /sys/fs/cgroup/magestack/web1/memory.max", `(?m)^67108864\s*$`)
	run("grep oom_kill /sys/fs/cgroup/magestack/web1/memory.events", `(?m)^oom_kill [1-9]`)
	run("cat /sys/fs/cgroup/magestack/web1/cgroup.subtree_control", `memory`)
	run("magestack status", `(?m)^fw1\s+ready`, `(?m)^mail1\s+ready`, `(?m)^db1\s+ready`,
		`(?m)^web1\s+ready`, `(?m)^lb1\s+ready`, `(?m)^acc1\s+ready`, `(?m)^monitor1\s+ready`)

	// Only the hog died: no role exited or was OOM-killed besides web1.
	sc := bufio.NewScanner(strings.NewReader(vm.Console()))
	for sc.Scan() {
		line := sc.Text()
		for _, kind := range []string{"exited", "oom", "crash-loop", "failed"} {
			if strings.Contains(line, "unit "+kind+" ") && !strings.Contains(line, "unit=web1") {
				t.Errorf("another unit suffered: %s", line)
			}
		}
		if strings.Contains(line, "unit=web1") && (strings.Contains(line, "unit exited") || strings.Contains(line, "unit crash-loop")) {
			t.Errorf("web1 itself went down (only its hog should): %s", line)
		}
	}
}

// TestRolesOnCgroup2 runs init/roleenv's own tests inside a guest on
// Debian's kernel, where cgroup v2 controllers exist: the test binary is the
// guest's init (init/roleenv/guest_test.go). There, the tests that skip on
// the v1-hybrid development host must run and pass: a role's cgroup carries
// its cpu.weight, memory.max and pids.max, its services get groups of their
// own, and a memory hog is OOM-killed by the role's memory.max and
// restarted while the role keeps serving. Role start time is measured too.
func TestRolesOnCgroup2(t *testing.T) {
	qemu.Require(t)
	dir := t.TempDir()
	bin := guestTestBinary(t, dir, "./init/roleenv")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("the guest needs a static busybox (Debian busybox-static): %v", err)
	}
	files := []qemu.File{
		{Path: "init", Src: bin},
		{Path: "bin/busybox", Src: "/bin/busybox"},
		{Path: "bin/sh", Symlink: "busybox"},
	}
	modDir, err := qemu.KernelModulesDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range []string{"llc", "stp", "bridge", "veth", "overlay"} {
		var src string
		filepath.WalkDir(modDir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == mod+".ko" {
				src = p
			}
			return nil
		})
		if src == "" {
			t.Fatalf("module %s.ko not found under %s", mod, modDir)
		}
		files = append(files, qemu.File{Path: "lib/modules/" + mod + ".ko", Src: src, Mode: 0o644})
	}
	img := filepath.Join(dir, "initramfs.img")
	if err := qemu.WriteInitramfs(img, files); err != nil {
		t.Fatal(err)
	}
	kernel, err := qemu.KernelPath()
	if err != nil {
		t.Fatal(err)
	}
	tests := "TestRoleCgroupLimitsAndOOM|TestRoleStartTime"
	vm := qemu.Start(t, qemu.Options{Name: "roleenv", Kernel: kernel, Initrd: img, Memory: 1024, SMP: 2, NoReboot: true,
		Append: "quiet panic=-1 MAGESTACK_ROLEENV_GUEST=1 -- -test.run=^(" + tests + ")$"})

	console := guestTests(t, vm, "roleenv", strings.Split(tests, "|"), func(l string) bool { return strings.Contains(l, "role start (") })
	if m := regexp.MustCompile(`--- SKIP: \S+`).FindString(console); m != "" {
		t.Errorf("guest: %s", m)
	}
	// The guest runs from its initramfs, like a product host: roles cannot
	// pivot_root there and must take the move-root way.
	if !strings.Contains(console, "root=move") {
		t.Errorf("no role reported root=move on the initramfs guest")
	}
	if _, err := vm.Wait(qemu.Scale(time.Minute)); err != nil {
		t.Errorf("guest did not power off: %v", err)
	}
}
