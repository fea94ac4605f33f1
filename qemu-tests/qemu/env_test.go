package qemu

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseScale(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"", 1, false},
		{"  ", 1, false},
		{"2", 2, false},
		{"0.5", 0.5, false},
		{"0", 1, true},
		{"-3", 1, true},
		{"fast", 1, true},
		{"1e9", 1, true},
	}
	for _, tt := range tests {
		got, err := parseScale(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseScale(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestScale(t *testing.T) {
	t.Setenv(EnvTimeoutScale, "2.5")
	if got := Scale(10 * time.Second); got != 25*time.Second {
		t.Fatalf("Scale = %v, want 25s", got)
	}
	t.Setenv(EnvTimeoutScale, "bogus")
	if got := Scale(10 * time.Second); got != 10*time.Second {
		t.Fatalf("bad scale must fall back to 1: %v", got)
	}
	t.Setenv(EnvTimeoutScale, "")
	if got := Scale(time.Second); got != time.Second {
		t.Fatalf("unset scale: %v", got)
	}
}

func TestImagePathsAndCheck(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvBuild, dir)
	im, err := ImagePaths()
	if err != nil {
		t.Fatal(err)
	}
	if im.Kernel != filepath.Join(dir, "vmlinuz") || im.Initramfs != filepath.Join(dir, "initramfs.img") || im.Binary != filepath.Join(dir, "magestack") {
		t.Fatalf("paths %+v", im)
	}
	err = im.Check()
	if err == nil || !strings.Contains(err.Error(), "make image") || !strings.Contains(err.Error(), im.Initramfs) {
		t.Fatalf("missing files not named: %v", err)
	}
}

func TestRepoRootAndArtifactDir(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvArtifacts, "")
	d, err := artifactDir("TestBoot/sub test")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "qemu-tests", "artifacts", "TestBoot_sub_test"); d != want {
		t.Fatalf("artifactDir = %s, want %s", d, want)
	}
	t.Setenv(EnvArtifacts, "/tmp/arts")
	if d, _ := artifactDir("TestX"); d != "/tmp/arts/TestX" {
		t.Fatalf("with %s: %s", EnvArtifacts, d)
	}
}
