package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"magestack/images/manifest"
)

// CmdlineKey is the kernel command-line key naming the image server: the
// base URL under which manifest.json and the image files it lists are
// served, e.g. magestack.images=http://10.0.0.1:8080/images (what
// `magestack netboot` puts on the command lines it hands out).
const CmdlineKey = "magestack.images"

// DefaultCacheDir is the image cache on the host's persistent disk.
const DefaultCacheDir = "/var/lib/magestack/images"

// maxManifest bounds the manifest a server may send.
const maxManifest = 4 << 20

// FetchOptions say where Fetch gets images and where it keeps them.
type FetchOptions struct {
	// URL is the image server's base URL ("" uses the cache only).
	URL string
	// CacheDir keeps the images by digest (<sha256>.squashfs), the manifest
	// of the images in use (manifest.json) and partial downloads
	// (<sha256>.partial) so an interrupted download resumes. Required.
	CacheDir string
	// Names are the images wanted: nothing else is fetched, and with none
	// the server is not even asked.
	Names []string
	// All wants every image of the manifest instead of Names.
	All bool
	// Client defaults to one with bounded dial and header timeouts.
	Client *http.Client
	// Attempts per request (manifest, each image), default 3.
	Attempts int
	// Backoff is the first pause between attempts (doubled each time,
	// capped at 8×); default 1 s.
	Backoff time.Duration
	// Stall ends a download that received nothing for this long (it then
	// resumes on the next attempt); default 30 s.
	Stall time.Duration
	// RetryFor keeps trying, while a wanted image is neither fetched nor
	// cached, for up to this long (0: one pass).
	RetryFor time.Duration
}

func (o *FetchOptions) defaults() {
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if o.Backoff <= 0 {
		o.Backoff = time.Second
	}
	if o.Stall <= 0 {
		o.Stall = 30 * time.Second
	}
	if o.Client == nil {
		o.Client = DefaultClient()
	}
	o.URL = strings.TrimSuffix(o.URL, "/")
}

// DefaultClient bounds every phase of a request but the body, which Fetch
// watches for stalls instead (an image may take minutes on a slow link).
func DefaultClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		IdleConnTimeout:       30 * time.Second,
		MaxIdleConns:          4,
	}}
}

// Source says where an image in use came from.
type Source string

const (
	FromServer Source = "server" // downloaded during this pass
	FromCache  Source = "cache"  // already cached, matching the manifest
)

// FetchResult is what a Fetch pass did.
type FetchResult struct {
	// ServerErr is why the server's manifest could not be had (nil when it
	// was); the images then came from the cache's manifest.
	ServerErr error
	// Sources maps each image in use to where it came from.
	Sources map[string]Source
	// Missing lists wanted images the store has no verified file for.
	Missing []string
}

// Fetch fills a store with the wanted images from the image server,
// through the cache: the server's manifest first, then each wanted image
// whose cached file (by digest) does not verify is downloaded, hashed while
// it is written and kept only when size and sha256 match the manifest. An
// image that fails (bad digest, download error) is named in the error and
// its previous cached image, if one still verifies, stays in use. With the
// server unreachable, the cache's own manifest (the images last in use)
// decides. The store is returned even with errors; it holds only verified
// files.
func Fetch(ctx context.Context, log *slog.Logger, opts FetchOptions) (*Store, FetchResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		return nil, FetchResult{}, errors.New("images: fetch needs a cache directory")
	}
	if opts.Client == nil {
		// PID 1 lives on: leave no idle connection to the server behind.
		opts.Client = DefaultClient()
		defer opts.Client.CloseIdleConnections()
	}
	opts.defaults()
	if len(opts.Names) == 0 && !opts.All {
		return New(log, opts.CacheDir), FetchResult{Sources: map[string]Source{}}, nil
	}
	deadline := time.Now().Add(opts.RetryFor)
	pause := opts.Backoff
	for {
		s := New(log, opts.CacheDir)
		res, err := s.fetchPass(ctx, opts)
		if len(res.Missing) == 0 || time.Now().Add(pause).After(deadline) || ctx.Err() != nil {
			return s, res, err
		}
		log.Warn("images: not every wanted image is available; retrying", "missing", strings.Join(res.Missing, ","), "in", pause, "err", err)
		if sleepCtx(ctx, pause) != nil {
			return s, res, err
		}
		pause = min(pause*2, 8*opts.Backoff)
	}
}

