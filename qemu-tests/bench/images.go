package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"magestack/images/debimage"
	"magestack/images/manifest"
	"magestack/images/recipes"
	"magestack/qemu-tests/qemu"
)

// imagesBench is `bench images`: the size of every role image and of the
// MAGESTACK-IMAGES disk from build/, the time `make images` takes with a
// warm cache (its mkimages command, run into a scratch directory so the
// images other work is using are not rewritten), and each image's cold
// build time as the shared cache recorded it when the image was first built.
func imagesBench(w io.Writer) error {
	build, err := qemu.BuildDir()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nrole images: sizes, warm-cache build of all images, cold builds as recorded in the cache")
	dir := filepath.Join(build, "images")
	m, err := manifest.Read(dir)
	if err != nil {
		fmt.Fprintf(w, "images: n/a: %v (make images)\n", err)
		return err
	}
	cache := debimage.CacheDirFromEnv()
	cold := coldBuilds(cache)
	fmt.Fprintf(w, "%-10s %12s %s\n", "image", "size", "cold build (first build, recorded in "+cache+")")
	var total int64
	for _, im := range m.Images {
		size := im.Size // the file itself when it is there
		if fi, err := os.Stat(filepath.Join(dir, im.File)); err == nil {
			size = fi.Size()
		}
		total += size
		c := "n/a: not in the cache"
		if d, ok := cold[im.Name]; ok {
			c = fmt.Sprintf("%.0f s", d.Seconds())
		} else if im.Recipe == "" {
			c = "- (prebuilt)"
		}
		fmt.Fprintf(w, "%-10s %8.1f MiB %s\n", im.Name, mib(size), c)
	}
	fmt.Fprintf(w, "%-10s %8.1f MiB\n", "all", mib(total))
	if fi, err := os.Stat(filepath.Join(build, "images.img")); err == nil {
		fmt.Fprintf(w, "%-10s %8.1f MiB (raw ext4 disk MAGESTACK-IMAGES)\n", "images.img", mib(fi.Size()))
	} else {
		fmt.Fprintf(w, "%-10s n/a: %v\n", "images.img", err)
	}

	res, err := warmImages(context.Background(), build)
	if err != nil {
		fmt.Fprintf(w, "make images, warm cache: n/a: %v\n", err)
		return err
	}
	fmt.Fprintf(w, "make images, warm cache: %.1f s wall (go run: compile + mkimages; mkimages itself %.1f s), %d images from the cache, %d rebuilt\n",
		res.wall.Seconds(), res.inner.Seconds(), res.cached, res.built)
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// coldBuilds reads each current recipe's cache entry: the lock file is
// created when its first build starts and meta.json written when the image
// is complete, so the difference is the cold build (mmdebstrap with the
// .deb cache as it was then, strip, mksquashfs). Entries whose lock is
// younger than the image (locked again later) are left out.
func coldBuilds(cache string) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, r := range recipes.All() {
		key := r.Hash(debimage.BuilderVersion)
		lock, err1 := os.Stat(filepath.Join(cache, key+".lock"))
		meta, err2 := os.Stat(filepath.Join(cache, key, "meta.json"))
		if err1 != nil || err2 != nil {
			continue
		}
		if d := meta.ModTime().Sub(lock.ModTime()); d > 0 && d < 2*time.Hour {
			out[r.Role] = d
		}
	}
	return out
}

type warmResult struct {
	wall, inner   time.Duration
	cached, built int
}

// warmImages runs what `make images` runs, into a scratch directory, and
// reads mkimages' own report (one line per image: "cache" or "built").
func warmImages(ctx context.Context, build string) (warmResult, error) {
	root, err := qemu.RepoRoot()
	if err != nil {
		return warmResult{}, err
	}
	if err := os.MkdirAll(filepath.Join(build, "bench"), 0o755); err != nil {
		return warmResult{}, err
	}
	tmp, err := os.MkdirTemp(filepath.Join(build, "bench"), "images-")
	if err != nil {
		return warmResult{}, err
	}
	defer os.RemoveAll(tmp)
	gobin := os.Getenv("GO")
	if gobin == "" {
		gobin = "go"
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, gobin, "run", "./images/cmd/mkimages", "-o", filepath.Join(tmp, "images"), "-disk", filepath.Join(tmp, "images.img"))
	c.Dir = root
	var stderr strings.Builder
	c.Stderr = &stderr
	start := time.Now()
	out, err := c.Output()
	wall := time.Since(start)
	if err != nil {
		return warmResult{}, fmt.Errorf("mkimages: %w\n%s", err, tail(stderr.String(), 2000))
	}
	res, err := parseMkimages(string(out))
	res.wall = wall
	return res, err
}

// parseMkimages reads mkimages' table: "<image> <bytes> <seconds> cache|built"
// lines and "total <seconds> s".
func parseMkimages(out string) (warmResult, error) {
	var r warmResult
	total := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "total" && f[2] == "s":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("mkimages total %q: %w", sc.Text(), err)
			}
			r.inner = time.Duration(v * float64(time.Second))
			total = true
		case len(f) == 4 && f[3] == "cache":
			r.cached++
		case len(f) == 4 && f[3] == "built":
			r.built++
		}
	}
	if !total {
		return r, fmt.Errorf("no total line in mkimages output:\n%s", out)
	}
	return r, nil
}
