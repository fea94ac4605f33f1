// Command mkimage builds role image trees.
//
//	go run ./images/cmd/mkimage busybox -o build/images/busybox [-busybox /bin/busybox]
package main

import (
	"flag"
	"fmt"
	"os"

	"magestack/images/busybox"
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
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if *out == "" {
			return fmt.Errorf("busybox: -o DIR is required")
		}
		return busybox.Build(*out, busybox.Options{Binary: *bin})
	default:
		return fmt.Errorf("unknown image %q (known: busybox)", kind)
	}
}
