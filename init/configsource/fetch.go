package configsource

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Revision is one version of the stack file as fetched from a source.
type Revision struct {
	// ID is the Git commit hash for Git sources, else the SHA-256 of Data.
	ID string `json:"id"`
	// Data is the file's content.
	Data []byte `json:"-"`
	// Source is the source string it was fetched from.
	Source string `json:"source"`
	// Time is the commit time for Git sources, the modification time of a
	// file, or the Last-Modified (else fetch) time of an HTTP source.
	Time time.Time `json:"time"`
}

// Defaults of Options.
const (
	DefaultMaxSize  = 1 << 20
	DefaultTimeout  = 30 * time.Second
	DefaultMaxClone = 64 << 20
)

// Options tune a Fetcher. The zero value is usable.
type Options struct {
	// MaxSize bounds the fetched file; default DefaultMaxSize.
	MaxSize int64
	// Timeout bounds one fetch; default DefaultTimeout.
	Timeout time.Duration
	// MaxClone bounds the Git objects a clone may hold in memory (the
	// whole tree at the ref, or the history down to a commit named by
	// hash); default DefaultMaxClone.
	MaxClone int64
	// CABundle is PEM certificates trusted for https (http and Git) in
	// addition to the system roots.
	CABundle []byte
	// KnownHosts are known_hosts files for git+ssh; default
	// /etc/magestack/known_hosts, ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts
	// (those that exist). A host key not listed is refused.
	KnownHosts []string
	// SSHKey is the PEM private key file for git+ssh; default
	// /etc/magestack/ssh/id_ed25519.
	SSHKey string
	// SignedBy lists ASCII-armored OpenPGP public keys; when set, a Git
	// revision is accepted only if its commit is signed by one of them.
	SignedBy []string
	// Logger receives Watch's fetch errors; default slog.Default().
	Logger *slog.Logger
}

// Fetcher fetches revisions. It remembers the last revision per source so
// a poll whose Git ref has not moved costs one ref listing, not a clone, and
// an unchanged HTTP file (same ETag) costs no download.
type Fetcher struct {
	opts Options
	mu   sync.Mutex
	last map[string]Revision // by source string
	etag map[string]string   // ETag of the last HTTP answer, by source
}

