package qemu

import (
	"strings"
	"testing"
)

// argAfter returns the values following each occurrence of flag.
func argAfter(args []string, flag string) []string {
	var vals []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			vals = append(vals, args[i+1])
		}
	}
	return vals
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		want    map[string][]string // flag -> values, each must appear
		absent  []string
		wantErr string
	}{
		{
			name: "kernel defaults",
			opts: Options{Kernel: "/k", Initrd: "/i", Append: "quiet"},
			want: map[string][]string{
				"-accel": {"tcg"}, "-m": {"1024"}, "-smp": {"1"}, "-kernel": {"/k"}, "-initrd": {"/i"},
				"-append": {"console=ttyS0 quiet"}, "-nic": {"none"}, "-serial": {"chardev:con0"},
				"-monitor": {"none"}, "-qmp": {"unix:/d/qmp.sock,server=on,wait=off"},
			},
			absent: []string{"-bios", "-boot", "-netdev"},
		},
		{
			name: "console given is kept",
			opts: Options{Kernel: "/k", Append: "console=ttyS0,115200 quiet"},
			want: map[string][]string{"-append": {"console=ttyS0,115200 quiet"}},
		},
		{
			name: "pxe uefi with tap and user nics",
			opts: Options{Boot: "n", Firmware: UEFI, Memory: 2048, SMP: 2, NICs: []NIC{
				{Tap: "tap0", MAC: "52:54:00:00:00:01", BootIndex: 1},
				{ID: "wan", User: true, HostFwd: []string{"tcp:127.0.0.1:8080-:80"}, ROM: "none"},
			}},
			want: map[string][]string{
				"-boot": {"order=n"}, "-bios": {OVMFPath}, "-m": {"2048"}, "-smp": {"2"},
				"-netdev": {"tap,id=net0,ifname=tap0,script=no,downscript=no", "user,id=wan,hostfwd=tcp:127.0.0.1:8080-:80"},
				"-device": {"virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,bootindex=1", "virtio-net-pci,netdev=wan,mac=52:54:00:12:34:57,romfile="},
			},
			absent: []string{"-kernel", "-nic"},
		},
		{
			name: "drives and devices",
			opts: Options{Kernel: "/k", RNG: true, Watchdog: true, NoReboot: true,
				Drives:  []Drive{{File: "/d.img", ReadOnly: true, Serial: "data"}, {File: "/q", Format: "qcow2"}},
				Devices: []string{"virtio-serial"}, ExtraArgs: []string{"-cpu", "max"}},
			want: map[string][]string{
				"-drive":  {"file=/d.img,format=raw,if=virtio,cache=unsafe,readonly=on,serial=data", "file=/q,format=qcow2,if=virtio,cache=unsafe"},
				"-device": {"virtio-rng-pci,rng=rng0", "i6300esb", "virtio-serial"},
				"-action": {"watchdog=reset"}, "-cpu": {"max"},
			},
		},
		{
			name: "extra serial ports",
			opts: Options{Kernel: "/k", Serials: 2},
			want: map[string][]string{
				"-serial":  {"chardev:con0", "chardev:ser1", "chardev:ser2"},
				"-chardev": {"socket,id=ser1,path=/d/ttyS1.sock,server=on,wait=on", "socket,id=ser2,path=/d/ttyS2.sock,server=on,wait=on"},
			},
		},
		{name: "too many serial ports", opts: Options{Kernel: "/k", Serials: 4}, wantErr: "ttyS1..ttyS3"},
		{name: "nothing to boot", opts: Options{}, wantErr: "nothing to boot"},
		{name: "initrd without kernel", opts: Options{Boot: "n", Initrd: "/i"}, wantErr: "Initrd needs Kernel"},
		{name: "nic without backend", opts: Options{Kernel: "/k", NICs: []NIC{{}}}, wantErr: "neither User, Tap nor UDP"},
		{
			name: "udp socket nic (a Cable)",
			opts: Options{Kernel: "/k", NICs: []NIC{{UDP: "127.0.0.1:4000", UDPPeer: "127.0.0.1:5000", MAC: "52:54:00:00:00:09"}}},
			want: map[string][]string{
				"-netdev": {"socket,id=net0,udp=127.0.0.1:5000,localaddr=127.0.0.1:4000"},
				"-device": {"virtio-net-pci,netdev=net0,mac=52:54:00:00:00:09"},
			},
		},
		{name: "udp nic without peer", opts: Options{Kernel: "/k", NICs: []NIC{{UDP: "127.0.0.1:4000"}}}, wantErr: "needs both UDP"},
		{name: "udp nic and tap", opts: Options{Kernel: "/k", NICs: []NIC{{UDP: "a:1", UDPPeer: "b:2", Tap: "t"}}}, wantErr: "cannot also be"},
		{name: "nic with two backends", opts: Options{Kernel: "/k", NICs: []NIC{{User: true, Tap: "t"}}}, wantErr: "both"},
		{name: "bad firmware", opts: Options{Kernel: "/k", Firmware: "coreboot"}, wantErr: "unknown firmware"},
		{name: "drive without file", opts: Options{Kernel: "/k", Drives: []Drive{{}}}, wantErr: "drive 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, err := tt.opts.args("/d")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for flag, vals := range tt.want {
				got := argAfter(args, flag)
				for _, v := range vals {
					found := false
					for _, g := range got {
						found = found || g == v
					}
					if !found {
						t.Errorf("%s %q missing; have %q", flag, v, got)
					}
				}
			}
			for _, flag := range tt.absent {
				if got := argAfter(args, flag); len(got) > 0 {
					t.Errorf("%s present: %q", flag, got)
				}
			}
		})
	}
}
