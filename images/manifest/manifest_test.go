package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const d1 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestRoundTripCanonical(t *testing.T) {
	m := &Manifest{Version: Version, Images: []Image{
		{Name: "web", File: "web.squashfs", Size: 10, SHA256: d1},
		{Name: "db", File: "db.squashfs", Size: 20, SHA256: d1, Recipe: "r"},
	}}
	dir := t.TempDir()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Images[0].Name != "db" || got.Images[1].Name != "web" {
		t.Fatalf("not sorted: %+v", got.Images)
	}
	if im, ok := got.Lookup("web"); !ok || im.Size != 10 {
		t.Fatalf("lookup web: %+v %v", im, ok)
	}
	a, _ := m.Marshal()
	b, _ := got.Marshal()
	if string(a) != string(b) {
		t.Fatal("marshal is not canonical")
	}
}

func TestParseRejects(t *testing.T) {
	img := `{"name":"web","file":"web.squashfs","size":1,"sha256":"` + d1 + `"}`
	for name, tc := range map[string]struct{ json, want string }{
		"version":       {`{"version":2,"images":[]}`, "version 2"},
		"path escape":   {`{"version":1,"images":[{"name":"web","file":"../web.squashfs","size":1,"sha256":"` + d1 + `"}]}`, "invalid file name"},
		"bad digest":    {`{"version":1,"images":[{"name":"web","file":"web.squashfs","size":1,"sha256":"xyz"}]}`, "invalid sha256"},
		"duplicate":     {`{"version":1,"images":[` + img + `,` + img + `]}`, "duplicate"},
		"unknown field": {`{"version":1,"images":[],"extra":1}`, "unknown field"},
		"zero size":     {`{"version":1,"images":[{"name":"web","file":"web.squashfs","size":0,"sha256":"` + d1 + `"}]}`, "invalid size"},
		"bad name":      {`{"version":1,"images":[{"name":"Web!","file":"web.squashfs","size":1,"sha256":"` + d1 + `"}]}`, "invalid name"},
	} {
		_, err := Parse([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

func TestReadNamesFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), []byte("{"), 0o644)
	_, err := Read(dir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, FileName)) {
		t.Fatalf("err %v, want the file named", err)
	}
}
