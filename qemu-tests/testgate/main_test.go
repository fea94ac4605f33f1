package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const readme = "# x\n\n## Skips CI accepts\n\n" +
	"- `no cgroup2 hierarchy` — the host's cgroups are v1; runs in QEMU.\n\n" +
	"## Next\n\n- `needs root` — not in the list: another section.\n"

// events is a go test -json stream: one pass, one accepted skip, one
// refused skip in a subtest, one failure, and the package line.
const events = `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"run","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestB","Output":"=== RUN   TestB\n"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:9: no cgroup2 hierarchy with cpu here\n"}
{"Action":"output","Package":"p","Test":"TestB","Output":"--- SKIP: TestB (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestC/sub","Output":"    c_test.go:3: needs root\n"}
{"Action":"skip","Package":"p","Test":"TestC/sub"}
{"Action":"output","Package":"p","Test":"TestD","Output":"    d_test.go:4: got 1, want 2\n"}
{"Action":"fail","Package":"p","Test":"TestD"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.1s\n"}
{"Action":"fail","Package":"p"}
`

func TestGate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	allow := write("README.md", readme)
	for _, tt := range []struct {
		name    string
		stream  string
		wantErr string
		want    []string
	}{
		{"refused skip fails", events, "1 tests skipped", []string{
			"skip accepted p TestB: b_test.go:9: no cgroup2 hierarchy with cpu here",
			"skip REFUSED p TestC/sub: c_test.go:3: needs root",
			"d_test.go:4: got 1, want 2", "FAIL\tp\t0.1s",
			"2 tests ran, 2 skipped and run nowhere else (1 accepted, 1 refused)"}},
		{"accepted skips pass", strings.ReplaceAll(events, "needs root", "no cgroup2 hierarchy"), "", []string{
			"2 skipped and run nowhere else (2 accepted, 0 refused)"}},
		{"a skip that ran in another stream counts as run", events + `{"Action":"pass","Test":"TestC/sub"}` + "\n", "", []string{
			"1 skipped and run nowhere else (1 accepted, 0 refused)"}},
		{"bad JSON names the line", "{\"Action\":\"run\"}\n{oops\n", "line 2", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(&out, allow, true, true, []string{write("events.json", tt.stream)})
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			got := strings.Join(strings.Fields(out.String()), " ")
			for _, w := range tt.want {
				if !strings.Contains(got, strings.Join(strings.Fields(w), " ")) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestAcceptedSkipsNeedTheSection(t *testing.T) {
	if _, err := acceptedSkips("# README\n- `x` — y\n"); err == nil {
		t.Fatal("a README without the section was accepted")
	}
	got, err := acceptedSkips(readme)
	if err != nil || len(got) != 1 || got[0] != "no cgroup2 hierarchy" {
		t.Fatalf("accepted = %q, %v; want the one reason of its own section", got, err)
	}
}
