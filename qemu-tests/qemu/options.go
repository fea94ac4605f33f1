package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Firmware selects what runs before the kernel.
type Firmware string

const (
	BIOS Firmware = ""     // SeaBIOS, QEMU's default
	UEFI Firmware = "uefi" // OVMF
)

// OVMFPath is Debian's OVMF image (package ovmf / qemu-system-data).
const OVMFPath = "/usr/share/qemu/OVMF.fd"

// Options describes one VM. Zero values pick sensible defaults; only Kernel
// (or a network/disk boot order) is needed.
type Options struct {
	Name   string // names the VM in logs and artefacts; default "vm"
	Kernel string // -kernel; empty for firmware boot (PXE, disk)
	Initrd string
	Append string // kernel command line; "console=ttyS0" is added if absent

	Memory  int    // MiB, default 1024
	SMP     int    // default 1
	Machine string // -machine, default QEMU's (pc)

	NICs   []NIC
	Drives []Drive

	Firmware Firmware
	Boot     string // -boot order=..., e.g. "n" for PXE

	RNG      bool // virtio-rng-pci fed from the host's /dev/urandom
	Watchdog bool // i6300esb; the guest is reset when it stops feeding it
	NoReboot bool // a guest reboot ends QEMU instead (-no-reboot)

	// Serials adds serial ports ttyS1..ttyS<Serials> (at most 3), each its
	// own stream (VM.Serial): a results channel apart from the console.
	Serials int

	Devices   []string // extra -device values
	ExtraArgs []string // appended verbatim

	// NetNS runs QEMU inside this named network namespace (as made by
	// NewNet) so its taps can be opened.
	NetNS string

	// StartTimeout bounds QEMU's start (QMP socket ready); scaled. Default 30s.
	StartTimeout time.Duration
}

// NIC is one virtio network card: either user-mode networking (with host
// port forwards) or a tap device that already exists.
type NIC struct {
	ID  string // netdev id, used by SetLink; default net<i>
	MAC string // default 52:54:00:12:34:<0x56+i> (the default stack's dh1): set it when VMs share a network

	User    bool     // user-mode (slirp) networking
	HostFwd []string // with User: "tcp:127.0.0.1:8080-:80"
	Tap     string   // tap device name (in the VM's NetNS)
	// UDP and UDPPeer make a socket netdev: each frame is one UDP datagram
	// sent from UDP (QEMU binds it) to UDPPeer, in the VM's NetNS. Net.AddCable
	// sets both (Cable.NIC).
	UDP, UDPPeer string

	Model string // default virtio-net-pci
	// ROM is the option ROM used for PXE: "" keeps QEMU's default (iPXE
	// from ipxe-qemu), "none" disables it, anything else is a file.
	ROM string
	// BootIndex, when > 0, puts this NIC in the firmware boot order.
	BootIndex int
}

// Drive is a virtio disk.
type Drive struct {
	File     string
	Format   string // raw (default) or qcow2
	ReadOnly bool
	Serial   string // shows in /dev/disk/by-id
}

