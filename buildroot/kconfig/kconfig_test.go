package kconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse(strings.NewReader("#\n# comment\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"str\"\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Config{"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_D": `"str"`}); !reflect.DeepEqual(c, want) {
		t.Fatalf("got %v want %v", c, want)
	}
	if _, err := Parse(strings.NewReader("CONFIG_A=y\ngarbage\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want error naming line 2, got %v", err)
	}
}

func TestParseRequirements(t *testing.T) {
	reqs, err := ParseRequirements(strings.NewReader("# head\nCONFIG_A=y  # early\n\nCONFIG_B\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Requirement{{"CONFIG_A", true, "early", 2}, {"CONFIG_B", false, "", 4}}
	if !reflect.DeepEqual(reqs, want) {
		t.Fatalf("got %+v want %+v", reqs, want)
	}
	for _, bad := range []string{"CONFIG_A=m\n", "VETH\n", "CONFIG_A\nCONFIG_A\n", "CONFIG_A B\n"} {
		if _, err := ParseRequirements(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestMissing(t *testing.T) {
	c := Config{"CONFIG_Y": "y", "CONFIG_M": "m", "CONFIG_N": "n"}
	reqs := []Requirement{
		{Option: "CONFIG_Y", BuiltIn: true},
		{Option: "CONFIG_M"},
		{Option: "CONFIG_M", BuiltIn: true, Why: "needed early"},
		{Option: "CONFIG_N"},
		{Option: "CONFIG_ABSENT"},
	}
	want := []string{
		"CONFIG_M: want =y, kernel has =m (needed early)",
		"CONFIG_N: want =y or =m, kernel has =n",
		"CONFIG_ABSENT: want =y or =m, kernel has not set",
	}
	if got := c.Missing(reqs); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// TestKernelHasEveryOption checks the kernel `make kernel` fetched against
// buildroot/kernel-options.txt and lists every option it lacks.
func TestKernelHasEveryOption(t *testing.T) {
	f, err := os.Open("../kernel-options.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reqs, err := ParseRequirements(f)
	if err != nil {
		t.Fatalf("kernel-options.txt: %v", err)
	}
	configs, _ := filepath.Glob("../../build/kernel/root/boot/config-*")
	if v, err := os.ReadFile("../../build/kernel/version"); err == nil {
		configs = []string{"../../build/kernel/root/boot/config-" + strings.TrimSpace(string(v))}
	}
	if len(configs) == 0 {
		t.Skip("kernel not fetched: no build/kernel/root/boot/config-* (run `make kernel`)")
	}
	for _, file := range configs {
		c, err := ParseFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if missing := c.Missing(reqs); len(missing) > 0 {
			t.Errorf("%s lacks %d of the %d options magestack relies on:\n  %s",
				filepath.Base(file), len(missing), len(reqs), strings.Join(missing, "\n  "))
		} else {
			t.Logf("%s has all %d options", filepath.Base(file), len(reqs))
		}
	}
}