func (s *Store) fetchPass(ctx context.Context, opts FetchOptions) (FetchResult, error) {
	res := FetchResult{Sources: map[string]Source{}}
	if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
		return res, fmt.Errorf("images: cache %s: %w", opts.CacheDir, err)
	}
	cached, cacheErr := manifest.Read(opts.CacheDir)
	if cacheErr != nil && !errors.Is(cacheErr, os.ErrNotExist) {
		s.log.Warn("images: cached manifest unusable; ignoring it", "err", cacheErr)
	}
	if cacheErr != nil {
		cached = &manifest.Manifest{Version: manifest.Version}
	}
	var server *manifest.Manifest
	if opts.URL == "" {
		res.ServerErr = errors.New("no image server configured (" + CmdlineKey + "=)")
	} else {
		server, res.ServerErr = fetchManifest(ctx, opts)
		if res.ServerErr != nil {
			s.log.Warn("images: image server unreachable; using the cached images", "url", opts.URL, "err", res.ServerErr)
		}
	}
	names := opts.Names
	if opts.All {
		from := cached
		if server != nil {
			from = server
		}
		for _, im := range from.Images {
			names = append(names, im.Name)
		}
	}
	names = slices.Compact(slices.Sorted(slices.Values(names)))

	var errs []error
	var inUse []manifest.Image
	keep := map[string]bool{} // cache files (by digest) to keep
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(errs, err)...)
		}
		prev, hadPrev := cached.Lookup(name)
		use := func(im manifest.Image, path string, src Source) {
			s.mu.Lock()
			s.images[name] = Image{Name: name, Path: path, SHA256: im.SHA256, Size: im.Size}
			s.mu.Unlock()
			inUse = append(inUse, im)
			keep[im.SHA256] = true
			res.Sources[name] = src
		}
		// fallBack uses the previously cached image when it still verifies.
		fallBack := func(why error) {
			if hadPrev {
				if p, err := s.cachedFile(ctx, opts.CacheDir, prev); err == nil {
					var de *DigestError
					if errors.As(why, &de) {
						de.KeptPrevious = true
					}
					s.log.Warn("image: keeping the previously cached image", "image", name, "sha256", short(prev.SHA256), "why", why)
					use(prev, p, FromCache)
					errs = append(errs, why)
					return
				}
			}
			s.log.Error("image refused", "image", name, "err", why)
			errs = append(errs, why)
			res.Missing = append(res.Missing, name)
		}
		if server == nil {
			if !hadPrev {
				fallBack(fmt.Errorf("image %s: not in the cache and the image server is unreachable: %w", name, res.ServerErr))
				continue
			}
			p, err := s.cachedFile(ctx, opts.CacheDir, prev)
			if err != nil {
				hadPrev = false
				fallBack(fmt.Errorf("image %s: the image server is unreachable and the cached copy is unusable: %w", name, err))
				continue
			}
			s.log.Info("image from cache", "image", name, "sha256", short(prev.SHA256), "server", "unreachable")
			use(prev, p, FromCache)
			continue
		}
		want, ok := server.Lookup(name)
		if !ok {
			fallBack(fmt.Errorf("image %s: not listed in %s/%s", name, opts.URL, manifest.FileName))
			continue
		}
		keep[want.SHA256] = true // a partial download of it may resume later
		if p, err := s.cachedFile(ctx, opts.CacheDir, want); err == nil {
			s.log.Info("image from cache", "image", name, "sha256", short(want.SHA256), "server", "matches")
			use(want, p, FromCache)
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("image: cached copy does not match the manifest; fetching it again", "image", name, "err", err)
		}
		start := time.Now()
		p, err := s.download(ctx, opts, want)
		if err != nil {
			fallBack(err)
			continue
		}
		s.log.Info("image fetched", "image", name, "bytes", want.Size, "sha256", short(want.SHA256),
			"ms", time.Since(start).Milliseconds(), "from", opts.URL)
		use(want, p, FromServer)
	}
	if server != nil {
		// The cache's manifest lists what is in use, so a boot with the
		// server gone starts the same images; files no longer referenced go.
		cm := &manifest.Manifest{Version: manifest.Version, Images: inUse}
		if err := cm.Write(opts.CacheDir); err != nil {
			errs = append(errs, fmt.Errorf("images: cache: %w", err))
		} else {
			prune(s.log, opts.CacheDir, keep)
		}
	}
	return res, errors.Join(errs...)
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// cachedFile returns the cache file of im when its size and digest match.
func (s *Store) cachedFile(ctx context.Context, dir string, im manifest.Image) (string, error) {
	p := filepath.Join(dir, im.SHA256+".squashfs")
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if fi.Size() != im.Size {
		return "", &DigestError{Name: im.Name, File: p, Want: im.SHA256, WantSize: im.Size, GotSize: fi.Size()}
	}
	got, err := digestFile(ctx, p)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", im.Name, err)
	}
	if got != im.SHA256 {
		return "", &DigestError{Name: im.Name, File: p, Want: im.SHA256, Got: got, WantSize: im.Size, GotSize: fi.Size()}
	}
	return p, nil
}

