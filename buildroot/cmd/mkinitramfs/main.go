// Command mkinitramfs writes magestack's compressed initramfs.
//
//	mkinitramfs -o build/initramfs.img -init build/magestack \
//	    -modules build/kernel/root/lib/modules/6.1.0-56-amd64 -modules-list buildroot/modules.txt \
//	    -bin /usr/sbin/drbdsetup -symlink /usr/sbin/drbdsetup-84:../lib/drbd/drbdsetup-84 -tree build/images/busybox:/usr/share/magestack/images/busybox
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/pierrec/lz4/v4"

	"magestack/buildroot/image"
	"magestack/buildroot/modules"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkinitramfs", flag.ContinueOnError)
	out := fs.String("o", "", "output file (required)")
	initBin := fs.String("init", "", "static magestack binary, placed at /init (required)")
	modDir := fs.String("modules", "", "kernel module tree …/lib/modules/<version>")
	modList := fs.String("modules-list", "", "file of module patterns (see buildroot/modules.txt)")
	compress := fs.String("compress", "gzip", "gzip, lz4 (legacy frames, fastest to unpack) or none")
	var bins, trees, files, mods, links listFlag
	fs.Var(&bins, "bin", "extra program copied with its shared libraries (repeatable)")
	fs.Var(&trees, "tree", "SRC:DST directory tree to add (repeatable)")
	fs.Var(&files, "file", "SRC:DST file to add (repeatable)")
	fs.Var(&mods, "module", "extra module pattern (repeatable)")
	fs.Var(&links, "symlink", "LINK:TARGET symbolic link to add (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *initBin == "" {
		return fmt.Errorf("-o and -init are required")
	}
	spec := image.Spec{Init: *initBin, ModulesDir: *modDir, Programs: bins, ModulePatterns: mods}
	if *modList != "" {
		pats, err := modules.ReadPatternFile(*modList)
		if err != nil {
			return err
		}
		spec.ModulePatterns = append(pats, spec.ModulePatterns...)
	}
	for _, s := range files {
		m, err := image.ParseMapping(s)
		if err != nil {
			return fmt.Errorf("-file: %w", err)
		}
		spec.Files = append(spec.Files, m)
	}
	for _, s := range trees {
		m, err := image.ParseMapping(s)
		if err != nil {
			return fmt.Errorf("-tree: %w", err)
		}
		spec.Trees = append(spec.Trees, m)
	}
	for _, s := range links {
		m, err := image.ParseSymlink(s)
		if err != nil {
			return fmt.Errorf("-symlink: %w", err)
		}
		spec.Symlinks = append(spec.Symlinks, m)
	}
	a, sum, err := image.Build(spec)
	if err != nil {
		return err
	}
	n, err := write(*out, *compress, a.Write)
	if err != nil {
		return err
	}
	slog.Info("initramfs written", "file", *out, "compressed_bytes", n, "content_bytes", sum.ContentBytes,
		"kernel", sum.KernelVersion, "modules", len(sum.Modules), "program_files", len(sum.ProgramFiles))
	return nil
}

// write produces the output through a temporary file and renames it, so an
// interrupted build never leaves a truncated image behind.
func write(out, compress string, content func(io.Writer) error) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initramfs-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	var w io.Writer = bw
	var zw io.WriteCloser
	switch compress {
	case "gzip":
		zw, _ = gzip.NewWriterLevel(bw, gzip.DefaultCompression) // -9 costs 10x the time for 1% smaller
	case "lz4":
		// The kernel's initramfs unpacker reads only LZ4's legacy frame
		// format (lz4 -l): 8 MiB blocks, no frame header.
		lw := lz4.NewWriter(bw)
		if err := lw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Fast)); err != nil {
			tmp.Close()
			return 0, fmt.Errorf("lz4: %w", err)
		}
		zw = lw
	case "none":
	default:
		tmp.Close()
		return 0, fmt.Errorf("-compress %q: want gzip, lz4 or none", compress)
	}
	if zw != nil {
		w = zw
	}
	if err := content(w); err != nil {
		tmp.Close()
		return 0, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			tmp.Close()
			return 0, err
		}
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return 0, err
	}
	st, err := tmp.Stat()
	if err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	return st.Size(), os.Rename(tmp.Name(), out)
}
