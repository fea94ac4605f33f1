package recipes

import (
	"strings"
	"testing"
)

func TestEveryRecipeValid(t *testing.T) {
	want := []string{"acc", "db", "lb", "mail", "monitor", "web"}
	if got := Roles(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("roles %v, want %v", got, want)
	}
	for _, r := range All() {
		if err := r.Validate(); err != nil {
			t.Errorf("%s: %v", r.Role, err)
		}
	}
	web, _ := Lookup("web")
	for _, p := range []string{"nginx-light", "php-fpm", "php-mysql"} {
		if !strings.Contains(strings.Join(web.Packages, ","), p) {
			t.Errorf("web recipe lacks %s", p)
		}
	}
}

func TestHash(t *testing.T) {
	base, _ := Lookup("db")
	h := base.Hash("b1")
	reordered := base.clone()
	reordered.Packages[0], reordered.Packages[2] = reordered.Packages[2], reordered.Packages[0]
	if reordered.Hash("b1") != h {
		t.Error("package order changed the hash")
	}
	for name, mut := range map[string]func(*Recipe){
		"package added": func(r *Recipe) { r.Packages = append(r.Packages, "curl") },
		"suite":         func(r *Recipe) { r.Suite = "trixie" },
		"mirror":        func(r *Recipe) { r.Mirror = "http://snapshot.debian.org/archive/debian/20250101T000000Z" },
		"strip list":    func(r *Recipe) { r.Remove = append(r.Remove, "usr/share/zoneinfo") },
		"epoch":         func(r *Recipe) { r.Epoch++ },
	} {
		c := base.clone()
		mut(&c)
		if c.Hash("b1") == h {
			t.Errorf("%s: hash unchanged", name)
		}
	}
	if base.Hash("b2") == h {
		t.Error("builder version did not change the hash")
	}
	// Lookup hands out copies: callers cannot change the table.
	c, _ := Lookup("db")
	c.Packages[0] = "changed"
	if again, _ := Lookup("db"); again.Hash("b1") != h {
		t.Error("mutating a looked-up recipe changed the table")
	}
}

func TestValidateRejects(t *testing.T) {
	ok, _ := Lookup("mail")
	for name, tc := range map[string]struct {
		mut  func(*Recipe)
		want string
	}{
		"role with slash":  {func(r *Recipe) { r.Role = "a/b" }, "invalid role"},
		"no packages":      {func(r *Recipe) { r.Packages = nil }, "no packages"},
		"option injection": {func(r *Recipe) { r.Packages = []string{"--foo"} }, "invalid package"},
		"comma in package": {func(r *Recipe) { r.Packages = []string{"a,b"} }, "invalid package"},
		"absolute remove":  {func(r *Recipe) { r.Remove = []string{"/etc"} }, "relative"},
		"escaping dir":     {func(r *Recipe) { r.Dirs = []string{"../x"} }, "without .."},
		"zero epoch":       {func(r *Recipe) { r.Epoch = 0 }, "epoch"},
	} {
		c := ok.clone()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}
