// Package dhcpd is magestack netboot's DHCPv4 server: full DHCP for an
// isolated provisioning network, or proxyDHCP (boot information only) next to
// an existing DHCP server. It decides what each client boots from its
// firmware (option 93, user class 77, option 175) and its MAC.
package dhcpd

import (
	"bytes"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Firmware is what is asking for a boot.
type Firmware int

const (
	// FirmwareUnsupported is a client we have nothing for (e.g. ARM).
	FirmwareUnsupported Firmware = iota
	// FirmwareBIOS is legacy PXE: it gets undionly.kpxe over TFTP.
	FirmwareBIOS
	// FirmwareUEFI is UEFI PXE on x86-64: it gets ipxe.efi over TFTP.
	FirmwareUEFI
	// FirmwareIPXE is iPXE itself (ROM or chainloaded): it gets the HTTP
	// boot script.
	FirmwareIPXE
)

func (f Firmware) String() string {
	switch f {
	case FirmwareBIOS:
		return "bios"
	case FirmwareUEFI:
		return "uefi"
	case FirmwareIPXE:
		return "ipxe"
	}
	return "unsupported"
}

// optionIPXEEncap is iPXE's encapsulated options (175): present only when
// iPXE is the client.
const optionIPXEEncap = 175

// Classify tells the client's firmware from its request.
func Classify(req *dhcpv4.DHCPv4) Firmware {
	// iPXE sends user class "iPXE" as a raw string, not RFC 3004 framing.
	uc := req.Options.Get(dhcpv4.OptionUserClassInformation)
	if bytes.Contains(uc, []byte("iPXE")) || req.Options.Has(dhcpv4.GenericOptionCode(optionIPXEEncap)) {
		return FirmwareIPXE
	}
	archs := req.ClientArch()
	if len(archs) == 0 {
		// A PXE client without option 93 is a legacy BIOS one.
		if strings.HasPrefix(req.ClassIdentifier(), "PXEClient") {
			return FirmwareBIOS
		}
		return FirmwareUnsupported
	}
	switch archs[0] {
	case iana.INTEL_X86PC:
		return FirmwareBIOS
	case iana.EFI_X86_64, iana.EFI_BC:
		return FirmwareUEFI
	}
	return FirmwareUnsupported
}

// IsPXE reports whether the request comes from a network-boot client
// (option 60 "PXEClient..." or iPXE).
func IsPXE(req *dhcpv4.DHCPv4) bool {
	return strings.HasPrefix(req.ClassIdentifier(), "PXEClient") || Classify(req) == FirmwareIPXE
}
