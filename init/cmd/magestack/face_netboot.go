package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"magestack/firmware/dhcpd"
	"magestack/firmware/netboot"
)

func netbootMain(args []string) int {
	if len(args) > 0 && args[0] == "status" {
		return netbootStatus(args[1:])
	}
	fs := flag.NewFlagSet("netboot", flag.ContinueOnError)
	var (
		opts    netboot.Options
		mode    = fs.String("mode", "full", "DHCP mode: full (hand out addresses) or proxy (boot information only, next to another DHCP server)")
		addr    = fs.String("address", "", "server address on the interface (default: its first IPv4 address)")
		poolArg = fs.String("range", "", "full mode: address pool FIRST-LAST (default: upper half of the interface's subnet)")
		router  = fs.String("router", "", "full mode: default gateway handed to clients")
	)
	fs.StringVar(&opts.Interface, "interface", "", "provisioning network interface (required)")
	fs.StringVar(&opts.StackFile, "stack", "", "stack file hosts are looked up in by MAC (required)")
	fs.StringVar(&opts.ImageDir, "image", "build", "directory holding vmlinuz and initramfs.img")
	fs.StringVar(&opts.RoleImageDir, "images", "build/images", "directory holding the role images and their manifest.json (make images), served to hosts under /images/; without a manifest there (and the flag left at its default) role images are not served")
	fs.StringVar(&opts.BootDir, "bootfiles", "/usr/lib/ipxe", "directory holding undionly.kpxe and ipxe.efi")
	fs.IntVar(&opts.HTTPPort, "http-port", 8080, "HTTP port for scripts and images")
	fs.StringVar(&opts.SecretFile, "secret", "", "the stack secret (magestack secrets init) handed to known hosts as an initrd; without it only a one-host stack's host makes its own")
	fs.BoolVar(&opts.Discover, "discover", false, "boot unknown machines into discovery (reports their hardware); default: ignore them")
	fs.StringVar(&opts.ExtraCmdline, "cmdline", "", "extra kernel arguments for every host")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: magestack netboot --interface IF --stack stack.yaml --image build/ [flags]\n       magestack netboot status [--server URL]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "magestack netboot: "+format+"\n", a...)
		return 2
	}
	if opts.Interface == "" || opts.StackFile == "" {
		fs.Usage()
		return fail("--interface and --stack are required")
	}
	opts.Mode = dhcpd.Mode(*mode)
	fs.Visit(func(f *flag.Flag) { opts.RequireRoleImages = opts.RequireRoleImages || f.Name == "images" })
	var err error
	if *addr != "" {
		if opts.Address, err = netip.ParseAddr(*addr); err != nil {
			return fail("--address: %v", err)
		}
	}
	if *poolArg != "" {
		first, last, ok := strings.Cut(*poolArg, "-")
		a, err1 := netip.ParseAddr(first)
		b, err2 := netip.ParseAddr(last)
		if !ok || err1 != nil || err2 != nil {
			return fail("--range %q: want FIRST-LAST, e.g. 10.0.0.100-10.0.0.199", *poolArg)
		}
		opts.PoolFirst, opts.PoolLast = a, b
	}
	if *router != "" {
		if opts.Router, err = netip.ParseAddr(*router); err != nil {
			return fail("--router: %v", err)
		}
	}
	opts.Out = os.Stdout
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv, err := netboot.New(opts)
	if err != nil {
		return fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("magestack netboot: %s mode on %s, scripts and images at %s (Ctrl-C stops)\n", opts.Mode, opts.Interface, srv.BaseURL())
	if u := srv.ImagesURL(); u != "" {
		fmt.Printf("magestack netboot: role images and their manifest at %s\n", u)
	}
	if err := srv.Run(ctx); err != nil {
		return fail("%v", err)
	}
	return 0
}

func netbootStatus(args []string) int {
	fs := flag.NewFlagSet("netboot status", flag.ContinueOnError)
	server := fs.String("server", "http://127.0.0.1:8080", "the boot server's HTTP address")
	out := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(*server, "/") + "/status")
	if err != nil {
		fmt.Fprintf(os.Stderr, "magestack netboot status: is the boot server running at %s? %v\n", *server, err)
		return 1
	}
	defer resp.Body.Close()
	var hosts []netboot.HostProgress
	if err := json.NewDecoder(resp.Body).Decode(&hosts); err != nil {
		fmt.Fprintf(os.Stderr, "magestack netboot status: bad answer from %s: %v\n", *server, err)
		return 1
	}
	if *out == "json" {
		writeJSON(os.Stdout, hosts)
		return 0
	}
	netboot.WriteTable(os.Stdout, hosts)
	return 0
}
