package ipconfig

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Config
	}{
		{"", Config{Mode: ModeDHCP}},
		{"dhcp", Config{Mode: ModeDHCP, Autoconf: "dhcp"}},
		{"DHCP", Config{Mode: ModeDHCP, Autoconf: "DHCP"}},
		{"on", Config{Mode: ModeDHCP, Autoconf: "on"}},
		{"any", Config{Mode: ModeDHCP, Autoconf: "any"}},
		{"bootp", Config{Mode: ModeDHCP, Autoconf: "bootp"}},
		{"off", Config{Mode: ModeOff, Autoconf: "off"}},
		{"none", Config{Mode: ModeOff, Autoconf: "none"}},
		{"::::::dhcp", Config{Mode: ModeDHCP, Autoconf: "dhcp"}},
		{"::::::off", Config{Mode: ModeOff, Autoconf: "off"}},
		{":::::eth1:dhcp", Config{Mode: ModeDHCP, Device: "eth1", Autoconf: "dhcp"}},
		{":::::eth1", Config{Mode: ModeDHCP, Device: "eth1"}},
		{
			"10.99.1.5:10.99.1.1:10.99.1.254:255.255.255.0:dh1:eth0:off:10.99.1.53:10.99.1.54:10.99.1.123",
			Config{
				Mode: ModeStatic, Address: netip.MustParsePrefix("10.99.1.5/24"),
				Server: netip.MustParseAddr("10.99.1.1"), Gateway: netip.MustParseAddr("10.99.1.254"),
				Hostname: "dh1", Device: "eth0", Autoconf: "off",
				DNS: addrs("10.99.1.53", "10.99.1.54"), NTP: addrs("10.99.1.123"),
			},
		},
		// Trailing fields omitted; autoconf absent with a client address means static.
		{"10.99.1.5::10.99.1.1:255.255.255.0", Config{
			Mode: ModeStatic, Address: netip.MustParsePrefix("10.99.1.5/24"), Gateway: netip.MustParseAddr("10.99.1.1"),
		}},
		{"10.99.1.5:::255.255.255.252::eth0:none", Config{
			Mode: ModeStatic, Address: netip.MustParsePrefix("10.99.1.5/30"), Device: "eth0", Autoconf: "none",
		}},
		// Missing netmask: classful default, as the kernel does.
		{"10.1.2.3", Config{Mode: ModeStatic, Address: netip.MustParsePrefix("10.1.2.3/8")}},
		{"172.16.2.3:", Config{Mode: ModeStatic, Address: netip.MustParsePrefix("172.16.2.3/16")}},
		{"192.168.2.3::::", Config{Mode: ModeStatic, Address: netip.MustParsePrefix("192.168.2.3/24")}},
		// 0.0.0.0 means "not given", as in the kernel.
		{"0.0.0.0::::::dhcp", Config{Mode: ModeDHCP, Autoconf: "dhcp"}},
		// DHCP with a wanted address.
		{"10.99.1.5::::::dhcp", Config{Mode: ModeDHCP, Address: netip.MustParsePrefix("10.99.1.5/8"), Autoconf: "dhcp"}},
		{"::::h:::10.0.0.53", Config{Mode: ModeDHCP, Hostname: "h", DNS: addrs("10.0.0.53")}},
		{"10.99.1.5:::255.255.255.0::::::10.0.0.9", Config{
			Mode: ModeStatic, Address: netip.MustParsePrefix("10.99.1.5/24"), NTP: addrs("10.0.0.9"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse(%q)\n got  %+v\n want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in        string
		field     string // "" when the error is not about one field
		errSubstr string
	}{
		{"dhpc", "autoconf", "unknown autoconf"},
		{"rarp", "autoconf", "RARP"},
		{"10.99.1.5:::255.255.255.0:::bogus", "autoconf", "unknown autoconf"},
		{"10.99.1:::255.255.255.0", "client-ip", "dotted-quad"},
		{"fe80::1", "client-ip", "dotted-quad"}, // an IPv6 literal is split on colons; still a clear error
		{"1.2.3.4.5", "autoconf", "unknown autoconf"},
		{"10.99.1.5:x", "server-ip", "dotted-quad"},
		{"10.99.1.5::10.99.1.300", "gw-ip", "dotted-quad"},
		{"10.99.1.5:::255.0.255.0", "netmask", "contiguous"},
		{"10.99.1.5:::24", "netmask", "dotted-quad"},
		{"10.99.1.5:::/24", "netmask", "dotted-quad"},
		{"10.99.1.5::10.98.0.1:255.255.255.0", "gw-ip", "outside the client network"},
		{"10.99.1.5::::" + strings.Repeat("h", 65), "hostname", "longer than 64"},
		{"10.99.1.5:::::averyveryverylongname0", "device", "at most 15"},
		{"10.99.1.5:::::../x", "device", "not a valid interface"},
		{"10.99.1.5:::::::8.8.8", "dns0-ip", "dotted-quad"},
		{"10.99.1.5::::::::x", "dns1-ip", "dotted-quad"},
		{"10.99.1.5:::::::::x", "ntp0-ip", "dotted-quad"},
		{"10.99.1.5::::::::::", "", "at most 10"},
		{":::255.255.255.0:::off", "client-ip", "needs a client address"},
		{"10.99.1.5 ", "", "whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q): want an error", tt.in)
			}
			if !strings.Contains(err.Error(), tt.errSubstr) {
				t.Errorf("Parse(%q) = %v, want it to mention %q", tt.in, err, tt.errSubstr)
			}
			var fe *FieldError
			if tt.field == "" {
				return
			}
			if !errors.As(err, &fe) {
				t.Fatalf("Parse(%q) = %v, want a *FieldError for %s", tt.in, err, tt.field)
			}
			if fe.Field != tt.field || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Parse(%q) names field %q (%v), want %q", tt.in, fe.Field, err, tt.field)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "dhcp", "off", "none", "on", "any", "::::::dhcp",
		"10.99.1.5:10.99.1.1:10.99.1.254:255.255.255.0:dh1:eth0:off:10.99.1.53:10.99.1.54:10.99.1.123",
		"10.99.1.5::10.99.1.1:255.255.255.0", "10.1.2.3", ":::::eth1:dhcp", "1.2.3.4:::0.0.0.0",
		"::::::::::", "10.99.1.5:::255.0.255.0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ip=:") {
				t.Fatalf("Parse(%q) error %q does not say it is about ip=", s, err)
			}
			return
		}
		switch cfg.Mode {
		case ModeStatic:
			if !cfg.Address.IsValid() {
				t.Fatalf("Parse(%q): static without an address: %+v", s, cfg)
			}
		case ModeDHCP, ModeOff:
		default:
			t.Fatalf("Parse(%q): unknown mode %q", s, cfg.Mode)
		}
		if cfg.Address.IsValid() && (!cfg.Address.Addr().Is4() || cfg.Address.Bits() < 0 || cfg.Address.Bits() > 32) {
			t.Fatalf("Parse(%q): bad address %v", s, cfg.Address)
		}
		if len(cfg.Device) > maxIfname || len(cfg.Hostname) > maxHostname {
			t.Fatalf("Parse(%q): over-long device or hostname", s)
		}
		if cfg.Mode == ModeStatic && cfg.Gateway.IsValid() && !cfg.Address.Masked().Contains(cfg.Gateway) {
			t.Fatalf("Parse(%q): gateway off-link", s)
		}
	})
}
