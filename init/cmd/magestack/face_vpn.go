package main

// `magestack vpn add-peer NAME`: a new operator's WireGuard client config
// and the stack-file entry that admits it.

import (
	"flag"
	"fmt"
	"io"
	"os"

	"magestack/init/stacksecret"
	"magestack/init/vpn"
)

func vpnMain(args []string) int { return vpnFace(args, os.Stdout, os.Stderr) }

func vpnFace(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "add-peer" {
		fmt.Fprintln(stderr, "usage: magestack vpn add-peer [-config FILE] [-endpoint HOST[:PORT]] [-secret FILE] NAME")
		return 2
	}
	fs := flag.NewFlagSet("vpn add-peer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "stack file (default "+fwStackPath+" if present, else the built-in default stack)")
	endpoint := fs.String("endpoint", "", "address clients connect to (default: public.vip, else the first host's address)")
	secretPath := fs.String("secret", "", "the stack secret file the server's key derives from (default: this host's kept copy)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "magestack vpn add-peer: exactly one NAME")
		return 2
	}
	stack, err := fwLoadStack(*config)
	if err != nil {
		fmt.Fprintln(stderr, "magestack vpn add-peer:", err)
		return 2
	}
	if *secretPath == "" {
		*secretPath = keptSecretPath()
	}
	var secret stacksecret.Secret
	if stack.VPN.PrivateKey == "" {
		if secret, err = stacksecret.Load(*secretPath); err != nil {
			fmt.Fprintln(stderr, "magestack vpn add-peer: the server's key derives from the stack secret:", err)
			return 1
		}
	}
	cfg, err := vpn.FromStack(stack, secret)
	if err != nil {
		fmt.Fprintln(stderr, "magestack vpn add-peer:", err)
		return 1
	}
	ep := *endpoint
	if ep == "" {
		ep = vpn.DefaultEndpoint(stack)
	}
	c, err := vpn.NewClient(stack, cfg, fs.Arg(0), ep)
	if err != nil {
		fmt.Fprintln(stderr, "magestack vpn add-peer:", err)
		return 1
	}
	fmt.Fprint(stdout, c.WGQuick())
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, c.StackSnippet())
	return 0
}
