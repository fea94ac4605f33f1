// Package busybox builds the small test image every role runs until the real
// role images exist: Debian's static busybox with its applet links, a passwd
// and group, a web root per role and the empty mount points role-init fills
// in. The tree is a plain directory; role-init mounts it read-only as the
// lower layer of the role's overlay.
package busybox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// DefaultBinary is where Debian's busybox-static package installs busybox.
const DefaultBinary = "/bin/busybox"

// Applets are linked to bin/busybox. Services name them by path
// (/bin/httpd ...), so a missing one fails the image build, not a role start.
var Applets = []string{
	"sh", "ash", "httpd", "nc", "sleep", "cat", "echo", "ls", "ps", "kill", "hostname",
	"id", "env", "true", "false", "test", "[", "printf", "mkdir", "rm", "cp", "mv", "ln",
	"touch", "chmod", "head", "tail", "grep", "sed", "wc", "date", "uptime", "free", "df",
	"du", "dd", "top", "wget", "ip", "ifconfig", "route", "ping", "nslookup", "netstat",
	"timeout", "stat", "find", "tee", "xargs", "which", "uname", "sync", "seq", "yes", "mount",
	"umount", "whoami", "tr", "cut", "sort", "uniq", "basename", "dirname", "readlink",
	"realpath", "mktemp", "pidof", "pgrep", "pkill", "less", "more", "vi", "tar", "gzip",
}

// MountPoints are created empty; role-init mounts over them.
var MountPoints = []string{"proc", "sys", "dev", "tmp", "run", "data", "root", "var/log", "var/tmp", "home"}

// Roles get a web root each at /www/<role> with an index page naming the
// role; role-init writes per-instance pages over it from the role's payload.
var Roles = []string{"fw", "lb", "web", "db", "mail", "acc", "monitor"}

// Options tune a build.
type Options struct {
	Binary string // busybox to copy; DefaultBinary when empty
}

// Build writes the image tree into dst, which must be empty or absent.
func Build(dst string, opt Options) error {
	if opt.Binary == "" {
		opt.Binary = DefaultBinary
	}
	if err := checkEmpty(dst); err != nil {
		return err
	}
	for _, d := range append([]string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "www", "srv", "usr/libexec/magestack"}, MountPoints...) {
		if err := os.MkdirAll(filepath.Join(dst, d), 0o755); err != nil {
			return fmt.Errorf("image %s: %w", dst, err)
		}
	}
	if err := os.Chmod(filepath.Join(dst, "tmp"), os.ModeSticky|0o777); err != nil {
		return fmt.Errorf("image %s: %w", dst, err)
	}
	if err := copyFile(opt.Binary, filepath.Join(dst, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("image %s: busybox: %w (install Debian's busybox-static)", dst, err)
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(dst, "bin", a)); err != nil {
			return fmt.Errorf("image %s: applet %s: %w", dst, a, err)
		}
	}
	for _, f := range files() {
		p := filepath.Join(dst, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("image %s: %w", dst, err)
		}
		if err := os.WriteFile(p, []byte(f.content), f.mode); err != nil {
			return fmt.Errorf("image %s: %w", dst, err)
		}
	}
	return nil
}

type file struct {
	path    string
	content string
	mode    os.FileMode
}

func files() []file {
	fs := []file{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/www:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644},
		{"etc/group", "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n", 0o644},
		{"etc/shadow", "root:*:1::::::\nwww-data:*:1::::::\nnobody:*:1::::::\n", 0o600},
		// Placeholders: role-init writes the instance's own versions.
		{"etc/hostname", "", 0o644},
		{"etc/hosts", "127.0.0.1 localhost\n", 0o644},
		{"etc/os-release", "NAME=\"magestack busybox test image\"\nID=magestack-busybox\n", 0o644},
		// banner answers one TCP connection with a line naming the service
		// (nc -ll -e runs it per connection), so tests can tell who answered.
		{"usr/libexec/magestack/banner", "#!/bin/sh\necho \"${BANNER:-magestack test listener} on $(hostname)\"\n", 0o755},
	}
	for _, r := range Roles {
		fs = append(fs, file{"www/" + r + "/index.html",
			fmt.Sprintf("<!doctype html>\n<title>magestack %s</title>\n<h1>magestack %s role (busybox test image)</h1>\n", r, r), 0o644})
	}
	// monitor's status page: a CGI script polling the stack's listeners.
	fs = append(fs, file{"www/monitor/cgi-bin/status", monitorStatusCGI, 0o755})
	return fs
}

const monitorStatusCGI = `#!/bin/sh
# Reachability of every role's listeners, as seen from monitor.
echo "Content-Type: text/plain"
echo
for t in lb1.i:80 web1.i:80 db1.i:3306 db1.i:6379 db1.i:11211 mail1.i:25 acc1.i:22; do
	if timeout 2 nc "${t%:*}" "${t#*:}" </dev/null >/dev/null 2>&1; then s=up; else s=down; fi
	echo "$t $s"
done
`

func checkEmpty(dst string) error {
	entries, err := os.ReadDir(dst)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("image %s: %w", dst, err)
	}
	if len(entries) > 0 {
		names := make([]string, 0, 3)
		for i := 0; i < len(entries) && i < 3; i++ {
			names = append(names, entries[i].Name())
		}
		return fmt.Errorf("image %s: directory is not empty (%s...): remove it first", dst, strings.Join(names, ", "))
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
