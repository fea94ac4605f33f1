package netboot

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"magestack/init/imagestore"
	"magestack/init/stackfile"
)

// Identity is what the boot server knows of a host from the stack file.
type Identity struct {
	Host    stackfile.Host
	Index   int
	Cmdline string
}

// BootArgs builds the kernel command line a host boots with: its name, where
// its stack file comes from, where to report progress, where its role
// images are served (imagesURL, "" for none), and its address when the
// stack file fixes one (kernel ip= syntax; else the host uses DHCP).
func BootArgs(stack *stackfile.Stack, h stackfile.Host, baseURL, imagesURL string, extra string) string {
	// BOOTIF (pxelinux's convention, filled in by iPXE) names the boot NIC.
	args := []string{"console=ttyS0", "quiet", "panic=-1", "BOOTIF=01-${netX/mac:hexhyp}", "magestack.host=" + h.Name}
	src := stack.Config.Source
	if src == "" {
		src = baseURL + "/stack.yaml"
	}
	args = append(args, "magestack.config="+src, "magestack.report="+baseURL+"/report")
	if imagesURL != "" {
		args = append(args, imagestore.CmdlineKey+"="+imagesURL)
	}
	if h.Address.IsValid() {
		mask := net.IP(net.CIDRMask(h.Address.Bits(), 32)).String()
		gw := ""
		if h.Gateway.IsValid() {
			gw = h.Gateway.String()
		}
		args = append(args, fmt.Sprintf("ip=%s::%s:%s:%s::off", h.Address.Addr(), gw, mask, h.Name))
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}

// Script is the iPXE script that boots cmdline from the image URLs. With
// secretURL, the host also loads its stack secret as a first initrd (an
// uncompressed cpio the kernel unpacks before the initramfs: the LZ4 legacy
// initramfs has no end marker, so nothing may follow it).
func Script(title, baseURL, cmdline, secretURL string) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo magestack netboot: %s\n", title)
	initrds := "initrd=initramfs.img"
	if secretURL != "" {
		initrds = "initrd=secret.cpio " + initrds
	}
	fmt.Fprintf(&b, "kernel %s/image/vmlinuz %s %s || goto failed\n", baseURL, initrds, cmdline)
	if secretURL != "" {
		fmt.Fprintf(&b, "initrd --name secret.cpio %s || goto failed\n", secretURL)
	}
	fmt.Fprintf(&b, "initrd %s/image/initramfs.img || goto failed\n", baseURL)
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\necho magestack netboot: boot failed, retrying in 10 s\nsleep 10\nchain --replace --autofree ${filename} || reboot\n")
	return b.String()
}

// lookupMAC finds the host whose boot NIC is mac.
func lookupMAC(stack *stackfile.Stack, mac net.HardwareAddr) (stackfile.Host, int, bool) {
	if h, i, ok := stack.HostByMAC(mac.String()); ok {
		return *h, i, true
	}
	return stackfile.Host{}, -1, false
}

// reservations are the fixed addresses hosts ask for, for the DHCP pool.
func reservations(stack *stackfile.Stack, subnet netip.Prefix) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for _, h := range stack.Hosts {
		if h.Address.IsValid() && subnet.Contains(h.Address.Addr()) {
			out[h.MAC] = h.Address.Addr()
		}
	}
	return out
}
