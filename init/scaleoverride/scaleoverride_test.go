package scaleoverride

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"magestack/init/stackfile"
)

func TestParseArg(t *testing.T) {
	for _, tc := range []struct {
		arg     string
		role    string
		count   int
		wantErr string
	}{
		{"web=3", "web", 3, ""},
		{"web=150", "web", 150, ""},
		{"web=0", "", 0, "at least 1"},
		{"web=-2", "", 0, "at least 1"},
		{"web=151", "", 0, "at most 150"},
		{"web=three", "", 0, `count "three" is not a whole number`},
		{"web", "", 0, "want ROLE=COUNT"},
		{"=3", "", 0, "want ROLE=COUNT"},
		{"db=2", "", 0, "role db cannot scale"},
		{"lb=2", "", 0, "role lb cannot scale"},
		{"wbe=2", "", 0, `unknown role "wbe"`},
	} {
		role, count, err := ParseArg(tc.arg)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.arg) {
				t.Errorf("ParseArg(%q) err = %v, want it to name the argument and say %q", tc.arg, err, tc.wantErr)
			}
			continue
		}
		if err != nil || role != tc.role || count != tc.count {
			t.Errorf("ParseArg(%q) = %q, %d, %v; want %q, %d", tc.arg, role, count, err, tc.role, tc.count)
		}
	}
}

const stack = `stack: s
hosts: [{name: dh1, mac: "52:54:00:00:00:01"}]
internal: 172.16.0.0/24
roles:
  web: {count: %d}
`

func parse(t *testing.T, web int) *stackfile.Stack {
	t.Helper()
	s, err := stackfile.Parse("s.yaml", []byte(strings.Replace(stack, "%d", string(rune('0'+web)), 1)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func webs(t *testing.T, s *stackfile.Stack) []string {
	t.Helper()
	insts, err := s.Instances()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, in := range insts {
		if in.Role == "web" {
			out = append(out, in.Name)
		}
	}
	return out
}

func TestApplyKeepsUntilTheStackFileChangesTheCount(t *testing.T) {
	over := []Override{{Role: "web", Count: 3, Base: 1}}
	file := parse(t, 1)
	eff, kept, sup, err := Apply(file, over)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(webs(t, eff), ","); got != "web1,web2,web3" || len(kept) != 1 || len(sup) != 0 {
		t.Errorf("same stack file count: webs %s kept %v superseded %v; want web1..3, the override kept", got, kept, sup)
	}
	if file.Roles["web"].Count != 1 {
		t.Errorf("Apply changed the stack file's stack: web count %d", file.Roles["web"].Count)
	}
	eff, kept, sup, err = Apply(parse(t, 2), over)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(webs(t, eff), ","); got != "web1,web2" || len(kept) != 0 || len(sup) != 1 {
		t.Errorf("stack file changed web's count: webs %s kept %v superseded %v; want the file's 2, the override superseded", got, kept, sup)
	}
}

func TestStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", FileName)
	s := Open(path)
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("empty store: %v, %v", list, err)
	}
	if err := s.Set(Override{Role: "web", Count: 3, Base: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(Override{Role: "web", Count: 2, Base: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(Override{Role: "db", Count: 2, Base: 1}); err == nil {
		t.Error("db override accepted")
	}
	list, err := Open(path).List()
	if err != nil || len(list) != 1 || list[0].Count != 2 {
		t.Fatalf("after two sets, reopened: %+v, %v; want web=2 only", list, err)
	}
	if err := s.Delete("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("store file left after deleting the last override: %v", err)
	}
	os.WriteFile(path, []byte(`[{"role":"db","count":4,"base":1}]`), 0o600)
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a hand-edited bad store: err = %v, want it refused naming the file", err)
	}
}
