package stackfile

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParse feeds arbitrary documents to Parse: it must never panic, every
// problem must name the file, and whatever parses must survive a round trip
// through Marshal.
func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte(one + "roles:\n  web: {count: 3, settings: {a: b}}\n"))
	f.Add([]byte(one + "a: &a [1, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			for _, fe := range FieldErrors(err) {
				if fe.File != "fuzz.yaml" || fe.Msg == "" {
					t.Fatalf("problem without file or message: %#v", fe)
				}
			}
			return
		}
		if _, err := s.Instances(); err != nil {
			t.Fatalf("valid stack has no instances: %v", err)
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		again, err := Parse("again.yaml", out)
		if err != nil {
			t.Fatalf("marshalled stack does not parse: %v\n%s", err, out)
		}
		if !Equal(s, again) {
			t.Fatalf("round trip changed the stack:\n%s", out)
		}
	})
}

func TestRoundTrip(t *testing.T) {
	s := Default()
	out, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse("again.yaml", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !Equal(s, again) {
		t.Fatalf("round trip changed the default stack:\n%s", out)
	}
	if strings.Contains(string(out), "invalid") {
		t.Errorf("zero addresses leaked into the output:\n%s", out)
	}
	js, err := s.MarshalJSONOrdered()
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON map[string]any
	if err := json.Unmarshal(js, &fromJSON); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	if !strings.HasPrefix(string(js), `{"stack":"default","hosts":[`) || fromJSON["internal"] != "172.16.0.0/24" {
		t.Errorf("JSON: %s", js)
	}
	var probe map[string]any
	if err := yaml.Unmarshal(out, &probe); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(probe["stack"], "default") {
		t.Errorf("stack key: %v", probe["stack"])
	}
}
