package roleinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A role image is hostile input too: no symlink in it may send a rendered
// file, or a directory made for one, outside the role's root.
func TestWriteInRootStaysInRoot(t *testing.T) {
	for _, tt := range []struct {
		name    string
		link    string // image path of a symlink
		target  func(outside string) string
		write   string // path written
		inImage bool   // the link's target path also exists inside the image
		wantErr string
	}{
		// Followed as the role sees it: to the same path inside the root.
		{name: "absolute directory symlink", link: "etc/magestack", target: func(o string) string { return o }, write: "/etc/magestack/db.php", inImage: true},
		{name: "dot-dot directory symlink", link: "etc/nginx", target: func(o string) string { return "../../../../../../../../" + o }, write: "/etc/nginx/nginx.conf", inImage: true},
		// A target missing inside the root is missing, however it exists
		// on the host.
		{name: "absolute symlink to a host directory", link: "etc/magestack", target: func(o string) string { return o }, write: "/etc/magestack/db.php", wantErr: "no such file"},
		{name: "symlink to a missing directory", link: "srv", target: func(o string) string { return filepath.Join(o, "new") }, write: "/srv/status/index.html", wantErr: "no such file"},
		{name: "final component symlink", link: "etc/hosts", target: func(o string) string { return filepath.Join(o, "hosts") }, write: "/etc/hosts", wantErr: "is a symlink in the image"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, outside := t.TempDir(), t.TempDir()
			os.MkdirAll(filepath.Join(root, filepath.Dir(tt.link)), 0o755)
			if err := os.Symlink(tt.target(outside), filepath.Join(root, tt.link)); err != nil {
				t.Fatal(err)
			}
			if tt.inImage {
				os.MkdirAll(filepath.Join(root, outside), 0o755)
			}
			err := writeInRoot(root, tt.write, []byte("rendered\n"), 0o600)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			escaped := false
			filepath.Walk(outside, func(p string, fi os.FileInfo, err error) error {
				if err == nil && p != outside {
					escaped = true
					t.Errorf("written outside the root: %s", p)
				}
				return nil
			})
			if escaped || tt.wantErr != "" {
				return
			}
			// The write followed the link as the role will see it: inside.
			var found string
			filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode().IsRegular() {
					found = p
				}
				return nil
			})
			if found == "" {
				t.Fatal("the file was not written inside the root")
			}
			if fi, _ := os.Stat(found); fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
		})
	}
}

func TestWriteInRootMakesDirectories(t *testing.T) {
	root := t.TempDir()
	if err := writeInRoot(root, "/usr/libexec/magestack/sshd", []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, "usr/libexec/magestack/sshd"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("stat: %v %v", fi, err)
	}
	if err := writeInRoot(root, "/", nil, 0o644); err == nil {
		t.Error("writing the root itself was accepted")
	}
}
