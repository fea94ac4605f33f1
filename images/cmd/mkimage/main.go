// Command mkimage builds role image trees.
//
//	go run ./images/cmd/mkimage busybox -o build/images/busybox [-busybox /bin/busybox] [-squashfs build/images/busybox.squashfs]
package main

import (
	"flag"
	"fmt"
	"os"

	"magestack/images/busybox"
	"magestack/images/squash"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("usage: mkimage busybox -o DIR [-busybox PATH]")
	}
	kind, rest := args[0], args[1:]
	switch kind {
	case "busybox":
		fs := flag.NewFlagSet("busybox", flag.ContinueOnError)
		out := fs.String("o", "", "output directory (must be empty or absent)")
		bin := fs.String("busybox", busybox.DefaultBinary, "static busybox binary to copy")
		sq := fs.String("squashfs", "", "also pack the tree into this squashfs file (needs mksquashfs)")
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if *out == "" {
			return fmt.Errorf("busybox: -o DIR is required")
		}
		if err := busybox.Build(*out, busybox.Options{Binary: *bin}); err != nil {
			return err
		}
		if *sq != "" {
			return squash.Make(*out, *sq)
		}
		return nil
	default:
		return fmt.Errorf("unknown image %q (known: busybox)", kind)
	}
}
