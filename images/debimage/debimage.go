// Package debimage builds role images from recipes: mmdebstrap installs a
// minbase Debian with the recipe's packages into a directory, the recipe's
// strip list removes documentation and build-time secrets, and mksquashfs
// packs the tree reproducibly (fixed times, no xattrs, sorted by
// mksquashfs itself). Finished images are cached outside the source tree by
// the hash of recipe and builder version, so an unchanged recipe is never
// rebuilt on the same machine. Build tooling only: never in the PID 1
// binary.
package debimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"magestack/images/recipes"
)

// BuilderVersion is part of every cache key: bump it whenever a change
// here changes what a recipe builds into.
const BuilderVersion = "debimage/1 zstd-6"

// DefaultCacheDir holds built images and downloaded packages between
// builds; MAGESTACK_IMAGE_CACHE overrides it.
const DefaultCacheDir = "/var/cache/magestack/images"

// CacheDirFromEnv returns MAGESTACK_IMAGE_CACHE or DefaultCacheDir.
func CacheDirFromEnv() string {
	if d := os.Getenv("MAGESTACK_IMAGE_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Options tune a build.
type Options struct {
	CacheDir string // "" : CacheDirFromEnv()
	Log      *slog.Logger
	// Rebuild ignores a cached image (the new one replaces it).
	Rebuild bool
	// Output receives mmdebstrap's and mksquashfs's output (nil: discarded,
	// but the tail is kept for error messages).
	Output io.Writer
}

func (o Options) withDefaults() Options {
	if o.CacheDir == "" {
		o.CacheDir = CacheDirFromEnv()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Result is one built (or cached) image.
type Result struct {
	Role     string
	Path     string // the squashfs in the cache
	SHA256   string
	Size     int64
	Recipe   string // recipe hash, the cache key
	Cached   bool
	Duration time.Duration
	Packages []string
}

// meta sits next to a cached image and records its digest.
type meta struct {
	Role     string   `json:"role"`
	SHA256   string   `json:"sha256"`
	Size     int64    `json:"size"`
	Recipe   string   `json:"recipe"`
	Builder  string   `json:"builder"`
	Packages []string `json:"packages"`
}

// Build returns the image of r, from the cache when an intact one with the
// same recipe hash exists, else built into the cache.
func Build(ctx context.Context, r recipes.Recipe, opts Options) (Result, error) {
	opts = opts.withDefaults()
	t0 := time.Now()
	if err := r.Validate(); err != nil {
		return Result{}, err
	}
	key := r.Hash(BuilderVersion)
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return Result{}, fmt.Errorf("image %s: cache: %w", r.Role, err)
	}
	// One builder per recipe at a time: a second CI job waits and then
	// finds the first one's image.
	unlock, err := lock(ctx, filepath.Join(opts.CacheDir, key+".lock"))
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", r.Role, err)
	}
	defer unlock()

	dir := filepath.Join(opts.CacheDir, key)
	if !opts.Rebuild {
		if res, err := cached(dir, r.Role); err == nil {
			res.Duration = time.Since(t0)
			opts.Log.Info("image cached", "role", r.Role, "recipe", key[:12], "size", res.Size)
			return res, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			opts.Log.Warn("cached image unusable, rebuilding", "role", r.Role, "err", err)
		}
	}
	opts.Log.Info("building image", "role", r.Role, "recipe", key[:12], "packages", strings.Join(r.Packages, ","))
	res, err := build(ctx, r, key, opts)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", r.Role, err)
	}
	res.Duration = time.Since(t0)
	opts.Log.Info("image built", "role", r.Role, "size", res.Size, "seconds", res.Duration.Seconds())
	return res, nil
}

// cached returns the image in dir if its file still has the recorded digest.
func cached(dir, role string) (Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return Result{}, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Result{}, fmt.Errorf("%s/meta.json: %w", dir, err)
	}
	p := filepath.Join(dir, role+".squashfs")
	sum, size, err := FileDigest(p)
	if err != nil {
		return Result{}, err
	}
	if sum != m.SHA256 || size != m.Size {
		return Result{}, fmt.Errorf("%s: digest %s, recorded %s", p, sum, m.SHA256)
	}
	return Result{Role: role, Path: p, SHA256: sum, Size: size, Recipe: m.Recipe, Cached: true, Packages: m.Packages}, nil
}

