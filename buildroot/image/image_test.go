package image

import (
	"bytes"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestParseMapping(t *testing.T) {
	tests := []struct {
		in      string
		want    Mapping
		wantErr bool
	}{
		{"build/images/busybox:/usr/share/magestack/images/busybox", Mapping{"build/images/busybox", "/usr/share/magestack/images/busybox"}, false},
		{"a:/b:c", Mapping{"a", "/b:c"}, false},
		{"nocolon", Mapping{}, true},
		{":/dst", Mapping{}, true},
		{"src:relative", Mapping{}, true},
	}
	for _, tt := range tests {
		got, err := ParseMapping(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMapping(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("error %q does not name the input", err)
		}
	}
}

func TestParseSymlink(t *testing.T) {
	got, err := ParseSymlink("/usr/sbin/drbdsetup-84:../lib/drbd/drbdsetup-84")
	if err != nil || got != (Mapping{Src: "../lib/drbd/drbdsetup-84", Dst: "/usr/sbin/drbdsetup-84"}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"rel:target", "/link:", "/nocolon"} {
		if _, err := ParseSymlink(bad); err == nil {
			t.Errorf("ParseSymlink(%q): want an error", bad)
		}
	}
}

func TestBuildWithoutModules(t *testing.T) {
	a, sum, err := Build(Spec{Init: "/bin/busybox", Symlinks: []Mapping{{Src: "/init", Dst: "/sbin/init"}}})
	if err != nil {
		t.Skipf("needs a static /bin/busybox: %v", err)
	}
	if sum.KernelVersion != "" || len(sum.Modules) != 0 {
		t.Errorf("no module dir given, got %+v", sum)
	}
	var b bytes.Buffer
	if err := a.Write(&b); err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range recs {
		names[r.Name] = true
	}
	for _, n := range []string{"init", "bin/magestack", "sbin/init", "dev/console", "dev/null", "proc", "sys", "run", "tmp", "lib/modules"} {
		if !names[n] {
			t.Errorf("/%s missing", n)
		}
	}
}

func TestBuildRefusesMissingModuleTree(t *testing.T) {
	_, _, err := Build(Spec{Init: "/bin/busybox", ModulesDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no .ko files") {
		t.Fatalf("want an error about the empty module tree, got %v", err)
	}
}
