package cmdline

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		params   []Param
		initArgs []string
	}{
		{"empty", "", nil, nil},
		{"flags and values", "console=ttyS0 quiet panic=-1\n",
			[]Param{{"console", "ttyS0", true}, {"quiet", "", false}, {"panic", "-1", true}}, nil},
		{"empty value", "ip= foo", []Param{{"ip", "", true}, {"foo", "", false}}, nil},
		{"quoted value", `magestack.motd="hello world" x=1`,
			[]Param{{"magestack.motd", "hello world", true}, {"x", "1", true}}, nil},
		{"whole word quoted", `"a b=c d" e`, []Param{{"a b", "c d", true}, {"e", "", false}}, nil},
		{"value with equals", "root=UUID=1234", []Param{{"root", "UUID=1234", true}}, nil},
		{"unbalanced quote runs to end", `a="b c d`, []Param{{"a", "b c d", true}}, nil},
		{"tabs and runs of spaces", "a=1\t\t b   c", []Param{{"a", "1", true}, {"b", "", false}, {"c", "", false}}, nil},
		{"init args", "quiet -- single x=y \"two words\"",
			[]Param{{"quiet", "", false}}, []string{"single", "x=y", "two words"}},
		{"dashes at end", "quiet --", []Param{{"quiet", "", false}}, []string{}},
		{"quoted dashes are a word", `"--" a`, []Param{{"--", "", false}, {"a", "", false}}, nil},
		{"repeated keys kept", "console=tty0 console=ttyS0",
			[]Param{{"console", "tty0", true}, {"console", "ttyS0", true}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Parse(tt.in)
			if !reflect.DeepEqual(c.Params, tt.params) {
				t.Errorf("Parse(%q).Params = %#v, want %#v", tt.in, c.Params, tt.params)
			}
			if !reflect.DeepEqual(c.InitArgs, tt.initArgs) {
				t.Errorf("Parse(%q).InitArgs = %#v, want %#v", tt.in, c.InitArgs, tt.initArgs)
			}
		})
	}
}

func TestLookups(t *testing.T) {
	c := Parse(`console=tty0 console=ttyS0 quiet magestack.host=dh1 magestack.test.failstep=hostname magestack.host=dh2 ip= -- magestack.host=ignored`)
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"console", "ttyS0", true},
		{"quiet", "", true},
		{"ip", "", true},
		{"magestack.host", "dh2", true},
		{"missing", "", false},
	}
	for _, tt := range tests {
		got, ok := c.Get(tt.key)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Get(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.wantOK)
		}
	}
	if got := c.All("console"); !reflect.DeepEqual(got, []string{"tty0", "ttyS0"}) {
		t.Errorf("All(console) = %q", got)
	}
	want := map[string]string{"host": "dh2", "test.failstep": "hostname"}
	if got := c.Magestack(); !reflect.DeepEqual(got, want) {
		t.Errorf("Magestack() = %v, want %v", got, want)
	}
	if c.Has("missing") || !c.Has("quiet") {
		t.Error("Has gives wrong presence")
	}
}

func TestReadFile(t *testing.T) {
	if _, err := ReadFile("/nonexistent/cmdline"); err == nil || !strings.Contains(err.Error(), "kernel command line") {
		t.Fatalf("ReadFile of a missing file: err = %v, want a wrapped error naming the command line", err)
	}
}

// FuzzParse checks the parser never panics, yields well-formed words, and
// that rendering and re-parsing is stable.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "console=ttyS0 quiet", `a="b c"`, `"x y"=z`, "-- a b", `a="`, `"`, "==", "a=b=c",
		"magestack.config=/etc/stack.yaml magestack.host=dh1 ip=10.0.0.2::10.0.0.1:255.255.255.0:dh1:eth0:off",
		"\t\n\"\"\"", "k=\"v\" -- \"--\"", "a\x00b", "é=ü",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := Parse(s)
		for _, p := range c.Params {
			if strings.ContainsRune(p.Key, '"') || strings.ContainsRune(p.Value, '"') {
				t.Fatalf("quote left in %#v", p)
			}
			if !p.HasValue && p.Value != "" {
				t.Fatalf("flag with a value: %#v", p)
			}
			if strings.Contains(p.Key, "=") {
				t.Fatalf("key holds '=': %#v", p)
			}
		}
		again := Parse(c.String())
		if !reflect.DeepEqual(again.Params, c.Params) {
			t.Fatalf("re-parse of %q changed params:\n %#v\n %#v", c.String(), c.Params, again.Params)
		}
		if len(again.InitArgs) != len(c.InitArgs) {
			t.Fatalf("re-parse of %q changed init args: %q vs %q", c.String(), c.InitArgs, again.InitArgs)
		}
	})
}
