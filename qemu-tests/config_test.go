package qemutests

import (
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"magestack/init/stackfile"
	"magestack/qemu-tests/qemu"
)

// Console wording these scenarios rely on: the init face's config step
// (init/cmd/magestack configStep) logs these through klog. ADJUST HERE if
// that wording changes.
const (
	cfgLoadedPattern = `stack config loaded stack=%s origin=%s revision=%s`
	cfgFallback      = `better origin passed over`
)

const (
	cfgMAC     = "52:54:00:99:00:07"
	cfgServer  = "10.99.60.1"
	cfgGuest   = "10.99.60.2"
	cfgGitPort = 8080
)

// cfgGitRepo is a bare repository built with the git binary, served by
// `git http-backend` from a namespace on the VM's test network.
type cfgGitRepo struct {
	t          *testing.T
	root, work string
}

func newCfgGitRepo(t *testing.T) *cfgGitRepo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is missing: apt-get install git")
	}
	root := t.TempDir()
	r := &cfgGitRepo{t: t, root: root, work: filepath.Join(root, "work")}
	r.git("", "init", "-q", "--bare", "-b", "main", filepath.Join(root, "stacks.git"))
	r.git("", "init", "-q", "-b", "main", r.work)
	r.git(r.work, "remote", "add", "origin", filepath.Join(root, "stacks.git"))
	return r
}

func (r *cfgGitRepo) git(dir string, args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.net",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.net", "GIT_CONFIG_NOSYSTEM=1", "HOME="+r.root)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes stacks/shop1.yaml, commits, pushes and returns the hash.
func (r *cfgGitRepo) commit(content string) string {
	r.t.Helper()
	os.MkdirAll(filepath.Join(r.work, "stacks"), 0o755)
	if err := os.WriteFile(filepath.Join(r.work, "stacks", "shop1.yaml"), []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.git(r.work, "add", "-A")
	r.git(r.work, "commit", "-q", "-m", "stack change")
	r.git(r.work, "push", "-q", "origin", "main")
	return r.git(r.work, "rev-parse", "HEAD")
}

// serve runs git http-backend behind an HTTP listener inside ns.
func (r *cfgGitRepo) serve(ns *qemu.Namespace) {
	r.t.Helper()
	r.serveStoppable(ns)
}

// serveStoppable is serve, returning a function that stops the server.
func (r *cfgGitRepo) serveStoppable(ns *qemu.Namespace) func() {
	r.t.Helper()
	exe := filepath.Join(r.git("", "--exec-path"), "git-http-backend")
	if _, err := os.Stat(exe); err != nil {
		r.t.Fatalf("git-http-backend is missing: %v", err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", cfgServer, cfgGitPort))
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	srv := &http.Server{Handler: &cgi.Handler{Path: exe, Root: "/git",
		Env: []string{"GIT_PROJECT_ROOT=" + r.root, "GIT_HTTP_EXPORT_ALL=1"}}}
	go srv.Serve(ln)
	r.t.Cleanup(func() { srv.Close() })
	return func() { srv.Close() }
}

// cfgStack is the default stack renamed, with the VM as its one host.
func cfgStack(name string) string {
	s := string(stackfile.DefaultYAML())
	s = strings.Replace(s, "stack: default", "stack: "+name, 1)
	return strings.Replace(s, `mac: "52:54:00:12:34:56"`, `mac: "`+cfgMAC+`"`, 1)
}

func cfgBoot(t *testing.T, n *qemu.Net, tap, name string, drives ...qemu.Drive) *qemu.VM {
	t.Helper()
	im := qemu.RequireImage(t)
	source := fmt.Sprintf("git+http://%s:%d/git/stacks.git#main:stacks/shop1.yaml", cfgServer, cfgGitPort)
	opts := im.Options(fmt.Sprintf("ip=%s::%s:255.255.255.0::eth0:off magestack.config=%s", cfgGuest, cfgServer, source))
	opts.Name = name
	opts.NetNS = n.NetNS()
	opts.NICs = []qemu.NIC{{Tap: tap, MAC: cfgMAC, ROM: "none"}}
	opts.Drives = drives
	vm := qemu.Start(t, opts)
	t.Cleanup(func() {
		var lines []string
		for _, l := range strings.Split(vm.Console(), "\n") {
			if strings.Contains(l, "config") || strings.Contains(l, "stack ready") {
				lines = append(lines, l)
			}
		}
		t.Logf("config lines on the console:\n%s", strings.Join(lines, "\n"))
	})
	return vm
}

// TestConfigBootFromGit: the guest fetches its stack file from a Git
// repository over HTTP (go-git in the initramfs, no git binary in the
// guest), names the commit it runs, and brings that stack up. A broken
// head commit is refused with its file, line and field, and the host boots
// the built-in stack instead of dying.
func TestConfigBootFromGit(t *testing.T) {
	qemu.Require(t)
	repo := newCfgGitRepo(t)
	good := cfgStack("gitshop")
	if _, err := stackfile.Parse("shop1.yaml", []byte(good)); err != nil {
		t.Fatalf("test stack is invalid: %v", err)
	}
	commit := repo.commit(good)

	n := qemu.NewNet(t, "cfg")
	tap := n.AddTap("tap-cfg")
	srv := n.AddClient("gitsrv", cfgServer+"/24")
	repo.serve(srv)

	t.Run("boots the commit", func(t *testing.T) {
		vm := cfgBoot(t, n, tap, "cfg1")
		if _, err := vm.Expect(6*time.Minute, fmt.Sprintf(cfgLoadedPattern, "gitshop", "source", commit[:12])); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.Expect(8*time.Minute, qemu.ReadyPattern); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("broken commit falls back", func(t *testing.T) {
		broken := strings.Replace(good, "roles:", "rolez:", 1)
		repo.commit(broken)
		vm := cfgBoot(t, n, tap, "cfg2")
		m, err := vm.Expect(6*time.Minute, cfgFallback+`.*`+regexp.QuoteMeta(`stacks/shop1.yaml:`)+`(\d+):(\d+): rolez: unknown key`)
		if err != nil {
			t.Fatal(err)
		}
		wantLine := strings.Count(broken[:strings.Index(broken, "rolez:")], "\n") + 1
		if m[1] != fmt.Sprint(wantLine) || m[2] != "1" {
			t.Errorf("error points at %s:%s, want %d:1", m[1], m[2], wantLine)
		}
		if _, err := vm.Expect(time.Minute, fmt.Sprintf(cfgLoadedPattern, "default", "builtin", `[0-9a-f]{12}`)); err != nil {
			t.Fatal(err)
		}
	})
}
