package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"magestack/qemu-tests/qemu"
)

// volumeBenchRE is one line of init/volume's TestGuestWriteLatency.
var volumeBenchRE = regexp.MustCompile(`volume-bench: (\S+) p50_us=(\d+) p90_us=(\d+) mean_us=(\d+) n=(\d+)`)

// volumesBench prints the write latency (4 KiB + fdatasync, a database
// commit) of a replicated volume against the same disk unreplicated, in
// one guest on build/initramfs.img: init/volume's test binary is its init,
// with a scratch virtio disk for the backing files. The replicated volume's
// peer is in the same guest over loopback and on the same emulated disk:
// a protocol C write is two flushes of that one disk plus a TCP round trip
// under TCG, so the ratio is an upper bound of DRBD's cost, not the
// published few percent of two hosts with a disk each.
func volumesBench(w io.Writer) error {
	fmt.Fprintln(w, "\nvolumes: 4 KiB write + fdatasync on ext4, plain loop device against DRBD (standalone, protocol C to a loopback peer)")
	build, err := qemu.BuildDir()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(build, "bench-volumes-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "volume.test")
	cmd := exec.Command("go", "test", "-c", "-o", bin, "./init/volume")
	cmd.Dir = filepath.Dir(build)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c ./init/volume: %v\n%s", err, out)
	}
	initrd := filepath.Join(work, "initramfs.img")
	if err := qemu.PrependInitramfs(initrd, filepath.Join(build, "initramfs.img"), []qemu.File{{Path: "volume.test", Src: bin}}); err != nil {
		return err
	}
	disk := filepath.Join(work, "scratch.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(disk, 1<<30); err != nil {
		return err
	}
	vm, err := qemu.Launch(qemu.Options{Name: "volbench", Kernel: filepath.Join(build, "vmlinuz"), Initrd: initrd, Memory: 1024, SMP: 2, NoReboot: true,
		Append: "console=ttyS0 quiet panic=-1 rdinit=/volume.test MAGESTACK_VOLUME_GUEST=1 MAGESTACK_VOLUME_BENCH=1 -- -test.run=TestGuestWriteLatency",
		Drives: []qemu.Drive{{File: disk, Format: "raw"}}}, work)
	if err != nil {
		return err
	}
	defer vm.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), qemu.Scale(10*time.Minute))
	defer cancel()
	if _, err := vm.ExpectContext(ctx, `volume-guest: tests exit code (\d+)`); err != nil {
		return fmt.Errorf("guest: %w", err)
	}
	rows := map[string][3]float64{}
	for _, m := range volumeBenchRE.FindAllStringSubmatch(vm.Console(), -1) {
		var v [3]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(m[2+i], 64)
		}
		rows[m[1]] = v
	}
	base, ok := rows["plain"]
	if !ok {
		c := vm.Console()
		return fmt.Errorf("no figures from the guest; its console ends:\n%s", c[max(0, len(c)-3000):])
	}
	fmt.Fprintf(w, "%-34s %10s %10s %10s %12s\n", "", "p50 µs", "p90 µs", "mean µs", "mean / plain")
	for _, name := range []string{"plain", "drbd-standalone", "drbd-protocol-c"} {
		v, ok := rows[name]
		if !ok {
			fmt.Fprintf(w, "%-34s n/a: not measured\n", name)
			continue
		}
		fmt.Fprintf(w, "%-34s %10.0f %10.0f %10.0f %11.2fx\n", name, v[0], v[1], v[2], v[2]/base[2])
	}
	return nil
}
