package stackfile

import "testing"

func TestHostByMAC(t *testing.T) {
	st := &Stack{Hosts: []Host{{Name: "dh1", MAC: "52:54:00:AA:01:01"}, {Name: "dh2", MAC: "52:54:00:aa:01:02"}}}
	tests := []struct {
		mac      string
		want     string
		wantIdx  int
		wantFind bool
	}{
		{"52:54:00:aa:01:01", "dh1", 0, true},
		{"52-54-00-AA-01-02", "dh2", 1, true},
		{"52:54:00:aa:01:03", "", -1, false},
		{"not a mac", "", -1, false},
	}
	for _, tt := range tests {
		h, i, ok := st.HostByMAC(tt.mac)
		if ok != tt.wantFind || i != tt.wantIdx || (ok && h.Name != tt.want) {
			t.Errorf("HostByMAC(%q) = %v, %d, %v; want %q, %d, %v", tt.mac, h, i, ok, tt.want, tt.wantIdx, tt.wantFind)
		}
	}
}

// Offset is the instance's address's position in the internal subnet, for
// every role, as instances are added.
func TestInstanceOffsetMatchesAddress(t *testing.T) {
	s := Default()
	web := s.Roles["web"]
	web.Count = 3
	s.Roles["web"] = web
	insts, err := s.Instances()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		want, err := offsetAddr(s.Internal, in.Offset())
		if err != nil || want != in.Addr {
			t.Errorf("%s: offset %d is %v (%v), address %v", in.Name, in.Offset(), want, err, in.Addr)
		}
	}
	if len(insts) < 9 {
		t.Fatalf("%d instances", len(insts))
	}
}