// New returns a Fetcher.
func New(opts Options) *Fetcher {
	if opts.MaxSize <= 0 {
		opts.MaxSize = DefaultMaxSize
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxClone <= 0 {
		opts.MaxClone = DefaultMaxClone
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Fetcher{opts: opts, last: map[string]Revision{}, etag: map[string]string{}}
}

// WithSignedBy is a fetcher like f that accepts only revisions signed by
// one of keys (armored OpenPGP public keys).
func (f *Fetcher) WithSignedBy(keys []string) *Fetcher {
	opts := f.opts
	opts.SignedBy = slices.Clone(keys)
	return New(opts)
}

// Fetch fetches source with default options.
func Fetch(ctx context.Context, source string) (Revision, error) {
	return New(Options{}).Fetch(ctx, source)
}

// Fetch fetches the current revision of source.
func (f *Fetcher) Fetch(ctx context.Context, source string) (Revision, error) {
	src, err := Parse(source)
	if err != nil {
		return Revision{}, err
	}
	// Only a Git commit carries a signature; a file in the host's own
	// image (a path) is as trusted as the image.
	if len(f.opts.SignedBy) > 0 && src.Kind == KindHTTP {
		return Revision{}, fmt.Errorf("fetch %s: config.signedby is set: only signed commits from a Git source are accepted, not a plain file over http(s)", source)
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	var rev Revision
	switch src.Kind {
	case KindPath:
		rev, err = f.fetchPath(src)
	case KindHTTP:
		rev, err = f.fetchHTTP(ctx, src)
	case KindGit:
		rev, err = f.fetchGit(ctx, src)
	}
	if err != nil {
		return Revision{}, fmt.Errorf("fetch %s: %w", source, err)
	}
	return rev, nil
}

func sum(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

func (f *Fetcher) tooLarge(n int64) error {
	return fmt.Errorf("file is larger than %d bytes", f.opts.MaxSize)
}

func (f *Fetcher) fetchPath(src Source) (Revision, error) {
	fh, err := os.Open(src.Path)
	if err != nil {
		return Revision{}, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return Revision{}, err
	}
	if !st.Mode().IsRegular() {
		return Revision{}, fmt.Errorf("%s is not a regular file", src.Path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, f.opts.MaxSize+1))
	if err != nil {
		return Revision{}, err
	}
	if int64(len(data)) > f.opts.MaxSize {
		return Revision{}, f.tooLarge(int64(len(data)))
	}
	return Revision{ID: sum(data), Data: data, Source: src.Raw, Time: st.ModTime()}, nil
}

// httpClient verifies TLS against the system roots plus CABundle.
func (f *Fetcher) httpClient() (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if len(f.opts.CABundle) > 0 && !pool.AppendCertsFromPEM(f.opts.CABundle) {
		return nil, errors.New("CA bundle holds no PEM certificate")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.Proxy = nil // a host's config never goes through an environment proxy
	return &http.Client{
		Transport: tr,
		Timeout:   f.opts.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
				return errors.New("refusing a redirect from https to " + req.URL.Scheme)
			}
			return nil
		},
	}, nil
}

func (f *Fetcher) fetchHTTP(ctx context.Context, src Source) (Revision, error) {
	client, err := f.httpClient()
	if err != nil {
		return Revision{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL, nil)
	if err != nil {
		return Revision{}, err
	}
	f.mu.Lock()
	prev, seen := f.last[src.Raw]
	etag := f.etag[src.Raw]
	f.mu.Unlock()
	if seen && etag != "" {
		req.Header.Set("If-None-Match", etag) // a poll of an unchanged file costs no body
	}
	resp, err := client.Do(req)
	if err != nil {
		return Revision{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified && seen {
		return prev, nil
	}
	if resp.StatusCode != http.StatusOK {
		return Revision{}, fmt.Errorf("HTTP status %s", resp.Status)
	}
	if resp.ContentLength > f.opts.MaxSize {
		return Revision{}, f.tooLarge(resp.ContentLength)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, f.opts.MaxSize+1))
	if err != nil {
		return Revision{}, fmt.Errorf("read body: %w", err)
	}
	if int64(len(data)) > f.opts.MaxSize {
		return Revision{}, f.tooLarge(int64(len(data)))
	}
	when := time.Now()
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		when = lm
	}
	rev := Revision{ID: sum(data), Data: data, Source: src.Raw, Time: when}
	f.mu.Lock()
	f.last[src.Raw], f.etag[src.Raw] = rev, resp.Header.Get("ETag")
	f.mu.Unlock()
	return rev, nil
}

// sshAuth builds the key and host-key check for a git+ssh source.
func (f *Fetcher) sshAuth(src Source) (transport.AuthMethod, error) {
	user := "git"
	if i := strings.Index(strings.TrimPrefix(src.URL, "ssh://"), "@"); i > 0 {
		user = strings.TrimPrefix(src.URL, "ssh://")[:i]
	}
	keyFile := f.opts.SSHKey
	if keyFile == "" {
		keyFile = "/etc/magestack/ssh/id_ed25519"
	}
	auth, err := gitssh.NewPublicKeysFromFile(user, keyFile, "")
	if err != nil {
		return nil, fmt.Errorf("ssh key %s: %w", keyFile, err)
	}
	files := f.opts.KnownHosts
	if len(files) == 0 {
		candidates := []string{"/etc/magestack/known_hosts", "/etc/ssh/ssh_known_hosts"}
		if home, err := os.UserHomeDir(); err == nil {
			candidates = append(candidates, filepath.Join(home, ".ssh", "known_hosts"))
		}
		for _, c := range candidates {
			if _, err := os.Stat(c); err == nil {
				files = append(files, c)
			}
		}
	}
	if len(files) == 0 {
		return nil, errors.New("no known_hosts file: the server's host key cannot be verified")
	}
	cb, err := gitssh.NewKnownHostsCallback(files...)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	auth.HostKeyCallback = cb
	return auth, nil
}

var hashRE = regexp.MustCompile(`^[0-9a-f]{4,40}$`)

// resolve finds the commit a ref names in a remote's advertised refs.
// ok is false when the ref is not advertised (it may be a commit hash).
func resolve(refs []*plumbing.Reference, ref string) (name plumbing.ReferenceName, hash plumbing.Hash, ok bool) {
	byName := map[plumbing.ReferenceName]*plumbing.Reference{}
	for _, r := range refs {
		byName[r.Name()] = r
	}
	var candidates []plumbing.ReferenceName
	switch {
	case ref == "" || ref == "HEAD":
		head, found := byName[plumbing.HEAD]
		if !found {
			return "", plumbing.ZeroHash, false
		}
		if head.Type() == plumbing.SymbolicReference {
			candidates = []plumbing.ReferenceName{head.Target()}
		} else {
			return plumbing.HEAD, head.Hash(), true
		}
	case strings.HasPrefix(ref, "refs/"):
		candidates = []plumbing.ReferenceName{plumbing.ReferenceName(ref)}
	default:
		candidates = []plumbing.ReferenceName{plumbing.NewBranchReferenceName(ref), plumbing.NewTagReferenceName(ref)}
	}
	for _, c := range candidates {
		// An annotated tag is advertised twice: the tag object, and the
		// commit it points to as "<tag>^{}".
		if peeled, found := byName[plumbing.ReferenceName(string(c)+"^{}")]; found {
			return c, peeled.Hash(), true
		}
		if r, found := byName[c]; found && r.Type() == plumbing.HashReference {
			return c, r.Hash(), true
		}
	}
	return "", plumbing.ZeroHash, false
}

func (f *Fetcher) fetchGit(ctx context.Context, src Source) (Revision, error) {
	var auth transport.AuthMethod
	if strings.HasPrefix(src.URL, "ssh://") {
		a, err := f.sshAuth(src)
		if err != nil {
			return Revision{}, err
		}
		auth = a
	}
	remote := git.NewRemote(memory.NewStorage(), &gitconfig.RemoteConfig{Name: "origin", URLs: []string{src.URL}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: auth, CABundle: f.opts.CABundle, PeelingOption: git.AppendPeeled})
	if err != nil {
		return Revision{}, fmt.Errorf("list refs: %w", err)
	}
	name, hash, ok := resolve(refs, src.Ref)
	if !ok && !hashRE.MatchString(src.Ref) {
		return Revision{}, fmt.Errorf("ref %q not found in %s", src.Ref, src.URL)
	}
	f.mu.Lock()
	prev, seen := f.last[src.Raw]
	f.mu.Unlock()
	if seen && ((ok && prev.ID == hash.String()) || (!ok && strings.HasPrefix(prev.ID, src.Ref))) {
		return prev, nil // the ref has not moved (or is a fixed commit): no clone needed
	}
	clone := &git.CloneOptions{URL: src.URL, Auth: auth, CABundle: f.opts.CABundle, Tags: git.NoTags}
	if ok {
		clone.ReferenceName, clone.SingleBranch, clone.Depth = name, true, 1
	}
	// A commit named by hash needs the history that contains it; servers
	// rarely allow fetching an unadvertised object directly.
	repo, err := git.CloneContext(ctx, &boundedStorage{Storage: memory.NewStorage(), limit: f.opts.MaxClone}, nil, clone)
	if err != nil {
		return Revision{}, fmt.Errorf("clone: %w", err)
	}
	if !ok {
		h, err := repo.ResolveRevision(plumbing.Revision(src.Ref))
		if err != nil {
			return Revision{}, fmt.Errorf("ref %q not found in %s", src.Ref, src.URL)
		}
		hash = *h
	}
	commit, err := repo.CommitObject(hash)
	if err != nil {
		return Revision{}, fmt.Errorf("commit %s: %w", hash, err)
	}
	if len(f.opts.SignedBy) > 0 {
		if err := verify(commit, f.opts.SignedBy); err != nil {
			return Revision{}, err
		}
	}
	file, err := commit.File(src.File)
	if err != nil {
		return Revision{}, fmt.Errorf("%s at %s: %w", src.File, short(hash), err)
	}
	if file.Size > f.opts.MaxSize {
		return Revision{}, f.tooLarge(file.Size)
	}
	content, err := file.Contents()
	if err != nil {
		return Revision{}, fmt.Errorf("%s at %s: %w", src.File, short(hash), err)
	}
	rev := Revision{ID: hash.String(), Data: []byte(content), Source: src.Raw, Time: commit.Committer.When}
	f.mu.Lock()
	f.last[src.Raw] = rev
	f.mu.Unlock()
	return rev, nil
}

func short(h plumbing.Hash) string { return h.String()[:12] }

// ErrUnsigned is returned when a commit is not signed by a trusted key.
var ErrUnsigned = errors.New("commit is not signed by a trusted key")

// verify accepts a commit signed by any one of keys.
func verify(c *object.Commit, keys []string) error {
	if c.PGPSignature == "" {
		return fmt.Errorf("commit %s: %w (it has no signature)", short(c.Hash), ErrUnsigned)
	}
	var last error
	for _, k := range keys {
		if _, err := c.Verify(k); err == nil {
			return nil
		} else {
			last = err
		}
	}
	return fmt.Errorf("commit %s: %w: %v", short(c.Hash), ErrUnsigned, last)
}

// CheckKey reports whether armored is a usable ASCII-armored OpenPGP
// public key for SignedBy.
func CheckKey(armored string) error {
	list, err := openpgp.ReadArmoredKeyRing(strings.NewReader(armored))
	if err != nil {
		return fmt.Errorf("not an ASCII-armored OpenPGP public key: %w", err)
	}
	if len(list) == 0 {
		return errors.New("the armored block holds no key")
	}
	return nil
}

// boundedStorage is go-git's in-memory storage with a cap on the objects a
// clone writes into it: a config repository that also holds large files
// or a long history (or a server that sends them) must not fill PID 1's
// memory.
type boundedStorage struct {
	*memory.Storage
	limit, used int64
}

func (s *boundedStorage) SetEncodedObject(o plumbing.EncodedObject) (plumbing.Hash, error) {
	s.used += o.Size()
	if s.used > s.limit {
		return plumbing.ZeroHash, fmt.Errorf("the repository holds more than %d bytes of objects at this ref (MaxClone); keep the stack file in a small repository", s.limit)
	}
	return s.Storage.SetEncodedObject(o)
}
