package netboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"magestack/images/manifest"
	"magestack/init/imagestore"
	"magestack/init/nsdo"
)

// roleImages writes name -> content as role images with their manifest.
func roleImages(t *testing.T, images map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	m := &manifest.Manifest{Version: manifest.Version}
	for name, content := range images {
		file := name + ".squashfs"
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(content))
		m.Images = append(m.Images, manifest.Image{Name: name, File: file, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])})
	}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestServesRoleImagesToHosts: with --images, the boot script names the
// image server on the kernel command line, and a host fetches the images
// it needs through it (manifest first, digests verified by the host);
// files the manifest does not list are never served.
func TestServesRoleImagesToHosts(t *testing.T) {
	const mac = "52:54:00:aa:00:02"
	srvNS, cliNS := bootNet(t, mac)
	stack, images, boot := testFiles(t)
	web := strings.Repeat("web image ", 50000)
	dir := roleImages(t, map[string]string{"web": web, "db": "db image"})
	os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("not an image"), 0o644)
	out := startServer(t, srvNS, serverArgs(stack, images, boot, "--images", dir)...)
	sh(t, "ip", "netns", "exec", nsName(t, cliNS), "ip", "addr", "add", "10.77.0.12/24", "dev", "nbcli0")

	client := nsHTTPClient(t, cliNS)
	script, err := get(client, "http://10.77.0.1:8080/boot/"+mac+".ipxe", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(script, " magestack.images=http://10.77.0.1:8080/images ") {
		t.Fatalf("boot script does not name the image server:\n%s", script)
	}
	for _, bad := range []string{"/images/secret.txt", "/images/..%2fsecret.txt", "/images/..%2f..%2fetc%2fpasswd", "/images/vmlinuz"} {
		if body, err := get(client, "http://10.77.0.1:8080"+bad, ""); err == nil {
			t.Errorf("%s served: %q", bad, body)
		}
	}
	if got, err := get(client, "http://10.77.0.1:8080/images/web.squashfs", "bytes=10-19"); err != nil || got != web[10:20] {
		t.Fatalf("range request: %q, %v", got, err)
	}

	cache := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, res, err := imagestore.Fetch(ctx, nil, imagestore.FetchOptions{
		URL: "http://10.77.0.1:8080/images", CacheDir: cache, Names: []string{"web"},
		Client: &http.Client{Transport: &http.Transport{DialContext: nsdo.DialContext(cliNS)}},
	})
	if err != nil {
		t.Fatalf("fetch through netboot: %v", err)
	}
	if res.Sources["web"] != imagestore.FromServer {
		t.Fatalf("result %+v", res)
	}
	b, err := os.ReadFile(st.Path("web"))
	if err != nil || string(b) != web {
		t.Fatalf("fetched web image: %d bytes, %v", len(b), err)
	}
	// The server logs from its own process: wait for the line rather than
	// read whatever has arrived through the pipe so far.
	log := out.String()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log, "role image requested") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		log = out.String()
	}
	if !strings.Contains(log, "role image requested") || strings.Contains(log, "file=db.squashfs") {
		t.Errorf("the server's log should show web requested and db never:\n%s", log)
	}
}

func TestRoleImagesOptionalUnlessRequired(t *testing.T) {
	stack, images, boot := testFiles(t)
	empty := t.TempDir()
	_, err := New(Options{Interface: "lo", StackFile: stack, ImageDir: images, BootDir: boot, RoleImageDir: empty, RequireRoleImages: true})
	if err == nil || !strings.Contains(err.Error(), "--images") || !strings.Contains(err.Error(), "manifest.json") {
		t.Fatalf("New with a required but absent manifest = %v", err)
	}
	// Default directory missing: served nothing, boot args without the key.
	s, err := New(Options{Interface: "lo", StackFile: stack, ImageDir: images, BootDir: boot, RoleImageDir: empty})
	if err != nil {
		t.Fatal(err)
	}
	if s.ImagesURL() != "" {
		t.Fatalf("images URL %q with no manifest", s.ImagesURL())
	}
	// A listed file of the wrong size is refused at start when required.
	dir := roleImages(t, map[string]string{"web": "web"})
	os.WriteFile(filepath.Join(dir, "web.squashfs"), []byte("truncated?"), 0o644)
	_, err = New(Options{Interface: "lo", StackFile: stack, ImageDir: images, BootDir: boot, RoleImageDir: dir, RequireRoleImages: true})
	if err == nil || !strings.Contains(err.Error(), "image web: web.squashfs is 10 bytes, the manifest says 3") {
		t.Fatalf("New with a wrong-size image = %v", err)
	}
}
