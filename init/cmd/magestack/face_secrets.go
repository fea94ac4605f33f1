package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"magestack/init/clusterauth"
	"magestack/init/stacksecret"
)

func secretsMain(args []string) int { return secretsFace(args, os.Stdout, os.Stderr) }

// secretsFace makes and inspects the stack secret, the one value every
// password, certificate and key of the stack derives from. The operator
// makes it once per stack, keeps it next to (never in) the stack's Git
// repository, and hands it to the netboot server or puts it in each host's
// image; every host of the stack needs the same file.
func secretsFace(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "init" && args[0] != "id" && args[0] != "member") {
		fmt.Fprintln(stderr, "usage: magestack secrets init -o FILE [-stack NAME] [-force] | id FILE | member NAME -secret FILE -o OUT")
		return 2
	}
	if args[0] == "member" {
		return secretsMember(args[1:], stderr)
	}
	if args[0] == "id" {
		if len(args) != 2 {
			fmt.Fprintln(stderr, "usage: magestack secrets id FILE")
			return 2
		}
		s, err := stacksecret.Load(args[1])
		if err != nil {
			fmt.Fprintln(stderr, "magestack secrets id:", err)
			return 1
		}
		fmt.Fprintln(stdout, s.ID())
		return 0
	}
	fs := flag.NewFlagSet("secrets init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "where to write the new secret file (required)")
	stack := fs.String("stack", "", "the stack's name, noted in the file's comment")
	force := fs.Bool("force", false, "replace an existing file (every host's data made with the old one becomes unreadable to its roles)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *out == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "magestack secrets init: -o FILE is required and takes no other arguments")
		return 2
	}
	if _, err := os.Stat(*out); err == nil && !*force {
		fmt.Fprintf(stderr, "magestack secrets init: %s exists; a stack keeps its secret for life (-force replaces it)\n", *out)
		return 1
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(stderr, "magestack secrets init:", err)
		return 1
	}
	s, err := stacksecret.New()
	if err == nil {
		err = s.Save(*out, *stack)
	}
	if err != nil {
		fmt.Fprintln(stderr, "magestack secrets init:", err)
		return 1
	}
	fmt.Fprintf(stderr, "magestack secrets init: wrote %s (id %s); keep it out of Git\n", *out, s.ID())
	return 0
}

// secretsMember is `magestack secrets member NAME -secret FILE -o OUT`:
// the cluster credentials of member NAME (its certificate and key, the
// cluster CA, the heartbeat key), derived from the stack secret, for a
// member that must not hold the secret itself: the witness.
func secretsMember(args []string, stderr io.Writer) int {
	const usage = "usage: magestack secrets member NAME -secret FILE -o OUT (NAME is witness, or a host name)"
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("secrets member", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secretPath := fs.String("secret", "", "the stack secret file (required)")
	out := fs.String("o", "", "where to write the member's credentials (required; root-only on the member's machine)")
	force := fs.Bool("force", false, "replace an existing file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() != 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	if name == "" || *secretPath == "" || *out == "" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	if err := writeMemberCredentials(name, *secretPath, *out, *force); err != nil {
		fmt.Fprintln(stderr, "magestack secrets member:", err)
		return 1
	}
	fmt.Fprintf(stderr, "magestack secrets member: wrote %s's cluster credentials to %s; copy them to its machine only\n", name, *out)
	return 0
}

func writeMemberCredentials(name, secretPath, out string, force bool) error {
	s, err := stacksecret.Load(secretPath)
	if err != nil {
		return err
	}
	c, err := clusterauth.Derive(s, name)
	if err != nil {
		return err
	}
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(out, flags, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists (-force replaces it)", out)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", out, err)
	}
	return f.Close()
}
