package debimage

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/images/manifest"
	"magestack/images/recipes"
)

func needTool(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func TestStrip(t *testing.T) {
	tree := t.TempDir()
	for _, p := range []string{"usr/share/doc/a/copyright", "etc/ssh/ssh_host_rsa_key", "etc/ssh/sshd_config", "var/lib/mysql/ibdata1"} {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(tree, p), []byte("x"), 0o644)
	}
	r, _ := recipes.Lookup("db")
	r.Remove = append(r.Remove, "etc/ssh/ssh_host_*")
	if err := Strip(tree, r); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"usr/share/doc/a": false, "usr/share/doc": true, "etc/ssh/ssh_host_rsa_key": false,
		"etc/ssh/sshd_config": true, "var/lib/mysql/ibdata1": false, "var/lib/mysql": true, "data": true,
	} {
		_, err := os.Stat(filepath.Join(tree, p))
		if (err == nil) != want {
			t.Errorf("%s exists=%v, want %v", p, err == nil, want)
		}
	}
}

// TestSquashReproducible: the same tree packed twice, with different file
// times and creation order, gives the same bytes.
func TestSquashReproducible(t *testing.T) {
	needTool(t, "mksquashfs")
	ctx := context.Background()
	digest := func(order []string, when time.Time) string {
		tree := t.TempDir()
		for _, n := range order {
			p := filepath.Join(tree, "etc", n)
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte("content of "+n), 0o644)
			os.Chtimes(p, when, when)
		}
		out := filepath.Join(t.TempDir(), "x.squashfs")
		if err := Squash(ctx, Options{}, tree, out, recipes.DefaultEpoch); err != nil {
			t.Fatal(err)
		}
		sum, _, err := FileDigest(out)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	a := digest([]string{"a", "b", "c"}, time.Unix(1, 0))
	b := digest([]string{"c", "a", "b"}, time.Now())
	if a != b {
		t.Fatalf("digests differ: %s %s", a, b)
	}
}

// TestCache: an intact cached image is used without any build tool; a
// damaged one is not used (the rebuild is attempted, and fails here for
// want of mmdebstrap on PATH).
func TestCache(t *testing.T) {
	needTool(t, "mksquashfs")
	ctx := context.Background()
	cache := t.TempDir()
	r, _ := recipes.Lookup("mail")
	key := r.Hash(BuilderVersion)
	dir := filepath.Join(cache, key)
	os.MkdirAll(dir, 0o755)
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "f"), []byte("x"), 0o644)
	img := filepath.Join(dir, "mail.squashfs")
	if err := Squash(ctx, Options{}, tree, img, 1); err != nil {
		t.Fatal(err)
	}
	sum, size, _ := FileDigest(img)
	b, _ := json.Marshal(meta{Role: "mail", SHA256: sum, Size: size, Recipe: key, Builder: BuilderVersion})
	os.WriteFile(filepath.Join(dir, "meta.json"), b, 0o644)

	t.Setenv("PATH", t.TempDir()) // no mmdebstrap, no mksquashfs
	res, err := Build(ctx, r, Options{CacheDir: cache})
	if err != nil {
		t.Fatalf("cached build: %v", err)
	}
	if !res.Cached || res.SHA256 != sum || res.Path != img {
		t.Fatalf("result %+v, want the cached image", res)
	}

	os.WriteFile(img, []byte("damaged"), 0o644)
	_, err = Build(ctx, r, Options{CacheDir: cache})
	if err == nil || !strings.Contains(err.Error(), "mmdebstrap not found") {
		t.Fatalf("damaged cache: err %v, want a rebuild attempt", err)
	}
}

// TestMakeDiskReproducible: the same images give the same disk bytes, the
// disk is ext4 labelled MAGESTACK-IMAGES and holds only the manifest's files.
func TestMakeDiskReproducible(t *testing.T) {
	needTool(t, "mksquashfs", "mke2fs", "debugfs")
	ctx := context.Background()
	dir := t.TempDir()
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "f"), []byte("x"), 0o644)
	if err := Squash(ctx, Options{}, tree, filepath.Join(dir, "web.squashfs"), 1); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "unrelated.txt"), []byte("not on the disk"), 0o644)
	sum, size, _ := FileDigest(filepath.Join(dir, "web.squashfs"))
	m := &manifest.Manifest{Version: manifest.Version, Images: []manifest.Image{{Name: "web", File: "web.squashfs", Size: size, SHA256: sum}}}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "images.img")
		if i == 1 {
			// A later second, new times and a read (atime) of every file:
			// none of it may reach the disk's bytes.
			time.Sleep(1100 * time.Millisecond)
			now := time.Now()
			os.Chtimes(filepath.Join(dir, "web.squashfs"), now, now)
			os.ReadFile(filepath.Join(dir, manifest.FileName))
		}
		if err := MakeDisk(ctx, dir, out, recipes.DefaultEpoch, Options{}); err != nil {
			t.Fatal(err)
		}
		d, _, _ := FileDigest(out)
		digests = append(digests, d)
		if i == 0 {
			ls, err := exec.Command("debugfs", "-R", "ls -p /", out).CombinedOutput()
			if err != nil {
				t.Fatalf("debugfs: %v %s", err, ls)
			}
			if !strings.Contains(string(ls), "/web.squashfs/") || !strings.Contains(string(ls), "/manifest.json/") || strings.Contains(string(ls), "unrelated") {
				t.Fatalf("disk listing:\n%s", ls)
			}
			st, err := exec.Command("debugfs", "-R", "stat /web.squashfs", out).CombinedOutput()
			if err != nil || !strings.Contains(string(st), "ctime: 0x67748580:") {
				t.Fatalf("web.squashfs's ctime is not the epoch: %v\n%s", err, st)
			}
			lbl, _ := exec.Command("e2label", out).Output()
			if strings.TrimSpace(string(lbl)) != DiskLabel {
				t.Fatalf("label %q", lbl)
			}
		}
	}
	if digests[0] != digests[1] {
		t.Fatalf("disk images differ: %v", digests)
	}
}

func TestPrune(t *testing.T) {
	cache := t.TempDir()
	keep := strings.Repeat("a", 64)
	old := strings.Repeat("b", 64)
	for _, d := range []string{keep, old, "debs"} {
		os.MkdirAll(filepath.Join(cache, d), 0o755)
	}
	os.WriteFile(filepath.Join(cache, old+".lock"), nil, 0o644)
	removed, err := Prune(cache, []string{keep})
	if err != nil || len(removed) != 1 || removed[0] != old {
		t.Fatalf("removed %v, %v", removed, err)
	}
	ents, _ := os.ReadDir(cache)
	if len(ents) != 2 {
		t.Fatalf("left %d entries, want the kept image and debs", len(ents))
	}
}
