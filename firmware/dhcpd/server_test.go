package dhcpd

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var (
	knownMAC   = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	unknownMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	serverIP   = netip.MustParseAddr("10.77.0.1")
)

func decider(mac net.HardwareAddr, fw Firmware) (string, bool) {
	if mac.String() != knownMAC.String() {
		return "", false
	}
	switch fw {
	case FirmwareBIOS:
		return "undionly.kpxe", true
	case FirmwareUEFI:
		return "ipxe.efi", true
	case FirmwareIPXE:
		return "http://10.77.0.1:8080/boot/" + mac.String() + ".ipxe", true
	}
	return "", true
}

func newFull(t testing.TB) *Server {
	t.Helper()
	pool, err := NewPool(netip.MustParseAddr("10.77.0.100"), netip.MustParseAddr("10.77.0.101"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Mode: ModeFull, ServerIP: serverIP, Pool: pool,
		Subnet: netip.MustParsePrefix("10.77.0.0/24"), LeaseTime: time.Minute, Boot: decider})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func discover(t *testing.T, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	d, err := dhcpv4.NewDiscovery(mac, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	pxeClass = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))
	userIPXE = dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		mods []dhcpv4.Modifier
		want Firmware
	}{
		{"legacy bios", []dhcpv4.Modifier{pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}, FirmwareBIOS},
		{"pxe without arch", []dhcpv4.Modifier{pxeClass}, FirmwareBIOS},
		{"uefi x64", []dhcpv4.Modifier{pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}, FirmwareUEFI},
		{"uefi bc", []dhcpv4.Modifier{pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC))}, FirmwareUEFI},
		{"ipxe user class", []dhcpv4.Modifier{pxeClass, userIPXE, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}, FirmwareIPXE},
		{"ipxe option 175", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{19, 1, 1}))}, FirmwareIPXE},
		{"arm64 efi", []dhcpv4.Modifier{pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_ARM64))}, FirmwareUnsupported},
		{"plain client", nil, FirmwareUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(discover(t, knownMAC, tc.mods...)); got != tc.want {
				t.Errorf("Classify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFullModeExchange(t *testing.T) {
	s := newFull(t)
	offer, err := s.Reply(discover(t, knownMAC, pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))))
	if err != nil || offer == nil {
		t.Fatalf("no offer: %v", err)
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer || offer.YourIPAddr.String() != "10.77.0.100" {
		t.Fatalf("offer = %s", offer.Summary())
	}
	if offer.BootFileName != "ipxe.efi" || offer.ServerIPAddr.String() != "10.77.0.1" {
		t.Errorf("boot file %q next-server %v, want ipxe.efi from 10.77.0.1", offer.BootFileName, offer.ServerIPAddr)
	}
	if offer.ClassIdentifier() != "" {
		t.Errorf("full-mode offer carries option 60 %q: UEFI would take it for a BINL offer", offer.ClassIdentifier())
	}
	if got := offer.IPAddressLeaseTime(0); got != time.Minute {
		t.Errorf("lease time option = %v, want 1m", got)
	}
	if !offer.ServerIdentifier().Equal(net.ParseIP("10.77.0.1")) {
		t.Errorf("server identifier = %v", offer.ServerIdentifier())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := s.Reply(req)
	if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("want ACK, got %v (%v)", ack, err)
	}
	if ack.YourIPAddr.String() != "10.77.0.100" {
		t.Errorf("ack address %v", ack.YourIPAddr)
	}

	// A second client gets the next address; a third finds the pool full.
	other := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
	pool, _ := NewPool(netip.MustParseAddr("10.77.0.100"), netip.MustParseAddr("10.77.0.100"), nil)
	s2, _ := New(Config{Mode: ModeFull, ServerIP: serverIP, Pool: pool, Subnet: netip.MustParsePrefix("10.77.0.0/24"),
		Boot: func(net.HardwareAddr, Firmware) (string, bool) { return "", true }})
	if o, _ := s2.Reply(discover(t, knownMAC)); o == nil {
		t.Fatal("first client got no offer")
	}
	if o, err := s2.Reply(discover(t, other)); o != nil || err == nil {
		t.Fatalf("exhausted pool: offer %v err %v, want no offer and an error", o, err)
	}
}

func TestRequestForForeignAddressIsNAKed(t *testing.T) {
	s := newFull(t)
	req, _ := dhcpv4.NewDiscovery(knownMAC)
	req.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeRequest))
	req.UpdateOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.77.0.250")))
	resp, _ := s.Reply(req)
	if resp == nil || resp.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("want NAK, got %v", resp)
	}
	req.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.77.0.9")))
	if resp, _ := s.Reply(req); resp != nil {
		t.Fatalf("request for another server answered: %s", resp.Summary())
	}
}

func TestUnknownMACGetsNothing(t *testing.T) {
	s := newFull(t)
	if resp, _ := s.Reply(discover(t, unknownMAC, pxeClass)); resp != nil {
		t.Fatalf("unknown MAC answered: %s", resp.Summary())
	}
}

func TestProxyMode(t *testing.T) {
	s, err := New(Config{Mode: ModeProxy, ServerIP: serverIP, Boot: decider})
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := s.Reply(discover(t, knownMAC)); resp != nil {
		t.Fatalf("proxy answered a non-PXE client: %s", resp.Summary())
	}
	resp, err := s.Reply(discover(t, knownMAC, pxeClass, userIPXE))
	if err != nil || resp == nil {
		t.Fatalf("no proxy offer: %v", err)
	}
	if !resp.YourIPAddr.IsUnspecified() {
		t.Errorf("proxy offer carries an address %v", resp.YourIPAddr)
	}
	if resp.BootFileName != "http://10.77.0.1:8080/boot/52:54:00:00:00:01.ipxe" {
		t.Errorf("boot file %q", resp.BootFileName)
	}
	if resp.ClassIdentifier() != "PXEClient" {
		t.Errorf("option 60 = %q, want PXEClient", resp.ClassIdentifier())
	}
	if resp.IPAddressLeaseTime(0) != 0 {
		t.Errorf("proxy offer carries a lease time")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"bad mode", Config{Mode: "half", ServerIP: serverIP, Boot: decider}},
		{"no server ip", Config{Mode: ModeProxy, Boot: decider}},
		{"full without pool", Config{Mode: ModeFull, ServerIP: serverIP, Boot: decider}},
		{"no decider", Config{Mode: ModeProxy, ServerIP: serverIP}},
	} {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		}
	}
}

func FuzzReply(f *testing.F) {
	for _, d := range []*dhcpv4.DHCPv4{
		must(dhcpv4.NewDiscovery(knownMAC, pxeClass, userIPXE)),
		must(dhcpv4.NewDiscovery(knownMAC, pxeClass, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))),
	} {
		f.Add(d.ToBytes())
	}
	full := newFull(f)
	proxy, _ := New(Config{Mode: ModeProxy, ServerIP: serverIP, Boot: decider})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		full.Reply(req)
		proxy.Reply(req)
	})
}

func must(d *dhcpv4.DHCPv4, err error) *dhcpv4.DHCPv4 {
	if err != nil {
		panic(err)
	}
	return d
}
