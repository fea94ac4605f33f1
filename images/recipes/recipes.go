// Package recipes says what goes into each role's image: the Debian suite,
// the packages installed on top of a minbase system, and what is stripped
// afterwards. Recipes are data; images/debimage turns one into a squashfs.
// The configuration a role runs with is not baked in here: it is rendered
// from the stack file when the role starts (services/render).
package recipes

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// DefaultMirror is Debian's archive as reached from the build machine.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultEpoch is the SOURCE_DATE_EPOCH every image is built with: all
// file times inside an image are this instant (2025-01-01T00:00:00Z).
const DefaultEpoch int64 = 1735689600

// Recipe describes one role image.
type Recipe struct {
	// Role is the role the image serves; the image file is <Role>.squashfs.
	Role string `json:"role"`
	// Suite and Mirror select the Debian release. Package versions are the
	// ones the mirror holds at build time: a recipe whose Mirror points at a
	// snapshot.debian.org date pins them exactly.
	Suite  string `json:"suite"`
	Mirror string `json:"mirror"`
	// Variant is mmdebstrap's --variant (minbase: Essential + apt).
	Variant string `json:"variant"`
	// Packages are installed with their dependencies, no recommends.
	Packages []string `json:"packages"`
	// Remove are paths (globs, relative to the image root) deleted after
	// installation: documentation, caches, and everything the install made
	// from randomness (keys, machine ids) that must be made per instance.
	Remove []string `json:"remove"`
	// Dirs are created (mode 0755, root) after Remove: mount points and
	// paths the rendered configuration expects.
	Dirs []string `json:"dirs,omitempty"`
	// Epoch is SOURCE_DATE_EPOCH for the build.
	Epoch int64 `json:"epoch"`
}

// stripped is what no role image needs or must not carry from the build.
var stripped = []string{
	"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/lintian/*",
	"usr/share/locale/*", "var/cache/apt/*", "var/lib/apt/lists/*", "var/cache/debconf/*-old",
	"var/lib/dpkg/*-old", "var/log/*", "var/cache/ldconfig/aux-cache",
	"etc/machine-id", "var/lib/dbus/machine-id", "etc/mailname",
	// Made at install from randomness: per-instance secrets are generated
	// at role start, never shared by every host through the image.
	"etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem",
	"etc/ssh/ssh_host_*",
}

func recipe(role string, pkgs []string, remove []string, dirs ...string) Recipe {
	return Recipe{
		Role: role, Suite: "bookworm", Mirror: DefaultMirror, Variant: "minbase",
		Packages: pkgs, Remove: append(slices.Clone(stripped), remove...), Dirs: append([]string{"data"}, dirs...),
		Epoch: DefaultEpoch,
	}
}

// table is every role image. fw has none: it keeps the busybox image (its
// work is the host's nftables policy).
var table = []Recipe{
	recipe("lb", []string{"haproxy", "varnish"}, nil, "etc/haproxy/certs"),
	// PHP with what Magento 2.4 requires: bcmath, curl, gd, intl, mbstring,
	// pdo_mysql, soap, dom/simplexml/xsl (php-xml), zip, redis; ctype,
	// sodium and opcache come with php-fpm.
	recipe("web", []string{"nginx-light", "php-fpm", "php-mysql", "php-bcmath", "php-curl", "php-gd", "php-intl",
		"php-mbstring", "php-soap", "php-xml", "php-zip", "php-redis"},
		[]string{"var/www/html/*", "etc/nginx/sites-enabled/*"}, "microcloud/domains"),
	// The data directory lives on the role's volume; the one the package
	// initialised at build time (random server ids, build timestamps) goes.
	recipe("db", []string{"mariadb-server", "redis-server", "memcached"},
		[]string{"var/lib/mysql/*", "var/lib/redis/*"}),
	recipe("mail", []string{"postfix"}, []string{"var/spool/postfix/pid/*"}),
	recipe("acc", []string{"openssh-server", "openssh-sftp-server"}, nil, "run/sshd"),
	recipe("monitor", []string{"nginx-light"}, []string{"var/www/html/*", "etc/nginx/sites-enabled/*"}, "srv/status"),
}

// All returns every recipe, sorted by role.
func All() []Recipe {
	out := make([]Recipe, len(table))
	for i, r := range table {
		out[i] = r.clone()
	}
	slices.SortFunc(out, func(a, b Recipe) int { return strings.Compare(a.Role, b.Role) })
	return out
}

// Lookup returns the recipe of role.
func Lookup(role string) (Recipe, bool) {
	for _, r := range table {
		if r.Role == role {
			return r.clone(), true
		}
	}
	return Recipe{}, false
}

// Roles lists the roles that have an image, sorted.
func Roles() []string {
	var out []string
	for _, r := range All() {
		out = append(out, r.Role)
	}
	return out
}

func (r Recipe) clone() Recipe {
	r.Packages = slices.Clone(r.Packages)
	r.Remove = slices.Clone(r.Remove)
	r.Dirs = slices.Clone(r.Dirs)
	return r
}

// Validate checks a recipe before anything is built.
func (r Recipe) Validate() error {
	switch {
	case r.Role == "" || strings.ContainsAny(r.Role, "/. \t"):
		return fmt.Errorf("recipe: invalid role %q", r.Role)
	case r.Suite == "" || r.Mirror == "" || r.Variant == "":
		return fmt.Errorf("recipe %s: suite, mirror and variant are required", r.Role)
	case len(r.Packages) == 0:
		return fmt.Errorf("recipe %s: no packages", r.Role)
	case r.Epoch <= 0:
		return fmt.Errorf("recipe %s: epoch must be positive", r.Role)
	}
	for _, p := range r.Packages {
		if p == "" || strings.ContainsAny(p, ", \t\n") || strings.HasPrefix(p, "-") {
			return fmt.Errorf("recipe %s: invalid package name %q", r.Role, p)
		}
	}
	for _, p := range append(slices.Clone(r.Remove), r.Dirs...) {
		if p == "" || strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
			return fmt.Errorf("recipe %s: path %q must be relative to the image root, without ..", r.Role, p)
		}
	}
	return nil
}

// Hash identifies what the recipe builds with builder (the builder's
// version string): equal hashes build equal images, so a cached image with
// the same hash is reused. Package order does not matter.
func (r Recipe) Hash(builder string) string {
	c := r.clone()
	slices.Sort(c.Packages)
	b, _ := json.Marshal(struct {
		Builder string `json:"builder"`
		Recipe  Recipe `json:"recipe"`
	}{builder, c})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