func fetchManifest(ctx context.Context, opts FetchOptions) (*manifest.Manifest, error) {
	url := opts.URL + "/" + manifest.FileName
	var last error
	pause := opts.Backoff
	for attempt := 1; attempt <= opts.Attempts; attempt++ {
		if attempt > 1 {
			if err := sleepCtx(ctx, pause); err != nil {
				return nil, errors.Join(last, err)
			}
			pause *= 2
		}
		m, err := getManifest(ctx, opts.Client, url)
		if err == nil {
			return m, nil
		}
		last = err
		var bad badManifest
		if errors.As(err, &bad) {
			return nil, err // the server answered: another try gives the same
		}
	}
	return nil, last
}

type badManifest struct{ error }

func getManifest(ctx context.Context, c *http.Client, url string) (*manifest.Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, badManifest{fmt.Errorf("manifest %s: %w", url, err)}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("manifest %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", url, err)
	}
	if len(b) > maxManifest {
		return nil, badManifest{fmt.Errorf("manifest %s: larger than %d bytes", url, maxManifest)}
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, badManifest{fmt.Errorf("%s: %w", url, err)}
	}
	return m, nil
}

// download gets want into the cache, resuming a partial file left by an
// earlier attempt or boot, and returns the verified file.
func (s *Store) download(ctx context.Context, opts FetchOptions, want manifest.Image) (string, error) {
	url := opts.URL + "/" + want.File
	part := filepath.Join(opts.CacheDir, want.SHA256+".partial")
	final := filepath.Join(opts.CacheDir, want.SHA256+".squashfs")
	var last error
	pause := opts.Backoff
	for attempt := 1; attempt <= opts.Attempts; attempt++ {
		if attempt > 1 {
			if err := sleepCtx(ctx, pause); err != nil {
				return "", errors.Join(last, err)
			}
			pause *= 2
		}
		resumed, err := s.downloadOnce(ctx, opts, want, url, part)
		if err == nil {
			if err := os.Chmod(part, 0o444); err != nil {
				return "", fmt.Errorf("image %s: cache: %w", want.Name, err)
			}
			if err := os.Rename(part, final); err != nil {
				return "", fmt.Errorf("image %s: cache: %w", want.Name, err)
			}
			return final, nil
		}
		last = err
		var de *DigestError
		if errors.As(err, &de) {
			// The bytes are wrong: never resume from them.
			os.Remove(part)
			if !resumed {
				return "", err // a whole fresh download was wrong: the server's file is
			}
		}
		if ctx.Err() != nil {
			return "", err
		}
		s.log.Warn("image: download interrupted; retrying", "image", want.Name, "attempt", attempt, "err", err)
	}
	return "", last
}

