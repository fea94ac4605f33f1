package sysctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestApply(t *testing.T) {
	root := t.TempDir()
	for _, k := range []string{"user/max_user_namespaces", "kernel/kptr_restrict"} {
		p := filepath.Join(root, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("1000\n"), 0o644)
	}
	settings := []Setting{{Key: "user.max_user_namespaces", Value: "0"}, {Key: "kernel.kptr_restrict", Value: "2"}, {Key: "kernel.absent", Value: "1"}}
	if err := Apply(root, settings); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"user/max_user_namespaces": "0", "kernel/kptr_restrict": "2"} {
		if b, _ := os.ReadFile(filepath.Join(root, k)); strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q, want %s", k, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "kernel/absent")); err == nil {
		t.Error("a key the kernel lacks was created")
	}
	// A value that cannot be written is named.
	ro := filepath.Join(root, "user/max_user_namespaces")
	os.Remove(ro)
	os.Mkdir(ro, 0o755)
	if err := Apply(root, settings[:1]); err == nil || !strings.Contains(err.Error(), "user.max_user_namespaces=0") {
		t.Errorf("err = %v, want it to name the setting", err)
	}
}
