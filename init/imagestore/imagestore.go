// Package imagestore gives a host its role images: it finds the disk
// labelled MAGESTACK-IMAGES (or any directory holding images and their
// manifest), mounts it read-only, checks every image file against the
// manifest's sha256 digests and hands out the paths of verified images
// only. An image whose digest does not match is refused with an error
// naming it, and a role that had a verified image keeps that one.
package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"magestack/images/manifest"
)

// Label is the filesystem label of the images disk.
const Label = "MAGESTACK-IMAGES"

// Image is one verified image.
type Image struct {
	Name   string
	Path   string // the squashfs file to run from
	SHA256 string
	Size   int64
}

// Store holds the verified images. Safe for concurrent use.
type Store struct {
	log      *slog.Logger
	cacheDir string

	mu     sync.RWMutex
	images map[string]Image
}

// New returns an empty store. With cacheDir set (a directory on the host's
// persistent disk), verified images are copied there by digest and served
// from the copy, so they outlive the disk or download they came from.
func New(log *slog.Logger, cacheDir string) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{log: log, cacheDir: cacheDir, images: map[string]Image{}}
}

// Path returns the verified image file called name (a role such as "web",
// or "busybox"), "" when there is none.
func (s *Store) Path(name string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.images[name].Path
}

// Lookup returns the verified image called name.
func (s *Store) Lookup(name string) (Image, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	im, ok := s.images[name]
	return im, ok
}

// Names lists the verified images, sorted.
func (s *Store) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.images))
	for n := range s.images {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// DigestError says an image file is not what the manifest lists.
type DigestError struct {
	Name, File   string
	Want, Got    string
	WantSize     int64
	GotSize      int64
	KeptPrevious bool
}

func (e *DigestError) Error() string {
	kept := "no image for it"
	if e.KeptPrevious {
		kept = "keeping the previously verified image"
	}
	if e.GotSize != e.WantSize {
		return fmt.Sprintf("image %s (%s): size %d, manifest says %d: refused, %s", e.Name, e.File, e.GotSize, e.WantSize, kept)
	}
	return fmt.Sprintf("image %s (%s): sha256 %s, manifest says %s: refused, %s", e.Name, e.File, e.Got, e.Want, kept)
}

// Load reads dir/manifest.json and verifies every image it lists. Images
// that verify replace what the store had under their names; the others are
// refused (the joined error names each) and their previous verified image,
// if any, stays. Load returns the names that verified.
func (s *Store) Load(ctx context.Context, dir string) ([]string, error) {
	// Paths handed out must not depend on the working directory.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("images %s: %w", dir, err)
	}
	m, err := manifest.Read(dir)
	if err != nil {
		return nil, err
	}
	var ok []string
	var errs []error
	for _, want := range m.Images {
		if err := ctx.Err(); err != nil {
			return ok, err
		}
		src := filepath.Join(dir, want.File)
		im, err := s.verify(ctx, want, src)
		if err != nil {
			s.mu.Lock()
			prev, had := s.images[want.Name]
			// A previous image at this very path is the file that just
			// failed: it is not kept.
			keep := had && prev.Path != src
			if !keep {
				delete(s.images, want.Name)
			}
			s.mu.Unlock()
			var de *DigestError
			if errors.As(err, &de) {
				de.KeptPrevious = keep
			}
			s.log.Error("image refused", "image", want.Name, "err", err)
			errs = append(errs, err)
			continue
		}
		s.mu.Lock()
		s.images[want.Name] = im
		s.mu.Unlock()
		s.log.Info("image verified", "image", want.Name, "path", im.Path, "bytes", im.Size, "sha256", im.SHA256[:12])
		ok = append(ok, want.Name)
	}
	return ok, errors.Join(errs...)
}

// verify hashes src; with a cache dir it copies while hashing and keeps
// the copy only when the digest matches.
func (s *Store) verify(ctx context.Context, want manifest.Image, src string) (Image, error) {
	final := src
	if s.cacheDir != "" {
		final = filepath.Join(s.cacheDir, want.SHA256+".squashfs")
		if cached, err := digestFile(ctx, final); err == nil && cached == want.SHA256 {
			return Image{Name: want.Name, Path: final, SHA256: want.SHA256, Size: want.Size}, nil
		}
	}
	f, err := os.Open(src)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", want.Name, err)
	}
	defer f.Close()
	h := sha256.New()
	var w io.Writer = h
	var tmp *os.File
	if s.cacheDir != "" {
		if err := os.MkdirAll(s.cacheDir, 0o700); err != nil {
			return Image{}, fmt.Errorf("image %s: cache: %w", want.Name, err)
		}
		if tmp, err = os.CreateTemp(s.cacheDir, ".incoming-"); err != nil {
			return Image{}, fmt.Errorf("image %s: cache: %w", want.Name, err)
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		w = io.MultiWriter(h, tmp)
	}
	n, err := io.Copy(w, ctxReader{ctx, f})
	if err != nil {
		return Image{}, fmt.Errorf("image %s: read %s: %w", want.Name, src, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != want.SHA256 || n != want.Size {
		return Image{}, &DigestError{Name: want.Name, File: src, Want: want.SHA256, Got: got, WantSize: want.Size, GotSize: n}
	}
	if tmp != nil {
		if err := tmp.Chmod(0o444); err != nil {
			return Image{}, err
		}
		if err := tmp.Close(); err != nil {
			return Image{}, fmt.Errorf("image %s: cache: %w", want.Name, err)
		}
		if err := os.Rename(tmp.Name(), final); err != nil {
			return Image{}, fmt.Errorf("image %s: cache: %w", want.Name, err)
		}
	}
	return Image{Name: want.Name, Path: final, SHA256: got, Size: n}, nil
}

func digestFile(ctx context.Context, p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a long hash when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Options say where Open looks.
type Options struct {
	SysRoot  string // "/" : devices from SysRoot/sys/class/block
	DevRoot  string // "/dev"
	MountDir string // where the disk is mounted (default /run/magestack/images-disk)
	CacheDir string // see New; "" serves from the disk
	// Device skips the search and uses this block device.
	Device string
}

// Open finds the images disk, mounts it read-only at opts.MountDir and
// loads its manifest into a new store. A store is returned even when some
// images are refused (the error names them); it is nil only when no disk
// could be found or mounted.
func Open(ctx context.Context, log *slog.Logger, opts Options) (*Store, error) {
	if opts.SysRoot == "" {
		opts.SysRoot = "/"
	}
	if opts.DevRoot == "" {
		opts.DevRoot = "/dev"
	}
	if opts.MountDir == "" {
		opts.MountDir = "/run/magestack/images-disk"
	}
	dev := opts.Device
	if dev == "" {
		found, err := FindDisks(opts.SysRoot, opts.DevRoot, Label)
		if err != nil {
			return nil, err
		}
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("images disk: no block device has a filesystem labelled %s", Label)
		case 1:
			dev = found[0]
		default:
			return nil, fmt.Errorf("images disk: several devices are labelled %s: %s", Label, strings.Join(found, ", "))
		}
	}
	if err := MountReadOnly(dev, opts.MountDir, "ext4"); err != nil {
		return nil, err
	}
	s := New(log, opts.CacheDir)
	_, err := s.Load(ctx, opts.MountDir)
	return s, err
}
