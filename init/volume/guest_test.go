package volume

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/internal/guest"
	"magestack/init/kmod"
)

// GuestEnv, when set in PID 1's environment (a kernel command line
// key=value), makes this test binary the init of a QEMU guest booted on
// build/initramfs.img (Debian's kernel, its drbd module, drbd-utils and
// e2fsprogs): the DRBD tests below run there for real and skip elsewhere.
// The scenario is qemu-tests/volume_test.go.
const (
	GuestEnv        = "MAGESTACK_VOLUME_GUEST"
	GuestResultLine = "volume-guest: tests exit code %d"
)

func TestMain(m *testing.M) {
	guest.Main(m, "volume", GuestEnv, guestSetup)
	os.Exit(m.Run())
}

func guestSetup() error {
	if err := guest.MountAll(guest.Basic()); err != nil {
		return err
	}
	if err := guest.LoopbackUp(); err != nil {
		return err
	}
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("TMPDIR", "/tmp")
	dir, err := kmod.DefaultDir()
	if err != nil {
		return err
	}
	ix, err := kmod.Open(dir)
	if err != nil {
		return err
	}
	l := kmod.NewLoader(ix, slog.New(slog.NewTextHandler(os.Stdout, nil)))
	// libcrc32c needs crc32c at init, a soft dependency the loader does not
	// follow without PID 1's modprobe helper; virtio_blk: the bench's
	// scratch disk.
	for _, mod := range []string{"crc32c_generic", "loop", "drbd", "ext4", "virtio_pci", "virtio_blk"} {
		if _, err := l.Load(context.Background(), mod, ""); err != nil {
			return fmt.Errorf("load %s: %w", mod, err)
		}
	}
	return nil
}

