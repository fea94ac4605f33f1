// Command mkimages builds the real role images from images/recipes into
// squashfs files, a manifest of their digests and the MAGESTACK-IMAGES disk.
//
//	go run ./images/cmd/mkimages -o build/images -disk build/images.img \
//	    [-with busybox=build/images/busybox.squashfs] [-only web,db] [-rebuild] [-prune]
//
// Images are cached by recipe hash in $MAGESTACK_IMAGE_CACHE (default
// /var/cache/magestack/images): an unchanged recipe is not rebuilt.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"magestack/images/debimage"
	"magestack/images/recipes"
)

type extras []debimage.Extra

func (e *extras) String() string { return fmt.Sprint(*e) }
func (e *extras) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return fmt.Errorf("-with %q: want NAME=PATH", v)
	}
	*e = append(*e, debimage.Extra{Name: name, Path: path})
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimages:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mkimages", flag.ContinueOnError)
	out := fs.String("o", "build/images", "output directory for <role>.squashfs and manifest.json")
	disk := fs.String("disk", "", "also write the MAGESTACK-IMAGES disk image here (e.g. build/images.img)")
	cache := fs.String("cache", debimage.CacheDirFromEnv(), "image cache directory (outside the clone)")
	only := fs.String("only", "", "comma-separated roles to build (default: all)")
	rebuild := fs.Bool("rebuild", false, "ignore cached images")
	prune := fs.Bool("prune", false, "remove cached images of recipes that are no longer current")
	verbose := fs.Bool("v", false, "show mmdebstrap and mksquashfs output")
	var with extras
	fs.Var(&with, "with", "add a prebuilt image NAME=PATH (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rs := recipes.All()
	if *only != "" {
		rs = nil
		for _, role := range strings.Split(*only, ",") {
			r, ok := recipes.Lookup(role)
			if !ok {
				return fmt.Errorf("-only: no recipe for role %q (known: %s)", role, strings.Join(recipes.Roles(), ", "))
			}
			rs = append(rs, r)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts := debimage.Options{CacheDir: *cache, Log: log, Rebuild: *rebuild}
	if *verbose {
		opts.Output = os.Stderr
	}
	t0 := time.Now()
	m, results, err := debimage.BuildAll(ctx, rs, with, *out, opts)
	if err != nil {
		return err
	}
	fmt.Printf("%-10s %10s %8s %s\n", "image", "bytes", "seconds", "source")
	for _, r := range results {
		src := "built"
		if r.Cached {
			src = "cache"
		}
		fmt.Printf("%-10s %10d %8.1f %s\n", r.Role, r.Size, r.Duration.Seconds(), src)
	}
	for _, x := range with {
		if im, ok := m.Lookup(x.Name); ok {
			fmt.Printf("%-10s %10d %8s prebuilt\n", im.Name, im.Size, "-")
		}
	}
	if *disk != "" {
		if err := debimage.MakeDisk(ctx, *out, *disk, recipes.DefaultEpoch, opts); err != nil {
			return err
		}
		fi, err := os.Stat(*disk)
		if err != nil {
			return err
		}
		fmt.Printf("%-10s %10d (%s)\n", "disk", fi.Size(), *disk)
	}
	if *prune {
		var keep []string
		for _, r := range recipes.All() {
			keep = append(keep, r.Hash(debimage.BuilderVersion))
		}
		removed, err := debimage.Prune(*cache, keep)
		if err != nil {
			return err
		}
		fmt.Printf("pruned %d stale cached images\n", len(removed))
	}
	fmt.Printf("total %.1f s\n", time.Since(t0).Seconds())
	return nil
}