func build(ctx context.Context, r recipes.Recipe, key string, opts Options) (Result, error) {
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Result{}, fmt.Errorf("%s not found (apt-get install mmdebstrap squashfs-tools): %w", tool, err)
		}
	}
	debs := filepath.Join(opts.CacheDir, "debs", r.Suite)
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return Result{}, err
	}
	tmp, err := os.MkdirTemp(opts.CacheDir, "build-"+r.Role+"-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "root")
	epoch := strconv.FormatInt(r.Epoch, 10)
	pkgs := slices.Sorted(slices.Values(r.Packages))
	// Downloaded packages are kept in the cache (sync-in before, sync-out
	// after) so a rebuild only fetches what changed in the archive.
	args := []string{
		"--variant=" + r.Variant, "--mode=root", "--format=directory",
		"--include=" + strings.Join(pkgs, ","),
		"--aptopt=APT::Install-Recommends \"false\"",
		"--skip=essential/unlink",
		"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
		"--setup-hook=sync-in " + debs + " /var/cache/apt/archives/",
		"--customize-hook=sync-out /var/cache/apt/archives " + debs,
		"--customize-hook=chroot \"$1\" dpkg-query -W -f '${Package}=${Version}\\n' > \"$1\"/.magestack-packages",
		r.Suite, tree, r.Mirror,
	}
	env := append(os.Environ(), "SOURCE_DATE_EPOCH="+epoch, "LC_ALL=C.UTF-8", "TZ=UTC", "DEBIAN_FRONTEND=noninteractive")
	if err := run(ctx, opts, env, "mmdebstrap", args...); err != nil {
		return Result{}, err
	}
	installed, err := os.ReadFile(filepath.Join(tree, ".magestack-packages"))
	if err != nil {
		return Result{}, fmt.Errorf("installed package list: %w", err)
	}
	os.Remove(filepath.Join(tree, ".magestack-packages"))
	if err := Strip(tree, r); err != nil {
		return Result{}, err
	}
	out := filepath.Join(tmp, r.Role+".squashfs")
	if err := Squash(ctx, opts, tree, out, r.Epoch); err != nil {
		return Result{}, err
	}
	sum, size, err := FileDigest(out)
	if err != nil {
		return Result{}, err
	}
	m := meta{Role: r.Role, SHA256: sum, Size: size, Recipe: key, Builder: BuilderVersion,
		Packages: strings.Fields(string(installed))}
	b, _ := json.MarshalIndent(m, "", "  ")
	// The finished image enters the cache in one rename: a crash leaves
	// only a build-* directory, never a half-written entry.
	final := filepath.Join(tmp, "entry")
	if err := os.Mkdir(final, 0o755); err != nil {
		return Result{}, err
	}
	if err := os.Rename(out, filepath.Join(final, r.Role+".squashfs")); err != nil {
		return Result{}, err
	}
	if err := os.WriteFile(filepath.Join(final, "meta.json"), b, 0o644); err != nil {
		return Result{}, err
	}
	dir := filepath.Join(opts.CacheDir, key)
	if err := os.RemoveAll(dir); err != nil {
		return Result{}, err
	}
	if err := os.Rename(final, dir); err != nil {
		return Result{}, err
	}
	return Result{Role: r.Role, Path: filepath.Join(dir, r.Role+".squashfs"), SHA256: sum, Size: size,
		Recipe: key, Packages: m.Packages}, nil
}

// Strip removes the recipe's Remove globs from tree and creates its Dirs.
func Strip(tree string, r recipes.Recipe) error {
	for _, pat := range r.Remove {
		matches, err := filepath.Glob(filepath.Join(tree, pat))
		if err != nil {
			return fmt.Errorf("strip %q: %w", pat, err)
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return fmt.Errorf("strip %s: %w", m, err)
			}
		}
	}
	for _, d := range r.Dirs {
		p := filepath.Join(tree, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("dir %s: %w", d, err)
		}
	}
	return nil
}

// Squash packs tree into out with every time set to epoch, ownership kept
// (services run as their own users) and no extended attributes, so equal
// trees give byte-identical images.
func Squash(ctx context.Context, opts Options, tree, out string, epoch int64) error {
	opts = opts.withDefaults()
	e := strconv.FormatInt(epoch, 10)
	if err := os.Remove(out); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return run(ctx, opts, nil, "mksquashfs", tree, out, "-noappend", "-comp", "zstd", "-Xcompression-level", "6", "-reproducible",
		"-mkfs-time", e, "-all-time", e, "-no-xattrs", "-quiet", "-no-progress")
}

// FileDigest returns the sha256 (hex) and size of a file.
func FileDigest(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// run runs a build tool; on failure the error carries the output's tail.
func run(ctx context.Context, opts Options, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	tail := &tailBuffer{max: 4096}
	var w io.Writer = tail
	if opts.Output != nil {
		w = io.MultiWriter(tail, opts.Output)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(tail.String()))
	}
	return nil
}

type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// lock takes an exclusive flock on path, giving up when ctx ends.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Prune removes cached images whose recipe hash is not in keep (images of
// changed recipes or an older builder), returning what it removed. The
// package cache stays.
func Prune(cacheDir string, keep []string) ([]string, error) {
	ents, err := os.ReadDir(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", cacheDir, err)
	}
	var removed []string
	for _, e := range ents {
		key := strings.TrimSuffix(e.Name(), ".lock")
		if len(key) != 64 || strings.Trim(key, "0123456789abcdef") != "" || slices.Contains(keep, key) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(cacheDir, e.Name())); err != nil {
			return removed, fmt.Errorf("prune: %w", err)
		}
		if e.IsDir() {
			removed = append(removed, key)
		}
	}
	return removed, nil
}
