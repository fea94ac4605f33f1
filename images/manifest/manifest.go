// Package manifest is the list of role images shipped together (on the
// MAGESTACK-IMAGES disk or over HTTP): each image file with its size and
// sha256 digest. The builder writes it; hosts check every image against it
// before a role may run from it.
package manifest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// FileName is the manifest's name next to the images.
const FileName = "manifest.json"

// Version is the format version written and accepted.
const Version = 1

// Manifest lists the images, sorted by name.
type Manifest struct {
	Version int     `json:"version"`
	Images  []Image `json:"images"`
}

// Image is one squashfs file.
type Image struct {
	Name   string `json:"name"`   // image name: a role (web) or busybox
	File   string `json:"file"`   // file name next to the manifest: web.squashfs
	Size   int64  `json:"size"`   // bytes
	SHA256 string `json:"sha256"` // hex digest of the whole file
	// Recipe is the hash of the recipe and builder that made it ("" for an
	// image added prebuilt).
	Recipe   string   `json:"recipe,omitempty"`
	Packages []string `json:"packages,omitempty"`
}

var (
	nameRe   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	digestRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks the manifest's shape: names, file names inside the
// manifest's directory, digests.
func (m *Manifest) Validate() error {
	if m.Version != Version {
		return fmt.Errorf("manifest: version %d, want %d", m.Version, Version)
	}
	seen := map[string]bool{}
	for i, im := range m.Images {
		switch {
		case !nameRe.MatchString(im.Name):
			return fmt.Errorf("manifest: images[%d]: invalid name %q", i, im.Name)
		case seen[im.Name]:
			return fmt.Errorf("manifest: images[%d]: duplicate name %q", i, im.Name)
		case im.File == "" || im.File != filepath.Base(im.File) || strings.HasPrefix(im.File, ".") || im.File == FileName:
			return fmt.Errorf("manifest: image %s: invalid file name %q", im.Name, im.File)
		case !digestRe.MatchString(im.SHA256):
			return fmt.Errorf("manifest: image %s: invalid sha256 %q", im.Name, im.SHA256)
		case im.Size <= 0:
			return fmt.Errorf("manifest: image %s: invalid size %d", im.Name, im.Size)
		}
		seen[im.Name] = true
	}
	return nil
}

// Lookup returns the image called name.
func (m *Manifest) Lookup(name string) (Image, bool) {
	for _, im := range m.Images {
		if im.Name == name {
			return im, true
		}
	}
	return Image{}, false
}

// Marshal returns the canonical form: images sorted by name, indented,
// so the same images always give the same bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	c := Manifest{Version: m.Version, Images: slices.Clone(m.Images)}
	slices.SortFunc(c.Images, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// Parse reads a manifest and validates it.
func Parse(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Read parses dir/manifest.json.
func Read(dir string) (*Manifest, error) {
	p := filepath.Join(dir, FileName)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return m, nil
}

// Write stores the manifest as dir/manifest.json (atomically).
func (m *Manifest) Write(dir string) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	p := filepath.Join(dir, FileName)
	if err := os.WriteFile(p+".tmp", b, 0o644); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}
