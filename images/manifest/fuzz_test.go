package manifest

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse decodes arbitrary manifests, the file a host reads from a disk
// or a netboot server before it trusts any image. Whatever arrives, Parse
// returns a manifest or an error, never panics; an accepted manifest names
// only files inside its own directory, and its canonical form parses back
// to the same images (so what a host checks is what the builder meant).
func FuzzParse(f *testing.F) {
	digest := strings.Repeat("ab", 32)
	for _, seed := range []string{
		`{"version":1,"images":[{"name":"web","file":"web.squashfs","size":4096,"sha256":"` + digest + `","recipe":"r1","packages":["nginx"]}]}`,
		`{"version":1,"images":[]}`,
		`{"version":1,"images":[{"name":"web","file":"../web.squashfs","size":1,"sha256":"` + digest + `"}]}`,
		`{"version":1,"images":[{"name":"web","file":"manifest.json","size":1,"sha256":"` + digest + `"}]}`,
		`{"version":1,"images":[{"name":"a","file":"a","size":1,"sha256":"` + digest + `"},{"name":"a","file":"b","size":1,"sha256":"` + digest + `"}]}`,
		`{"version":2,"images":[]}`,
		`{"version":1,"images":[],"extra":true}`,
		`{"version":1} {"version":1}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		for _, im := range m.Images {
			if im.File != filepath.Base(im.File) || im.File == ".." || im.File == "." || im.File == FileName || strings.ContainsRune(im.File, '/') {
				t.Fatalf("manifest %q accepted file name %q outside its directory", b, im.File)
			}
			if im.Size <= 0 || len(im.SHA256) != 64 {
				t.Fatalf("manifest %q accepted image %+v", b, im)
			}
		}
		canon, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest %q does not marshal: %v", b, err)
		}
		back, err := Parse(canon)
		if err != nil {
			t.Fatalf("canonical form of %q does not parse: %v\n%s", b, err, canon)
		}
		again, err := back.Marshal()
		if err != nil || !bytes.Equal(again, canon) {
			t.Fatalf("canonical form is not stable: %v\n%s\nthen\n%s", err, canon, again)
		}
		if len(back.Images) != len(m.Images) {
			t.Fatalf("round trip kept %d of %d images", len(back.Images), len(m.Images))
		}
		for _, im := range m.Images {
			got, ok := back.Lookup(im.Name)
			if !ok || got.File != im.File || got.Size != im.Size || got.SHA256 != im.SHA256 || got.Recipe != im.Recipe {
				t.Fatalf("round trip changed %+v into %+v (found %v)", im, got, ok)
			}
		}
	})
}
