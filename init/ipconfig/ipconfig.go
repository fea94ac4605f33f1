// Package ipconfig parses the kernel's ip= boot parameter
// (Documentation/admin-guide/nfs/nfsroot.rst):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// and its one-word forms (ip=dhcp, ip=off, ip=none, ip=on, ip=any, ...).
// It only parses: applying the result is netconf's job.
package ipconfig

import (
	"fmt"
	"net/netip"
	"strings"
)

// Mode says how the network is to be configured.
type Mode string

const (
	// ModeDHCP: ask a DHCP server (also chosen for autoconf on/any/bootp/both,
	// since DHCP servers answer BOOTP-style requests and magestack speaks DHCP only).
	ModeDHCP Mode = "dhcp"
	// ModeStatic: use the addresses given on the command line.
	ModeStatic Mode = "static"
	// ModeOff: configure no interface beyond loopback.
	ModeOff Mode = "off"
)

// Limits the kernel applies too.
const (
	maxHostname = 64 // __NEW_UTS_LEN
	maxIfname   = 15 // IFNAMSIZ - 1
)

// fieldNames are the ip= fields in order, as the errors name them.
var fieldNames = [...]string{
	"client-ip", "server-ip", "gw-ip", "netmask", "hostname",
	"device", "autoconf", "dns0-ip", "dns1-ip", "ntp0-ip",
}

// Config is a parsed ip= value. Zero netip values mean "not given".
type Config struct {
	Mode Mode `json:"mode"`
	// Address is client-ip with its netmask; when the netmask field is
	// empty, the classful mask the kernel would use.
	Address  netip.Prefix `json:"address,omitzero"`
	Server   netip.Addr   `json:"server,omitzero"`
	Gateway  netip.Addr   `json:"gateway,omitzero"`
	Hostname string       `json:"hostname,omitempty"`
	// Device is the interface to configure; "" means every NIC with
	// carrier (DHCP) or the first one with carrier (static).
	Device string       `json:"device,omitempty"`
	DNS    []netip.Addr `json:"dns,omitempty"`
	NTP    []netip.Addr `json:"ntp,omitempty"`
	// Autoconf is the autoconf field exactly as written ("" if absent).
	Autoconf string `json:"autoconf,omitempty"`
}

