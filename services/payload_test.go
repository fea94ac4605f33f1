package services

import (
	"strings"
	"testing"
)

func TestEveryRoleHasAValidBusyboxPayload(t *testing.T) {
	for _, role := range Names() {
		p, err := PayloadFor("busybox", role, nil)
		if err != nil {
			t.Errorf("%s: %v", role, err)
			continue
		}
		if len(p.Services) == 0 {
			t.Errorf("%s: no services", role)
		}
		for _, s := range p.Services {
			if s.Name == "memhog" {
				t.Errorf("%s: test hook memhog runs without its setting", role)
			}
		}
	}
}

// Every port a role declares reachable must have a listener in the test
// image, or the firewall opens ports nothing answers on.
func TestDeclaredPortsHaveListeners(t *testing.T) {
	for _, role := range Names() {
		r, _ := Lookup(role)
		p, _ := PayloadFor("busybox", role, nil)
		cmds := ""
		for _, s := range p.Services {
			cmds += " " + strings.Join(s.Command, " ") + " "
		}
		for _, port := range append(append([]Port{}, r.Public...), r.Management...) {
			if role == "lb" && port.Port == 443 {
				continue // documented gap: busybox has no TLS server
			}
			if !strings.Contains(cmds, " "+itoa(port.Port)+" ") {
				t.Errorf("%s: port %d (%s) has no listener in %q", role, port.Port, port.Name, cmds)
			}
		}
	}
}

func itoa(p uint16) string {
	b := []byte{}
	for p > 0 || len(b) == 0 {
		b = append([]byte{byte('0' + p%10)}, b...)
		p /= 10
	}
	return string(b)
}

func TestSettingEnablesTestHook(t *testing.T) {
	p, err := PayloadFor("busybox", "web", map[string]string{"test.memhog": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Services[len(p.Services)-1].Name != "memhog" {
		t.Fatalf("memhog missing: %+v", p.Services)
	}
}

func TestPayloadValidateNamesTheProblem(t *testing.T) {
	tests := []struct {
		p    Payload
		want string
	}{
		{Payload{Services: []Service{{Name: "a", Command: []string{"rel"}}}}, "absolute path"},
		{Payload{Services: []Service{{Name: "a", Command: []string{"/x"}, After: []string{"b"}}}}, `after "b"`},
		{Payload{Services: []Service{{Name: "a", Command: []string{"/x"}}, {Name: "a", Command: []string{"/x"}}}}, "duplicate"},
		{Payload{Caps: []string{"CAP_SYS_ADMIN"}}, "CAP_SYS_ADMIN"},
		{Payload{Services: []Service{{Name: "a", Command: []string{"/x"}, StopSignal: "SIGNOPE"}}}, "SIGNOPE"},
		{Payload{Files: []File{{Path: "/x", Content: "{{.Nope}}"}}}, "Nope"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v, want error containing %q", tt.p, err, tt.want)
		}
	}
	if _, err := PayloadFor("nginx", "web", nil); err == nil || !strings.Contains(err.Error(), "busybox") {
		t.Errorf("unknown image: %v", err)
	}
}

func TestRenderFile(t *testing.T) {
	p, _ := PayloadFor("busybox", "web", nil)
	b, err := p.Files[0].Render(Instance{Name: "web2", Role: "web", FQDN: "web2.i", Stack: "shop1"})
	if err != nil || !strings.Contains(string(b), "web instance web2") || !strings.Contains(string(b), "shop1") {
		t.Fatalf("%s %v", b, err)
	}
}
