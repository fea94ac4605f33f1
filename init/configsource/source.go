// Package configsource fetches revisions of the stack file from where the
// operator keeps it: a path (inside the initramfs or on disk), an http(s)
// URL, or a Git repository (https, http, file or ssh transport) at a ref.
package configsource

import (
	"fmt"
	"net/url"
	"strings"
)

// Kind is the transport of a source.
type Kind int

const (
	KindPath Kind = iota + 1 // a local file
	KindHTTP                 // http:// or https://
	KindGit                  // git+<transport>://...#ref:path
)

func (k Kind) String() string {
	switch k {
	case KindPath:
		return "path"
	case KindHTTP:
		return "http"
	case KindGit:
		return "git"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// DefaultGitFile is the file read from a Git repository when the source
// names no path.
const DefaultGitFile = "stack.yaml"

// Source is a parsed config source string.
type Source struct {
	Kind Kind
	// Raw is the string as written.
	Raw string
	// Path is the file of a KindPath source.
	Path string
	// URL is the http(s) URL of a KindHTTP source, or the repository URL
	// of a KindGit source without the "git+" prefix and fragment.
	URL string
	// Ref is the branch, tag or commit hash of a Git source; empty: the
	// repository's default branch (HEAD).
	Ref string
	// File is the path of the stack file inside a Git repository.
	File string
}

// Parse parses a source string:
//
//	/etc/magestack/stack.yaml
//	https://config.example/shop1.yaml
//	git+https://host/repo.git#main:stacks/shop1.yaml
//	git+file:///srv/git/stacks.git#main:shop1.yaml
//	git+ssh://git@host/repo.git#v1.2:stack.yaml
//
// In a Git source the fragment is ref:path; either may be empty (HEAD,
// stack.yaml).
func Parse(raw string) (Source, error) {
	s := Source{Raw: raw}
	switch {
	case raw == "":
		return s, fmt.Errorf("empty config source")
	case strings.HasPrefix(raw, "git+"):
		rest := strings.TrimPrefix(raw, "git+")
		repo, frag, _ := strings.Cut(rest, "#")
		u, err := url.Parse(repo)
		if err != nil {
			return s, fmt.Errorf("config source %q: %w", raw, err)
		}
		switch u.Scheme {
		case "https", "http", "ssh":
			if u.Host == "" {
				return s, fmt.Errorf("config source %q: repository URL has no host", raw)
			}
		case "file":
			if u.Path == "" {
				return s, fmt.Errorf("config source %q: file URL has no path", raw)
			}
		default:
			return s, fmt.Errorf("config source %q: git transport %q unsupported (want git+https, git+http, git+ssh or git+file)", raw, u.Scheme)
		}
		ref, file, _ := strings.Cut(frag, ":")
		if file == "" {
			file = DefaultGitFile
		}
		file = strings.TrimPrefix(file, "/")
		if strings.Contains(ref, "..") || strings.ContainsAny(ref, " ~^:?*[\\") {
			return s, fmt.Errorf("config source %q: %q is not a valid Git ref", raw, ref)
		}
		s.Kind, s.URL, s.Ref, s.File = KindGit, repo, ref, file
	case strings.HasPrefix(raw, "http://") || strings.HasPrefix(raw, "https://"):
		u, err := url.Parse(raw)
		if err != nil {
			return s, fmt.Errorf("config source %q: %w", raw, err)
		}
		if u.Host == "" {
			return s, fmt.Errorf("config source %q: URL has no host", raw)
		}
		s.Kind, s.URL = KindHTTP, raw
	case strings.HasPrefix(raw, "file://"):
		u, err := url.Parse(raw)
		if err != nil || u.Path == "" {
			return s, fmt.Errorf("config source %q: want file:///absolute/path", raw)
		}
		s.Kind, s.Path = KindPath, u.Path
	case strings.Contains(raw, "://"):
		scheme, _, _ := strings.Cut(raw, "://")
		return s, fmt.Errorf("config source %q: scheme %q unsupported (want a path, http(s)://, or git+https/http/ssh/file://)", raw, scheme)
	default:
		s.Kind, s.Path = KindPath, raw
	}
	return s, nil
}
