package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"magestack/init/stacksecret"
)

func secretsMain(args []string) int { return secretsFace(args, os.Stdout, os.Stderr) }

// secretsFace makes and inspects the stack secret, the one value every
// password, certificate and key of the stack derives from. The operator
// makes it once per stack, keeps it next to (never in) the stack's Git
// repository, and hands it to the netboot server or puts it in each host's
// image; every host of the stack needs the same file.
func secretsFace(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "init" && args[0] != "id") {
		fmt.Fprintln(stderr, "usage: magestack secrets init -o FILE [-stack NAME] [-force] | id FILE")
		return 2
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
