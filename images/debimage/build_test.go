package debimage

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"magestack/images/recipes"
)

// TestBuildMailImage builds the real mail image with mmdebstrap from
// Debian's archive, into the shared image cache (cold: minutes; after
// that, or after `make images`, a cache hit). It checks what is inside and
// that a second build comes from the cache with the same digest.
func TestBuildMailImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Debian image (minutes when the cache is cold)")
	}
	if os.Geteuid() != 0 {
		t.Skip("mmdebstrap --mode=root needs root")
	}
	needTool(t, "mmdebstrap", "mksquashfs", "unsquashfs")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r, _ := recipes.Lookup("mail")
	res, err := Build(ctx, r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mail image: %d bytes, %.1f s, cached=%v, %s", res.Size, res.Duration.Seconds(), res.Cached, res.Path)
	ls, err := exec.Command("unsquashfs", "-lc", res.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	list := string(ls)
	for _, want := range []string{"/usr/sbin/postfix", "/usr/sbin/sendmail", "/etc/postfix", "/data"} {
		if !strings.Contains(list, want) {
			t.Errorf("image lacks %s", want)
		}
	}
	for _, gone := range []string{"/usr/share/doc/", "/usr/share/man/", "/var/lib/apt/lists/", "/etc/mailname", "/etc/machine-id", "/var/log/"} {
		if strings.Contains(list, gone) {
			t.Errorf("image still holds %s", gone)
		}
	}
	var postfix bool
	for _, p := range res.Packages {
		postfix = postfix || strings.HasPrefix(p, "postfix=")
	}
	if !postfix {
		t.Errorf("installed package list lacks postfix: %v", res.Packages)
	}
	again, err := Build(ctx, r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.SHA256 != res.SHA256 {
		t.Fatalf("second build: cached=%v digest %s, want a cache hit with %s", again.Cached, again.SHA256, res.SHA256)
	}
}