// FieldError names the ip= field that is wrong.
type FieldError struct {
	Field string // e.g. "netmask"
	Index int    // 1-based position in the colon-separated list
	Value string
	Err   error
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("ip=: field %d (%s) %q: %v", e.Index, e.Field, e.Value, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// Parse parses the value of ip= (without the "ip=" prefix). An empty value
// means DHCP on every interface, as the kernel's "any" default does.
func Parse(value string) (Config, error) {
	if strings.ContainsAny(value, " \t\n\r\x00") {
		return Config{}, fmt.Errorf("ip=: value %q contains whitespace or NUL", value)
	}
	if _, err := netip.ParseAddr(value); err != nil && !strings.Contains(value, ":") {
		// The kernel checks the whole value against the protocol names
		// first; a lone address is a client-ip with every other field empty.
		mode, err := autoconfMode(value)
		if err != nil {
			return Config{}, &FieldError{Field: "autoconf", Index: 7, Value: value, Err: err}
		}
		if mode == ModeStatic {
			// ip=off / ip=none: no address given, so nothing to configure.
			mode = ModeOff
		}
		return Config{Mode: mode, Autoconf: value}, nil
	}

	fields := strings.Split(value, ":")
	if len(fields) > len(fieldNames) {
		return Config{}, fmt.Errorf("ip=: %d colon-separated fields, at most %d allowed (%s)",
			len(fields), len(fieldNames), strings.Join(fieldNames[:], ":"))
	}
	get := func(i int) string {
		if i < len(fields) {
			return fields[i]
		}
		return ""
	}
	fieldErr := func(i int, err error) error {
		return &FieldError{Field: fieldNames[i], Index: i + 1, Value: get(i), Err: err}
	}

	var cfg Config
	client, err := optionalAddr(get(0))
	if err != nil {
		return Config{}, fieldErr(0, err)
	}
	if cfg.Server, err = optionalAddr(get(1)); err != nil {
		return Config{}, fieldErr(1, err)
	}
	if cfg.Gateway, err = optionalAddr(get(2)); err != nil {
		return Config{}, fieldErr(2, err)
	}
	bits := -1
	if get(3) != "" {
		if bits, err = parseNetmask(get(3)); err != nil {
			return Config{}, fieldErr(3, err)
		}
	}
	cfg.Hostname = get(4)
	if len(cfg.Hostname) > maxHostname {
		return Config{}, fieldErr(4, fmt.Errorf("longer than %d bytes", maxHostname))
	}
	cfg.Device = get(5)
	if len(cfg.Device) > maxIfname {
		return Config{}, fieldErr(5, fmt.Errorf("interface names are at most %d bytes", maxIfname))
	}
	if strings.ContainsAny(cfg.Device, "/") || cfg.Device == "." || cfg.Device == ".." {
		return Config{}, fieldErr(5, fmt.Errorf("not a valid interface name"))
	}
	cfg.Autoconf = get(6)
	for i := 7; i <= 8; i++ {
		a, err := optionalAddr(get(i))
		if err != nil {
			return Config{}, fieldErr(i, err)
		}
		if a.IsValid() {
			cfg.DNS = append(cfg.DNS, a)
		}
	}
	ntp, err := optionalAddr(get(9))
	if err != nil {
		return Config{}, fieldErr(9, err)
	}
	if ntp.IsValid() {
		cfg.NTP = []netip.Addr{ntp}
	}

	switch {
	case cfg.Autoconf != "":
		if cfg.Mode, err = autoconfMode(cfg.Autoconf); err != nil {
			return Config{}, fieldErr(6, err)
		}
	case client.IsValid():
		cfg.Mode = ModeStatic
	default:
		// The kernel's default protocol set is "any": with no client
		// address there is nothing static to apply.
		cfg.Mode = ModeDHCP
	}
	if cfg.Mode == ModeStatic && !client.IsValid() {
		if bits >= 0 || cfg.Gateway.IsValid() {
			return Config{}, fieldErr(0, fmt.Errorf("autoconf %q with a netmask or gateway needs a client address", cfg.Autoconf))
		}
		// ip=::::::off: autoconfiguration off and no address.
		cfg.Mode = ModeOff
	}
	if client.IsValid() {
		if bits < 0 {
			bits = classfulBits(client)
		}
		cfg.Address = netip.PrefixFrom(client, bits)
		if cfg.Gateway.IsValid() && cfg.Mode == ModeStatic && !cfg.Address.Masked().Contains(cfg.Gateway) {
			return Config{}, fieldErr(2, fmt.Errorf("gateway is outside the client network %s", cfg.Address.Masked()))
		}
	}
	return cfg, nil
}

// autoconfMode maps the autoconf word (or the whole one-word ip= value).
func autoconfMode(word string) (Mode, error) {
	switch strings.ToLower(word) {
	case "", "on", "any", "dhcp", "bootp", "both":
		return ModeDHCP, nil
	case "off", "none":
		return ModeStatic, nil
	case "rarp":
		return "", fmt.Errorf("RARP is not supported (use dhcp, or off with a static address)")
	default:
		return "", fmt.Errorf("unknown autoconf value (want off, none, on, any, dhcp, bootp or both)")
	}
}

func optionalAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("not a dotted-quad IPv4 address")
	}
	if a.IsUnspecified() {
		// The kernel treats 0.0.0.0 as "not given".
		return netip.Addr{}, nil
	}
	return a, nil
}

// parseNetmask accepts a dotted-quad netmask with contiguous ones.
func parseNetmask(s string) (int, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("not a dotted-quad netmask (e.g. 255.255.255.0)")
	}
	b := a.As4()
	m := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for m&(1<<31) != 0 {
		ones++
		m <<= 1
	}
	if m != 0 {
		return 0, fmt.Errorf("netmask bits are not contiguous")
	}
	return ones, nil
}

// classfulBits is the mask the kernel derives when netmask is empty.
func classfulBits(a netip.Addr) int {
	first := a.As4()[0]
	switch {
	case first < 128:
		return 8
	case first < 192:
		return 16
	default:
		return 24
	}
}