// downloadOnce continues part from its current length (a Range request)
// and verifies the whole file once complete. resumed says whether bytes of
// an earlier attempt were reused.
func (s *Store) downloadOnce(ctx context.Context, opts FetchOptions, want manifest.Image, url, part string) (resumed bool, err error) {
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("image %s: cache: %w", want.Name, err)
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, ctxReader{ctx, io.LimitReader(f, want.Size+1)})
	if err != nil {
		return false, fmt.Errorf("image %s: cache: %w", want.Name, err)
	}
	if have > want.Size {
		if err := restart(f, h); err != nil {
			return false, fmt.Errorf("image %s: cache: %w", want.Name, err)
		}
		have = 0
	}
	resumed = have > 0
	if have < want.Size {
		have, err = s.transfer(ctx, opts, want, url, f, h, have)
		if err != nil {
			return resumed, err
		}
	}
	got := hex.EncodeToString(h.Sum(nil))
	if have != want.Size || got != want.SHA256 {
		return resumed, &DigestError{Name: want.Name, File: url, Want: want.SHA256, Got: got, WantSize: want.Size, GotSize: have}
	}
	if err := f.Sync(); err != nil {
		return resumed, fmt.Errorf("image %s: cache: %w", want.Name, err)
	}
	return resumed, nil
}

func restart(f *os.File, h hash.Hash) error {
	h.Reset()
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.Seek(0, io.SeekStart)
	return err
}

// transfer appends the rest of the image (from byte have) to f and h.
func (s *Store) transfer(ctx context.Context, opts FetchOptions, want manifest.Image, url string, f *os.File, h hash.Hash, have int64) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return have, fmt.Errorf("image %s: %w", want.Name, err)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
		// The server's ETag is the digest: a changed file answers in full.
		req.Header.Set("If-Range", `"sha256:`+want.SHA256+`"`)
	}
	resp, err := opts.Client.Do(req)
	if err != nil {
		return have, fmt.Errorf("image %s: %w", want.Name, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != have {
			return have, fmt.Errorf("image %s: %s answered Content-Range %q to a request from byte %d", want.Name, url, resp.Header.Get("Content-Range"), have)
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			if err := restart(f, h); err != nil {
				return have, fmt.Errorf("image %s: cache: %w", want.Name, err)
			}
			have = 0
		}
	default:
		return have, fmt.Errorf("image %s: %s: %s", want.Name, url, resp.Status)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return have, fmt.Errorf("image %s: cache: %w", want.Name, err)
	}
	stall := time.AfterFunc(opts.Stall, func() {
		cancel(fmt.Errorf("no data for %s", opts.Stall))
	})
	defer stall.Stop()
	body := &progressReader{r: io.LimitReader(resp.Body, want.Size-have+1), onData: func() { stall.Reset(opts.Stall) }}
	n, err := io.Copy(io.MultiWriter(f, h), body)
	have += n
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		return have, fmt.Errorf("image %s: %s: after %d of %d bytes: %w", want.Name, url, have, want.Size, err)
	}
	if have < want.Size {
		return have, fmt.Errorf("image %s: %s: connection ended after %d of %d bytes", want.Name, url, have, want.Size)
	}
	return have, nil
}

// rangeStart parses "bytes START-END/SIZE".
func rangeStart(v string) (int64, bool) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}

type progressReader struct {
	r      io.Reader
	onData func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onData()
	}
	return n, err
}

// prune removes cached images and partial downloads whose digest is not in
// keep, and leftovers of interrupted disk copies.
func prune(log *slog.Logger, dir string, keep map[string]bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		digest, ok := strings.CutSuffix(n, ".squashfs")
		if !ok {
			digest, ok = strings.CutSuffix(n, ".partial")
		}
		stale := (ok && !keep[digest]) || strings.HasPrefix(n, ".incoming-")
		if !stale {
			continue
		}
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			log.Warn("images: cache prune", "file", n, "err", err)
			continue
		}
		log.Info("images: removed from the cache", "file", n)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// HasCache reports whether dir holds a cache's manifest (images fetched on
// an earlier boot).
func HasCache(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, manifest.FileName))
	return err == nil
}