// args returns QEMU's command line (without the binary) for a VM whose
// private files live in dir.
func (o Options) args(dir string) ([]string, error) {
	if o.Kernel == "" && o.Boot == "" && len(o.Drives) == 0 {
		return nil, errors.New("options: nothing to boot: set Kernel, Boot or Drives")
	}
	if o.Initrd != "" && o.Kernel == "" {
		return nil, errors.New("options: Initrd needs Kernel")
	}
	mem := o.Memory
	if mem == 0 {
		mem = 1024
	}
	smp := o.SMP
	if smp == 0 {
		smp = 1
	}
	a := []string{
		"-name", o.name(),
		"-accel", "tcg",
		// The default qemu64 CPU has no RDRAND: early getrandom() calls
		// (Go package init reading crypto/rand) then wait ~1 s for the
		// kernel's entropy. Real servers have it; so does "max".
		"-cpu", "max",
		"-m", fmt.Sprint(mem),
		"-smp", fmt.Sprint(smp),
		// -nographic with an explicit serial: the monitor would otherwise
		// claim stdio too, so it is turned off (QMP is the control path).
		"-nographic", "-monitor", "none",
		"-chardev", "stdio,id=con0,signal=off",
		"-serial", "chardev:con0",
		"-qmp", "unix:" + qmpPath(dir) + ",server=on,wait=off",
	}
	if o.Serials < 0 || o.Serials > 3 {
		return nil, fmt.Errorf("options: Serials=%d: the PC has ttyS1..ttyS3 at most", o.Serials)
	}
	for i := 1; i <= o.Serials; i++ {
		// wait=on: QEMU starts the guest only once the harness is connected,
		// so nothing written early is lost.
		a = append(a, "-chardev", fmt.Sprintf("socket,id=ser%d,path=%s,server=on,wait=on", i, serialPath(dir, i)),
			"-serial", fmt.Sprintf("chardev:ser%d", i))
	}
	if o.Machine != "" {
		a = append(a, "-machine", o.Machine)
	}
	switch o.Firmware {
	case BIOS:
	case UEFI:
		if _, err := os.Stat(OVMFPath); err != nil {
			return nil, fmt.Errorf("options: UEFI firmware: %w (apt-get install ovmf)", err)
		}
		a = append(a, "-bios", OVMFPath)
	default:
		return nil, fmt.Errorf("options: unknown firmware %q", o.Firmware)
	}
	if o.Kernel != "" {
		a = append(a, "-kernel", o.Kernel)
		cmdline := o.Append
		if !strings.Contains(" "+cmdline, " console=") {
			cmdline = strings.TrimSpace("console=ttyS0 " + cmdline)
		}
		a = append(a, "-append", cmdline)
	}
	if o.Initrd != "" {
		a = append(a, "-initrd", o.Initrd)
	}
	if o.Boot != "" {
		a = append(a, "-boot", "order="+o.Boot)
	}
	if len(o.NICs) == 0 {
		// QEMU adds an e1000 on user networking when no NIC is named.
		a = append(a, "-nic", "none")
	}
	for i, n := range o.NICs {
		na, err := n.args(i)
		if err != nil {
			return nil, err
		}
		a = append(a, na...)
	}
	for i, d := range o.Drives {
		if d.File == "" {
			return nil, fmt.Errorf("options: drive %d: no file", i)
		}
		format := d.Format
		if format == "" {
			format = "raw"
		}
		spec := fmt.Sprintf("file=%s,format=%s,if=virtio,cache=unsafe", d.File, format)
		if d.ReadOnly {
			spec += ",readonly=on"
		}
		if d.Serial != "" {
			spec += ",serial=" + d.Serial
		}
		a = append(a, "-drive", spec)
	}
	if o.RNG {
		a = append(a, "-object", "rng-random,id=rng0,filename=/dev/urandom",
			"-device", "virtio-rng-pci,rng=rng0")
	}
	if o.Watchdog {
		a = append(a, "-device", "i6300esb", "-action", "watchdog=reset")
	}
	if o.NoReboot {
		a = append(a, "-no-reboot")
	}
	for _, d := range o.Devices {
		a = append(a, "-device", d)
	}
	return append(a, o.ExtraArgs...), nil
}

func serialPath(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("ttyS%d.sock", i)) }

func (o Options) name() string {
	if o.Name == "" {
		return "vm"
	}
	return o.Name
}

// id is the netdev id SetLink takes.
func (n NIC) id(i int) string {
	if n.ID != "" {
		return n.ID
	}
	return fmt.Sprintf("net%d", i)
}

func (n NIC) args(i int) ([]string, error) {
	id := n.id(i)
	var netdev string
	udp := n.UDP != "" || n.UDPPeer != ""
	switch {
	case n.User && n.Tap != "":
		return nil, fmt.Errorf("options: NIC %s: both user networking and tap %q", id, n.Tap)
	case udp && (n.User || n.Tap != ""):
		return nil, fmt.Errorf("options: NIC %s: a UDP socket netdev cannot also be user networking or tap %q", id, n.Tap)
	case udp && (n.UDP == "" || n.UDPPeer == ""):
		return nil, fmt.Errorf("options: NIC %s: a UDP socket netdev needs both UDP (%q) and UDPPeer (%q)", id, n.UDP, n.UDPPeer)
	case udp:
		netdev = fmt.Sprintf("socket,id=%s,udp=%s,localaddr=%s", id, n.UDPPeer, n.UDP)
	case n.User:
		netdev = "user,id=" + id
		for _, f := range n.HostFwd {
			netdev += ",hostfwd=" + f
		}
	case n.Tap != "":
		netdev = fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, n.Tap)
	default:
		return nil, fmt.Errorf("options: NIC %s: neither User, Tap nor UDP set", id)
	}
	model := n.Model
	if model == "" {
		model = "virtio-net-pci"
	}
	mac := n.MAC
	if mac == "" {
		mac = fmt.Sprintf("52:54:00:12:34:%02x", 0x56+i)
	}
	dev := fmt.Sprintf("%s,netdev=%s,mac=%s", model, id, mac)
	switch n.ROM {
	case "":
	case "none":
		dev += ",romfile="
	default:
		dev += ",romfile=" + n.ROM
	}
	if n.BootIndex > 0 {
		dev += fmt.Sprintf(",bootindex=%d", n.BootIndex)
	}
	return []string{"-netdev", netdev, "-device", dev}, nil
}
