package modules

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeTree is a small module world shaped like the real one: ext4 needs jbd2,
// mbcache and crc16, and softdeps on an alias crc32c_intel provides.
func fakeTree() *Tree {
	t := &Tree{Root: "/fake", Modules: map[string]*Module{}}
	add := func(rel string, info ...string) {
		m := FromModinfo(rel, info)
		t.Modules[m.Name] = m
	}
	add("kernel/fs/ext4/ext4.ko", "depends=jbd2,mbcache,crc16", "alias=fs-ext4", "softdep=pre: crypto-crc32c", "name=ext4")
	add("kernel/fs/jbd2/jbd2.ko", "depends=", "name=jbd2")
	add("kernel/fs/mbcache.ko", "depends=")
	add("kernel/lib/crc16.ko", "depends=")
	add("kernel/arch/x86/crypto/crc32c-intel.ko", "alias=crypto-crc32c", "alias=crypto-crc32c-intel", "alias=cpu:type:x86,ven*fam*mod*:feature:*0094*")
	add("kernel/drivers/net/virtio_net.ko", "depends=net_failover", "alias=virtio:d00000001v*")
	add("kernel/drivers/net/net_failover.ko", "depends=failover")
	add("kernel/net/core/failover.ko", "depends=")
	add("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko", "depends=", "alias=pci:v00008086d000010D3sv*sd*bc*sc*i*")
	add("kernel/sound/core/snd.ko", "depends=soundcore", "alias=char-major-116-*")
	add("kernel/sound/soundcore.ko", "depends=")
	return t
}

func TestFromModinfo(t *testing.T) {
	m := FromModinfo("kernel/drivers/char/hw_random/virtio-rng.ko",
		[]string{"alias=virtio:d00000004v*", "depends=virtio_ring,virtio", "softdep=pre: a b post: c", "license=GPL", "garbage"})
	want := &Module{
		Name: "virtio_rng", Path: "kernel/drivers/char/hw_random/virtio-rng.ko",
		Depends: []string{"virtio_ring", "virtio"}, Aliases: []string{"virtio:d00000004v*"},
		SoftPre: []string{"a", "b"}, SoftPost: []string{"c"},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}
}

func TestSelect(t *testing.T) {
	tree := fakeTree()
	tests := []struct {
		name     string
		patterns []string
		want     []string
		wantErr  string
	}{
		{"by name", []string{"ext4"}, []string{"ext4"}, ""},
		{"name glob", []string{"crc*"}, []string{"crc16", "crc32c_intel"}, ""},
		{"dash in name", []string{"crc32c-intel"}, []string{"crc32c_intel"}, ""},
		{"path glob", []string{"kernel/drivers/net/*"}, []string{"net_failover", "virtio_net"}, ""},
		{"double star", []string{"kernel/drivers/**/e1000*"}, []string{"e1000e"}, ""},
		{"optional missing", []string{"?bnx2x", "ext4"}, []string{"ext4"}, ""},
		{"required missing", []string{"bnx2x", "nope*"}, nil, "bnx2x, nope*"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tree.Select(tt.patterns)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("want error containing %q, got %v", tt.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v want %v", got, tt.want)
			}
		})
	}
}