func needDRBD(t *testing.T) *Manager {
	t.Helper()
	if _, err := os.Stat("/proc/drbd"); err != nil {
		t.Skip("needs the drbd module (runs in the QEMU guest: qemu-tests TestVolumesOnDRBD)")
	}
	return NewManager(slog.New(slog.NewTextHandler(testLog{t}, nil)))
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitState(t *testing.T, m *Manager, minor int, what string, limit time.Duration, ok func(State) bool) State {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st, _, err := m.State(minor)
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("minor %d: not %s after %v: %+v (%v)", minor, what, limit, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func writeSynced(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(f, text); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func fsSize(t *testing.T, dir string) int64 {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Blocks) * fs.Bsize
}

// TestGuestVolumeLifecycle: a single host's volume from nothing: formatted
// once, kept across demote/promote, grown online while mounted, a shrink
// refused, released.
func TestGuestVolumeLifecycle(t *testing.T) {
	m := needDRBD(t)
	ctx := context.Background()
	s := Spec{Name: "one", Minor: 1, Size: 64 << 20, Backing: "/tmp/vols/one.img", Mount: "/tmp/mnt/one"}
	if err := m.Ensure(ctx, s); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, m, 1, "attached", 10*time.Second, func(s State) bool { return s.Disk != "Diskless" })
	t.Logf("after ensure: %+v", st)
	if err := m.Ensure(ctx, s); err != nil {
		t.Fatalf("second ensure (PID 1 restarted): %v", err)
	}
	if err := m.Promote(ctx, s); err != nil {
		t.Fatal(err)
	}
	writeSynced(t, filepath.Join(s.Mount, "order-1"), "kept")
	if err := m.Demote(ctx, s); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := m.State(1); st.Role != "Secondary" || mounted(s.Mount) {
		t.Fatalf("after demote: %+v mounted %v", st, mounted(s.Mount))
	}
	if err := m.Promote(ctx, s); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.Mount, "order-1")); err != nil || string(b) != "kept" {
		t.Fatalf("after promote again: %q %v (formatted twice?)", b, err)
	}
	before := fsSize(t, s.Mount)
	s.Size = 128 << 20
	if err := m.Ensure(ctx, s); err != nil {
		t.Fatalf("grow: %v", err)
	}
	after := fsSize(t, s.Mount)
	t.Logf("grown online: filesystem %d -> %d bytes", before, after)
	if after < before+48<<20 {
		t.Errorf("filesystem %d -> %d after growing the volume to 128 MiB", before, after)
	}
	s.Size = 64 << 20
	if err := m.Ensure(ctx, s); err == nil || !strings.Contains(err.Error(), "shrinking") {
		t.Errorf("shrink: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(s.Mount, "order-1")); err != nil || string(b) != "kept" {
		t.Errorf("after the refused shrink: %q %v", b, err)
	}
	s.Size = 128 << 20
	if err := m.Release(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, known, _ := m.State(1); known {
		t.Error("minor 1 still configured after release")
	}
	if dev, _ := loopFor(m.sysBlock, s.Backing); dev != "" {
		t.Errorf("%s still attached", dev)
	}
}

// TestGuestVolumePairReplicates connects two volumes of this guest over
// loopback as a pair would over its link: protocol C, the first Primary's
// data synced to the peer, a Primary refused while the peer is one, and
// after a planned move the data is there.
func TestGuestVolumePairReplicates(t *testing.T) {
	m := needDRBD(t)
	ctx := context.Background()
	lo := netip.MustParseAddr("127.0.0.1")
	a := Spec{Name: "a", Minor: 2, Size: 64 << 20, Backing: "/tmp/vols/a.img", Mount: "/tmp/mnt/a", Secret: "shared",
		Peer: &Link{Local: netip.AddrPortFrom(lo, 7802), Remote: netip.AddrPortFrom(lo, 7803)}}
	b := Spec{Name: "b", Minor: 3, Size: 64 << 20, Backing: "/tmp/vols/b.img", Mount: "/tmp/mnt/b", Secret: "shared",
		Peer: &Link{Local: netip.AddrPortFrom(lo, 7803), Remote: netip.AddrPortFrom(lo, 7802)}}
	for _, s := range []Spec{a, b} {
		if err := m.Ensure(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, m, 2, "connected", 30*time.Second, func(s State) bool { return s.Connection == "Connected" })
	if err := m.Promote(ctx, a); err != nil {
		t.Fatal(err)
	}
	writeSynced(t, filepath.Join(a.Mount, "order-1"), "acknowledged")
	if err := m.Promote(ctx, b); err == nil {
		t.Fatal("b promoted while a is Primary")
	} else {
		t.Logf("b refused while a is Primary: %v", err)
	}
	st := waitState(t, m, 3, "UpToDate", 2*time.Minute, func(s State) bool { return s.Disk == "UpToDate" })
	t.Logf("b synced: %+v", st)
	if err := m.Demote(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := m.Promote(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b.Mount, "order-1")); err != nil || string(got) != "acknowledged" {
		t.Fatalf("on the peer after a planned move: %q %v", got, err)
	}
	writeSynced(t, filepath.Join(b.Mount, "order-2"), "on b")
	if err := m.Demote(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := m.Promote(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(a.Mount, "order-2")); err != nil || string(got) != "on b" {
		t.Fatalf("back on a: %q %v", got, err)
	}
	st, _, _ = m.State(2)
	t.Logf("a after moving back: %+v", st)
	for _, s := range []Spec{a, b} {
		if err := m.Release(ctx, s); err != nil {
			t.Error(err)
		}
	}
}

// BenchEnv in the guest's environment runs TestGuestWriteLatency, the
// figure `make bench volumes` prints; BenchResultPrefix starts its lines.
const (
	BenchEnv          = "MAGESTACK_VOLUME_BENCH"
	BenchResultPrefix = "volume-bench:"
)

// TestGuestWriteLatency measures what a database commit waits for: a 4 KiB
// write and fdatasync, 360 times in 6 interleaved rounds, on ext4 over the same disk three ways: a plain loop
// device (unreplicated, the reference), a standalone DRBD volume, and a
// volume replicated with protocol C to a peer over loopback. The backing
// files live on the guest's virtio disk (/dev/vda) when it has one.
func TestGuestWriteLatency(t *testing.T) {
	if os.Getenv(BenchEnv) == "" {
		t.Skip("a figure for make bench, not a check")
	}
	m := needDRBD(t)
	ctx := context.Background()
	root := "/tmp/bench"
	os.MkdirAll(root, 0o755)
	if _, err := os.Stat("/dev/vda"); err == nil {
		if _, err := run(ctx, time.Minute, "mke2fs", "-q", "-F", "-t", "ext4", "/dev/vda"); err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(root, 0o755)
		if err := unix.Mount("/dev/vda", root, "ext4", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	const size = 64 << 20
	// The reference: ext4 on a loop device over a preallocated file.
	plain := filepath.Join(root, "plain.img")
	if err := allocate(plain, BackingSize(size)); err != nil {
		t.Fatal(err)
	}
	dev, err := attachLoop(plain)
	if err != nil {
		t.Fatal(err)
	}
	// Formatted as volumes are (Promote).
	if _, err := run(ctx, time.Minute, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(root+"/mnt/plain", 0o755)
	if err := unix.Mount(dev, root+"/mnt/plain", "ext4", unix.MS_NOATIME, ""); err != nil {
		t.Fatal(err)
	}

	alone := Spec{Name: "alone", Minor: 5, Size: size, Backing: root + "/alone.img", Mount: root + "/mnt/alone"}
	if err := m.Ensure(ctx, alone); err != nil {
		t.Fatal(err)
	}
	if err := m.Promote(ctx, alone); err != nil {
		t.Fatal(err)
	}

	lo := netip.MustParseAddr("127.0.0.1")
	a := Spec{Name: "ra", Minor: 6, Size: size, Backing: root + "/ra.img", Mount: root + "/mnt/ra", Secret: "bench",
		Peer: &Link{Local: netip.AddrPortFrom(lo, 7806), Remote: netip.AddrPortFrom(lo, 7807)}}
	b := Spec{Name: "rb", Minor: 7, Size: size, Backing: root + "/rb.img", Mount: root + "/mnt/rb", Secret: "bench",
		Peer: &Link{Local: netip.AddrPortFrom(lo, 7807), Remote: netip.AddrPortFrom(lo, 7806)}}
	for _, s := range []Spec{a, b} {
		if err := m.Ensure(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, m, 6, "connected", 30*time.Second, func(s State) bool { return s.Connection == "Connected" })
	if err := m.Promote(ctx, a); err != nil {
		t.Fatal(err)
	}
	// Rounds in turn, so that the machine's drift (a shared host, ext4's
	// lazy inode table init) falls on every variant alike.
	variants := []struct{ name, dir string }{{"plain", root + "/mnt/plain"}, {"drbd-standalone", alone.Mount}, {"drbd-protocol-c", a.Mount}}
	got := make([][]time.Duration, len(variants))
	for round := 0; round < 6; round++ {
		for i, v := range variants {
			got[i] = append(got[i], syncWrites(t, v.dir, round)...)
		}
	}
	for i, v := range variants {
		report(t, v.name, got[i])
	}
}

// syncWrites times 60 writes of 4 KiB, each followed by fdatasync, into
// a preallocated file (as a database's log), after 5 unmeasured ones.
func syncWrites(t *testing.T, dir string, round int) []time.Duration {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	buf := make([]byte, 4096)
	var out []time.Duration
	for i := 0; i < 65; i++ {
		buf[0] = byte(i)
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64((round*65+i)%1024)*4096); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		if i >= 5 {
			out = append(out, time.Since(t0))
		}
	}
	return out
}

func report(t *testing.T, name string, d []time.Duration) {
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	fmt.Printf("%s %s p50_us=%d p90_us=%d mean_us=%d n=%d\n", BenchResultPrefix, name,
		d[len(d)/2].Microseconds(), d[len(d)*9/10].Microseconds(), (sum / time.Duration(len(d))).Microseconds(), len(d))
}
