package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true},
		{"pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00", false},
		{"pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", true},
		{"virtio:d00000001v*", "virtio:d00000001v00001AF4", true},
		{"virtio:d00000001v*", "virtio:d00000010v00001AF4", false},
		{"acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:", true},
		{"acpi*:PNP0C0C:*", "acpi:LNXPWRBN:", false},
		{"input:b*v*p*e*-e*k*r*a*m*l*s*f*w*", "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw", true},
		{"*", "a/b/c", true}, // '*' spans '/', unlike path.Match
		{"of:N*T*Cfsl,imx[0-9]*", "of:NuartTCfsl,imx6", true},
		{"of:N*T*Cfsl,imx[!0-9]*", "of:NuartTCfsl,imx6", false},
		{"of:N*T*Cfsl,imx[^0-9]*", "of:NuartTCfsl,imxq", true},
		{"dmi*:svnLENOVO:pn[0-9][0-9]*", "dmi:bvnX:svnLENOVO:pn20ABC", true}, // '*' after "dmi" spans ":bvnX"
		{"dmi*:svnLENOVO:pn[0-9][0-9]*", "dmi:bvnX:svnLENOVO:pnX0ABC", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{`a\*c`, "a*c", true},
		{`a\*c`, "abc", false},
		{"[]]x", "]x", true},
		{"[a-]x", "-x", true},
		{"[abc", "[abc", true}, // unclosed class is literal
		{"usb:v*p*d*dc*dsc*dp*ic03isc01ip02in*", "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip02in00", true},
		{"usb:v*p*d*dc*dsc*dp*ic03isc01ip02in*", "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00", false},
		{"", "", true},
		{"", "x", false},
		{"**", "", true},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("pci:v*d*", "pci:v1d2")
	f.Add("[!a-z]*?\\", "Q\\")
	f.Fuzz(func(t *testing.T, p, s string) {
		Match(p, s) // must not panic or hang
		if !strings.ContainsAny(p, `*?[\`) && Match(p, s) != (p == s) {
			t.Fatalf("literal pattern %q vs %q", p, s)
		}
		if !Match("*", s) {
			t.Fatalf("* does not match %q", s)
		}
		// Without classes or escapes, fnmatch is a simple regexp.
		if !strings.ContainsAny(p, `[\`) && utf8.ValidString(p) && utf8.ValidString(s) && len(p) < 64 {
			var re strings.Builder
			re.WriteString(`(?s)^`)
			for _, r := range p {
				switch r {
				case '*':
					re.WriteString(`.*`)
				case '?':
					re.WriteString(`.`)
				default:
					re.WriteString(regexp.QuoteMeta(string(r)))
				}
			}
			re.WriteString(`$`)
			want := regexp.MustCompile(re.String()).MatchString(s)
			// '?' is one byte in fnmatch, one rune in a regexp: compare on ASCII.
			if isASCII(p+s) && Match(p, s) != want {
				t.Fatalf("Match(%q, %q) = %v, regexp says %v", p, s, !want, want)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func openTestIndex(t *testing.T) *Index {
	t.Helper()
	ix, err := Open("testdata/modules")
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestResolve(t *testing.T) {
	ix := openTestIndex(t)
	tests := []struct {
		in   string
		want []string
	}{
		{"virtio_net", []string{"virtio_net"}},
		{"virtio-rng", []string{"virtio_rng"}},
		{"fs-overlay", []string{"overlay"}},
		{"net-pf-16-proto-12", []string{"nfnetlink"}}, // alias of a builtin
		{"nfnetlink", []string{"nfnetlink"}},
		{"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", []string{"virtio_pci"}},
		{"virtio:d00000001v00001AF4", []string{"virtio_net"}},
		{"acpi:LNXPWRBN:", []string{"button"}},
		{"pci:v00008086d00007000sv0000sd0000bc06sc01i00", nil},
		{"nonsense", nil},
	}
	for _, tt := range tests {
		if got := ix.Resolve(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Resolve(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLoadOrder(t *testing.T) {
	ix := openTestIndex(t)
	tests := []struct {
		name    string
		want    []string
		wantErr string
	}{
		{"virtio_net", []string{"virtio", "virtio_ring", "failover", "net_failover", "virtio_net"}, ""},
		{"virtio_pci", []string{"virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci"}, ""},
		{"r8169", []string{"realtek", "r8169"}, ""}, // softdep pre
		{"nfnetlink", nil, ""}, // builtin: nothing to load
		{"cycle_a", nil, "cycle"},
		{"missing_dep", nil, "not_there"},
		{"unknown", nil, "not found"},
	}
	for _, tt := range tests {
		got, err := ix.LoadOrder(tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("LoadOrder(%s) err = %v, want one containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("LoadOrder(%s) = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(t.TempDir()); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("missing modules.dep: err = %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("a.ko:\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.alias"), []byte("alias onlytwo\n"), 0o644)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "modules.alias:1") {
		t.Errorf("bad alias line: err = %v, want file:line", err)
	}
}

// fakeKernel records insertions and, like a real kernel, makes devices
// appear when their bus driver loads.
type fakeKernel struct {
	sysfs    string
	inserted []string
	reveal   map[string]map[string]string // module -> device dir -> modalias
}

func (k *fakeKernel) load(path, params string) error {
	name := NameOf(path)
	k.inserted = append(k.inserted, name)
	for dev, alias := range k.reveal[name] {
		addDevice(k.sysfs, dev, alias)
	}
	return nil
}

func addDevice(sysfs, dev, alias string) {
	d := filepath.Join(sysfs, "bus", dev)
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "modalias"), []byte(alias+"\n"), 0o644)
}

func TestColdplugRevealsDevicesInRounds(t *testing.T) {
	ix := openTestIndex(t)
	sysfs := t.TempDir()
	addDevice(sysfs, "pci/devices/0000:00:03.0", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	addDevice(sysfs, "pci/devices/0000:00:04.0", "pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00")
	addDevice(sysfs, "pci/devices/0000:00:01.0", "pci:v00008086d00007000sv00000000sd00000000bc06sc01i00")
	addDevice(sysfs, "acpi/devices/LNXPWRBN:00", "acpi:LNXPWRBN:")
	k := &fakeKernel{sysfs: sysfs, reveal: map[string]map[string]string{
		"virtio_pci": {
			"virtio/devices/virtio0": "virtio:d00000001v00001AF4",
			"virtio/devices/virtio1": "virtio:d00000004v00001AF4",
		},
		"button": {"../class/input/input0": "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"},
	}}
	l := NewLoader(ix, slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.load, l.sysModule = k.load, ""
	res := l.Coldplug(context.Background(), sysfs, 4)
	for _, want := range []string{"virtio_pci", "button", "virtio_net", "virtio_rng", "evdev"} {
		if !contains(res.Loaded, want) {
			t.Errorf("coldplug did not load %s; loaded %v", want, res.Loaded)
		}
	}
	if len(res.Errors) != 0 {
		t.Errorf("errors: %v", res.Errors)
	}
	// Each module once, and every dependency before its user.
	seen := map[string]int{}
	for i, m := range k.inserted {
		if _, dup := seen[m]; dup {
			t.Errorf("%s inserted twice: %v", m, k.inserted)
		}
		seen[m] = i
	}
	for _, m := range k.inserted {
		order, _ := ix.LoadOrder(m)
		for _, dep := range order {
			if seen[dep] > seen[m] {
				t.Errorf("%s loaded after its user %s: %v", dep, m, k.inserted)
			}
		}
	}
	if res.Unmatched != 1 {
		t.Errorf("unmatched = %d, want 1 (the host bridge)", res.Unmatched)
	}
}

func TestLoadUnknown(t *testing.T) {
	l := NewLoader(openTestIndex(t), slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.load = func(string, string) error { t.Fatal("nothing should load"); return nil }
	if _, err := l.Load(context.Background(), "no-such-thing", ""); err == nil || !strings.Contains(err.Error(), "no-such-thing") {
		t.Fatalf("err = %v", err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestDefaultDirNamesRunningKernel(t *testing.T) {
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if want := filepath.Join("/lib/modules", strings.TrimSpace(string(rel))); len(rel) > 0 && dir != want {
		t.Fatalf("DefaultDir = %s, want %s", dir, want)
	}
}

func TestGunzip(t *testing.T) {
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write([]byte("\x7fELF module image"))
	w.Close()
	got, err := gunzip(&z)
	if err != nil || string(got) != "\x7fELF module image" {
		t.Fatalf("gunzip = %q, %v", got, err)
	}
	if _, err := gunzip(strings.NewReader("not gzip")); err == nil {
		t.Fatal("garbage accepted")
	}
}

// TestLoadOrderRandomGraphs checks on random dependency DAGs that every
// module comes after all of its (transitive) dependencies, exactly once.
func TestLoadOrderRandomGraphs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		n := 2 + rng.IntN(25)
		deps := make([][]int, n)
		var dep strings.Builder
		for i := 0; i < n; i++ {
			// Only lower-numbered deps: a DAG. Listed in random order, not
			// depmod's, to check the order does not rely on the listing.
			for j := 0; j < i; j++ {
				if rng.IntN(4) == 0 {
					deps[i] = append(deps[i], j)
				}
			}
			rng.Shuffle(len(deps[i]), func(a, b int) { deps[i][a], deps[i][b] = deps[i][b], deps[i][a] })
			fmt.Fprintf(&dep, "kernel/m%d.ko:", i)
			for _, d := range deps[i] {
				fmt.Fprintf(&dep, " kernel/m%d.ko", d)
			}
			dep.WriteString("\n")
		}
		ix := &Index{Dir: "x", paths: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{},
			pre: map[string][]string{}, post: map[string][]string{}}
		if err := parseLines("modules.dep", strings.NewReader(dep.String()), ix.parseDep); err != nil {
			t.Fatal(err)
		}
		top := fmt.Sprintf("m%d", n-1)
		order, err := ix.LoadOrder(top)
		if err != nil {
			t.Fatal(err)
		}
		pos := map[string]int{}
		for i, m := range order {
			if _, dup := pos[m]; dup {
				t.Fatalf("%s twice in %v", m, order)
			}
			pos[m] = i
		}
		if order[len(order)-1] != top {
			t.Fatalf("%s not last in %v", top, order)
		}
		for _, m := range order {
			var i int
			fmt.Sscanf(m, "m%d", &i)
			for _, d := range deps[i] {
				dp, ok := pos[fmt.Sprintf("m%d", d)]
				if !ok || dp > pos[m] {
					t.Fatalf("graph %q: dependency m%d of %s misplaced in %v", dep.String(), d, m, order)
				}
			}
		}
	}
}

// TestAliasServedByOneOfSeveral: an alias matching several modules succeeds
// when one loads, even if another refuses the hardware (ENODEV).
func TestAliasServedByOneOfSeveral(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/crc32c-intel.ko:\nkernel/crc32c_generic.ko:\nkernel/only_intel.ko:\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.alias"), []byte("alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias crypto-x only_intel\n"), 0o644)
	ix, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLoader(ix, slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.sysModule = ""
	l.load = func(path, _ string) error {
		if strings.Contains(path, "intel") {
			return unix.ENODEV
		}
		return nil
	}
	loaded, err := l.Load(context.Background(), "crypto-crc32c", "")
	if err != nil || !reflect.DeepEqual(loaded, []string{"crc32c_generic"}) {
		t.Fatalf("Load(crypto-crc32c) = %v, %v; want [crc32c_generic], nil", loaded, err)
	}
	if _, err := l.Load(context.Background(), "crypto-x", ""); !errors.Is(err, unix.ENODEV) {
		t.Fatalf("sole module refusing: err = %v, want ENODEV", err)
	}
}
