package main

// `magestack firewall show|check|allow`: the live nftables table read back
// through netlink (never the nft binary) and compared with the stack file.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"magestack/init/firewall"
	"magestack/init/stackfile"
)

// fwStackPath is where a host keeps its current stack file.
const fwStackPath = "/etc/magestack/stack.yaml"

func firewallMain(args []string) int { return firewallFace(args, os.Stdout, os.Stderr) }

func firewallFace(args []string, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, `usage: magestack firewall show [-o json]           live table inet magestack, in nft syntax (or JSON with counters)
       magestack firewall check [-config FILE] [-host NAME] [-public IF,...]
                                                  exit 1 and list differences when the live table drifts
                                                  from what this host applied (or, with flags, from FILE)
       magestack firewall allow add|remove PREFIX...   edit the public allow-list in place`)
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fw := firewall.New()
	switch args[0] {
	case "show":
		fs := flag.NewFlagSet("firewall show", flag.ContinueOnError)
		fs.SetOutput(stderr)
		output := fs.String("o", "text", "output: text (nft syntax) or json (rules with their counters)")
		if err := fs.Parse(args[1:]); err != nil || (*output != "text" && *output != "json") {
			return usage()
		}
		rs, err := fw.Read(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "magestack firewall show:", err)
			return 1
		}
		if *output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(firewall.ViewOf(rs)); err != nil {
				fmt.Fprintln(stderr, "magestack firewall show:", err)
				return 1
			}
			return 0
		}
		fmt.Fprint(stdout, firewall.Render(rs))
		return 0
	case "check":
		fs := flag.NewFlagSet("firewall check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		config := fs.String("config", "", "stack file (default "+fwStackPath+" if present, else the built-in default stack)")
		host := fs.String("host", "", "this host's name in the stack (default: the hostname)")
		public := fs.String("public", "", "comma-separated uplink interfaces (default: those carrying the default route)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		var diffs []string
		var err error
		if *config == "" && *public == "" && *host == "" {
			// What the running host applied, from whatever config source.
			if want, rerr := os.ReadFile(firewall.DesiredPath); rerr == nil {
				if diffs, err = fw.CheckText(ctx, string(want)); err != nil {
					fmt.Fprintln(stderr, "magestack firewall check:", err)
					return 2
				}
				return fwReport(stdout, diffs, firewall.DesiredPath)
			}
		}
		stack, err := fwLoadStack(*config)
		if err != nil {
			fmt.Fprintln(stderr, "magestack firewall check:", err)
			return 2
		}
		name := *host
		if name == "" {
			name, _ = os.Hostname()
		}
		var ifaces []string
		if *public != "" {
			ifaces = strings.Split(*public, ",")
		} else if ifaces, err = firewall.PublicIfaces(); err != nil {
			fmt.Fprintln(stderr, "magestack firewall check:", err)
			return 2
		}
		want, err := firewall.Build(stack, firewall.HostView{PublicIfaces: ifaces, HostName: name})
		if err != nil {
			fmt.Fprintln(stderr, "magestack firewall check:", err)
			return 2
		}
		if diffs, err = fw.Check(ctx, want); err != nil {
			fmt.Fprintln(stderr, "magestack firewall check:", err)
			return 2
		}
		return fwReport(stdout, diffs, "the stack file")
	case "allow":
		if len(args) < 3 || (args[1] != "add" && args[1] != "remove") {
			return usage()
		}
		var prefixes []netip.Prefix
		for _, a := range args[2:] {
			p, err := parsePrefixOrAddr(a)
			if err != nil {
				fmt.Fprintf(stderr, "magestack firewall allow: %q: %v\n", a, err)
				return 2
			}
			prefixes = append(prefixes, p)
		}
		var err error
		if args[1] == "add" {
			err = fw.UpdateAllow(ctx, prefixes, nil)
		} else {
			err = fw.UpdateAllow(ctx, nil, prefixes)
		}
		if err != nil {
			fmt.Fprintln(stderr, "magestack firewall allow:", err)
			return 1
		}
		return 0
	}
	return usage()
}

// fwReport prints the check's verdict: exit 0 in sync, 1 on drift.
func fwReport(w io.Writer, diffs []string, against string) int {
	if len(diffs) == 0 {
		fmt.Fprintf(w, "firewall: live table matches %s\n", against)
		return 0
	}
	fmt.Fprintf(w, "firewall: live table differs from %s (- wanted, + live):\n", against)
	for _, d := range diffs {
		fmt.Fprintln(w, "  "+d)
	}
	return 1
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// fwLoadStack reads the stack file at path; "" means the host's file if
// present, else the built-in default.
func fwLoadStack(path string) (*stackfile.Stack, error) {
	if path == "" {
		if _, err := os.Stat(fwStackPath); errors.Is(err, os.ErrNotExist) {
			return stackfile.Default(), nil
		}
		path = fwStackPath
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return stackfile.Parse(path, data)
}