func TestClosure(t *testing.T) {
	tree := fakeTree()
	got, err := tree.Closure([]string{"ext4", "virtio-net"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"crc16", "crc32c_intel", "ext4", "failover", "jbd2", "mbcache", "net_failover", "virtio_net"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("closure: got %v want %v", got, want)
	}
	tree.Modules["broken"] = &Module{Name: "broken", Path: "kernel/broken.ko", Depends: []string{"ghost"}}
	if _, err := tree.Closure([]string{"broken"}); err == nil || !strings.Contains(err.Error(), `"ghost" (needed by broken)`) {
		t.Fatalf("missing dependency: want error naming ghost and broken, got %v", err)
	}
}

func TestWriteDep(t *testing.T) {
	tree := fakeTree()
	set, _ := tree.Closure([]string{"ext4", "virtio_net"})
	var b bytes.Buffer
	if err := tree.WriteDep(&b, set); err != nil {
		t.Fatal(err)
	}
	want := `kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/net/core/failover.ko:
`
	if b.String() != want {
		t.Fatalf("modules.dep:\n%s\nwant:\n%s", b.String(), want)
	}
	if err := tree.WriteDep(&b, []string{"virtio_net"}); err == nil {
		t.Fatal("a set not closed under dependencies must be refused")
	}
}

func TestWriteAliasOnlyIncludedModules(t *testing.T) {
	tree := fakeTree()
	var b bytes.Buffer
	if err := tree.WriteAlias(&b, []string{"e1000e", "ext4"}); err != nil {
		t.Fatal(err)
	}
	want := "# Aliases extracted from modules themselves.\n" +
		"alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n" +
		"alias fs-ext4 ext4\n"
	if b.String() != want {
		t.Fatalf("modules.alias:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestWriteSoftdep(t *testing.T) {
	tree := fakeTree()
	var b bytes.Buffer
	if err := tree.WriteSoftdep(&b, []string{"ext4", "jbd2"}); err != nil {
		t.Fatal(err)
	}
	if want := "# Soft dependencies extracted from modules themselves.\nsoftdep ext4 pre: crypto-crc32c\n"; b.String() != want {
		t.Fatalf("got %q want %q", b.String(), want)
	}
}

func TestResolveAlias(t *testing.T) {
	tree := fakeTree()
	if got := tree.Resolve("crypto-crc32c"); !reflect.DeepEqual(got, []string{"crc32c_intel"}) {
		t.Fatalf("alias: got %v", got)
	}
	if got := tree.Resolve("char-major-116-33"); !reflect.DeepEqual(got, []string{"snd"}) {
		t.Fatalf("wildcard alias: got %v", got)
	}
	if got := tree.Resolve("nothing-here"); len(got) != 0 {
		t.Fatalf("unknown: got %v", got)
	}
}

func TestReadPatternFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.txt")
	os.WriteFile(p, []byte("# comment\nvirtio_*  # trailing\n\n?bnx2x\nkernel/net/**/nft_*\n"), 0o644)
	got, err := ReadPatternFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"virtio_*", "?bnx2x", "kernel/net/**/nft_*"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

// TestRealKernelTree indexes the Debian kernel fetched by `make kernel` and
// checks the project's module list resolves against it.
func TestRealKernelTree(t *testing.T) {
	dir := fetchedModules("../../build/kernel")
	if dir == "" {
		t.Skip("kernel not fetched (run `make kernel`): no build/kernel/root/lib/modules/*")
	}
	tree, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pats, err := ReadPatternFile("../modules.txt")
	if err != nil {
		t.Fatal(err)
	}
	sel, err := tree.Select(pats)
	if err != nil {
		t.Fatal(err)
	}
	set, err := tree.Closure(sel)
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]bool{}
	for _, n := range set {
		in[n] = true
	}
	for _, n := range []string{"virtio_net", "virtio_rng", "ext4", "jbd2", "mbcache", "crc16", "nf_tables", "nft_masq", "nft_chain_nat", "wireguard", "drbd", "i6300esb", "bridge", "veth", "overlay"} {
		if !in[n] {
			t.Errorf("module %s missing from the initramfs set", n)
		}
	}
	var alias bytes.Buffer
	tree.WriteAlias(&alias, set)
	if !strings.Contains(alias.String(), " virtio_net\n") || strings.Contains(alias.String(), " snd_hda_intel\n") {
		t.Errorf("modules.alias should hold virtio_net and not snd_hda_intel")
	}
	t.Logf("%d modules selected, %d with dependencies", len(sel), len(set))
}

// fetchedModules returns the module tree of the kernel `make kernel` chose
// (kernelDir/version), else any extracted one, else "".
func fetchedModules(kernelDir string) string {
	if v, err := os.ReadFile(filepath.Join(kernelDir, "version")); err == nil {
		d := filepath.Join(kernelDir, "root/lib/modules", strings.TrimSpace(string(v)))
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(kernelDir, "root/lib/modules/*"))
	if len(dirs) == 0 {
		return ""
	}
	return dirs[len(dirs)-1]
}

func TestWriteOrder(t *testing.T) {
	tree := fakeTree()
	order := "kernel/fs/mbcache.ko\nkernel/fs/ext4/ext4.ko\nkernel/sound/soundcore.ko\nkernel/fs/jbd2/jbd2.ko\n"
	var b bytes.Buffer
	if err := tree.WriteOrder(&b, []string{"ext4", "jbd2", "mbcache"}, strings.NewReader(order)); err != nil {
		t.Fatal(err)
	}
	if want := "kernel/fs/mbcache.ko\nkernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n"; b.String() != want {
		t.Fatalf("got %q want %q", b.String(), want)
	}
}

// TestMatchesDepmod writes the project's module set with this package and
// with kmod's depmod over the same files, and requires the same dependency
// sets, aliases and softdeps. Within a modules.dep line any order that lists
// a module before its own dependencies is valid; the test checks that too.
func TestMatchesDepmod(t *testing.T) {
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		depmod = "/usr/sbin/depmod"
		if _, err := os.Stat(depmod); err != nil {
			t.Skip("depmod (package kmod) not installed")
		}
	}
	src := fetchedModules("../../build/kernel")
	if src == "" {
		t.Skip("kernel not fetched (run `make kernel`)")
	}
	tree, err := Load(src)
	if err != nil {
		t.Fatal(err)
	}
	pats, _ := ReadPatternFile("../modules.txt")
	sel, err := tree.Select(pats)
	if err != nil {
		t.Fatal(err)
	}
	set, err := tree.Closure(sel)
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	ver := filepath.Base(src)
	dst := filepath.Join(base, "lib/modules", ver)
	for _, n := range set {
		p := filepath.Join(dst, tree.Modules[n].Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		// depmod skips symlinks: hard link, or copy across filesystems.
		from := filepath.Join(src, tree.Modules[n].Path)
		if err := os.Link(from, p); err != nil {
			data, err := os.ReadFile(from)
			if err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	var order bytes.Buffer
	if f, err := os.Open(filepath.Join(src, "modules.order")); err == nil {
		tree.WriteOrder(&order, set, f)
		f.Close()
	}
	os.WriteFile(filepath.Join(dst, "modules.order"), order.Bytes(), 0o644)
	if out, err := exec.Command(depmod, "-b", base, ver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var dep, alias, soft bytes.Buffer
	tree.WriteDep(&dep, set)
	tree.WriteAlias(&alias, set)
	tree.WriteSoftdep(&soft, set)

	theirs, ours := parseDep(t, read("modules.dep")), parseDep(t, dep.String())
	if len(theirs) != len(ours) {
		t.Errorf("modules.dep: depmod has %d modules, we have %d", len(theirs), len(ours))
	}
	for mod, want := range theirs {
		got := ours[mod]
		if !sameSet(got, want) {
			t.Errorf("modules.dep %s: depmod %v, ours %v", mod, want, got)
		}
		pos := map[string]int{}
		for i, d := range got {
			pos[d] = i
		}
		for i, d := range got {
			for _, dd := range ours[d] {
				if pos[dd] < i {
					t.Errorf("modules.dep %s: %s listed after its dependency %s", mod, d, dd)
				}
			}
		}
	}
	if !sameSet(lines(read("modules.alias")), lines(alias.String())) {
		t.Errorf("modules.alias differs from depmod's")
	}
	if !sameSet(lines(read("modules.softdep")), lines(soft.String())) {
		t.Errorf("modules.softdep differs from depmod's:\n%s\nours:\n%s", read("modules.softdep"), soft.String())
	}
}

func parseDep(t *testing.T, s string) map[string][]string {
	out := map[string][]string{}
	for _, l := range lines(s) {
		mod, deps, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("modules.dep line without colon: %q", l)
		}
		out[mod] = strings.Fields(deps)
	}
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}
