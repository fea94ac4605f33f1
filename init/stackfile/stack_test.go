package stackfile

import "testing"

func TestDefaultStackHasEveryRoleOnOneHost(t *testing.T) {
	s := Default()
	insts, err := s.Instances()
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) != len(roleNames) {
		t.Fatalf("default stack has %d instances, want %d", len(insts), len(roleNames))
	}
	seen := map[string]bool{}
	for _, in := range insts {
		if in.Host != "dh1" {
			t.Errorf("%s placed on %q, want dh1", in.Name, in.Host)
		}
		if seen[in.Addr.String()] {
			t.Errorf("%s: address %s used twice", in.Name, in.Addr)
		}
		seen[in.Addr.String()] = true
	}
}
