package tftpd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/pin/tftp/v3"
)

func TestCleanName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"undionly.kpxe", "undionly.kpxe", true},
		{"/ipxe.efi", "ipxe.efi", true},
		{"efi/./ipxe.efi", "efi/ipxe.efi", true},
		{"../etc/passwd", "", false},
		{"/../../etc/shadow", "", false},
		{"a/../../b", "", false},
		{"..\\..\\x", "", false},
		{"", "", false},
		{"a\x00b", "", false},
		{"//", "", false},
		{"//etc/passwd", "", false},
	} {
		got, err := CleanName(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestServesFilesAndRefusesEscapes(t *testing.T) {
	top := t.TempDir()
	dir := filepath.Join(top, "boot")
	os.Mkdir(dir, 0o755)
	payload := bytes.Repeat([]byte("ipxe"), 5000) // several blocks
	os.WriteFile(filepath.Join(dir, "undionly.kpxe"), payload, 0o644)
	os.WriteFile(filepath.Join(top, "secret"), []byte("no"), 0o644)
	os.Symlink("../secret", filepath.Join(dir, "link"))

	s, err := New(map[string]string{"undionly.kpxe": filepath.Join(dir, "undionly.kpxe")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, conn) }()
	defer func() { cancel(); <-done }()

	c, err := tftp.NewClient(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	wt, err := c.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("got %d bytes, want %d", got.Len(), len(payload))
	}
	for _, name := range []string{"../secret", "/../secret", "link", "missing", "../boot/undionly.kpxe"} {
		if wt, err := c.Receive(name, "octet"); err == nil {
			var b bytes.Buffer
			if _, err := wt.WriteTo(&b); err == nil {
				t.Errorf("%q was served: %q", name, b.String())
			}
		}
	}
	// The server still serves after refusals, with or without a leading slash.
	if _, err := c.Receive("/undionly.kpxe", "octet"); err != nil {
		t.Fatalf("server stopped serving after refusals: %v", err)
	}
}

func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a", "../a", "/x/../../y", "a/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		clean, err := CleanName(s)
		if err != nil {
			return
		}
		if clean == ".." || filepath.IsAbs(clean) || len(clean) >= 2 && clean[:2] == ".." && (len(clean) == 2 || clean[2] == '/') {
			t.Fatalf("CleanName(%q) = %q escapes", s, clean)
		}
	})
}

func TestNewRefusesMissingFiles(t *testing.T) {
	if _, err := New(map[string]string{"ipxe.efi": "/nonexistent/ipxe.efi"}, nil, nil); err == nil {
		t.Fatal("a missing file was accepted")
	}
	if _, err := New(map[string]string{"ipxe.efi": t.TempDir()}, nil, nil); err == nil {
		t.Fatal("a directory was accepted")
	}
}
