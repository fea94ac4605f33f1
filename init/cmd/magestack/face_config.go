package main

// `magestack config validate|show|diff|fetch|history|status|rollback`: the
// operator's view of the stack file and of the revisions a host has kept.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"magestack/init/api"
	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/reconcile"
	"magestack/init/stackfile"
)

func configMain(args []string) int { return configFace(args, os.Stdin, os.Stdout, os.Stderr) }

const configUsage = `usage: magestack config <command> [flags]

  validate FILE...         check stack files; exit 1 listing every problem as file:line:column: field: message
  show [FILE]              the effective stack (defaults filled in) as YAML; default: the last good revision,
                           else the built-in default stack. -instances lists role instances instead
  diff [OLD] NEW           what applying NEW would change (instances, allow-list, firewall, VPN, hosts);
                           OLD defaults to the last good revision. Exit 0: no changes, 1: changes, 2: error
  fetch SOURCE             fetch from a path, http(s) URL or git+URL#ref:path and validate it
  history                  revisions applied, rejected and rolled back, with when and why
  status                   the running revision, the last good one and the last rejected one
  rollback REV             go back to a stored revision (ID or prefix): applied live on a running host,
                           else made the last good one for the next boot
  apply                    fetch the config source now and apply what changed (running host)

flags: -o json (structured output), -dir DIR (config store, default ` + configstore.DefaultDir + `),
       -socket PATH (control API, default ` + api.DefaultSocket + `)
On a running host (the API socket exists), diff with one file compares with the running stack and
rollback/status go through PID 1; otherwise they use the store directory.
FILE may be - for standard input.`

// configFlags parses flags that may come before or after the positional
// arguments.
type configFlags struct {
	output    string
	dir       string
	instances bool
	timeout   time.Duration
	socket    string
}

// live returns an API client when PID 1's socket exists.
func (c *configFlags) live() *api.Client {
	if fi, err := os.Stat(c.socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return api.NewClient(c.socket)
	}
	return nil
}

func parseConfigFlags(cmd string, args []string, stderr io.Writer) (*configFlags, []string, error) {
	c := &configFlags{}
	fs := flag.NewFlagSet("config "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.output, "o", "text", "output format: text, json (show also: yaml)")
	fs.StringVar(&c.dir, "dir", configstore.DefaultDir, "config store directory")
	fs.BoolVar(&c.instances, "instances", false, "show: list role instances, their addresses and hosts")
	fs.DurationVar(&c.timeout, "timeout", configsource.DefaultTimeout, "fetch: time limit")
	fs.StringVar(&c.socket, "socket", api.DefaultSocket, "control API socket of a running host")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch c.output {
	case "text", "json", "yaml", "table":
	default:
		return nil, nil, fmt.Errorf("-o %q: want text or json", c.output)
	}
	return c, pos, nil
}

func configFace(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, configUsage)
		return 2
	}
	cmd := args[0]
	c, pos, err := parseConfigFlags(cmd, args[1:], stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "magestack config:", err)
		}
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "magestack config %s: %v\n", cmd, err)
		return 2
	}
	switch cmd {
	case "validate":
		if len(pos) == 0 {
			return fail(errors.New("name at least one stack file"))
		}
		return configValidate(c, pos, stdin, stdout, stderr)
	case "show":
		if len(pos) > 1 {
			return fail(errors.New("at most one stack file"))
		}
		s, err := configLoad(c, pos, stdin)
		if err != nil {
			return fail(err)
		}
		if err := configShow(c, s, stdout); err != nil {
			return fail(err)
		}
		return 0
	case "diff":
		var oldArgs, newArgs []string
		switch len(pos) {
		case 1:
			if cl := c.live(); cl != nil {
				return configDiffLive(c, cl, pos[0], stdin, stdout, stderr)
			}
			newArgs = pos
		case 2:
			oldArgs, newArgs = pos[:1], pos[1:]
		default:
			return fail(errors.New("want [OLD] NEW"))
		}
		old, err := configLoad(c, oldArgs, stdin)
		if err != nil {
			return fail(fmt.Errorf("old: %w", err))
		}
		new, err := configLoad(c, newArgs, stdin)
		if err != nil {
			return fail(fmt.Errorf("new: %w", err))
		}
		ch, err := stackfile.Diff(old, new)
		if err != nil {
			return fail(err)
		}
		if c.output == "json" {
			writeJSON(stdout, ch)
		} else {
			fmt.Fprint(stdout, ch.String())
		}
		if ch.Empty() {
			return 0
		}
		return 1
	case "fetch":
		if len(pos) != 1 {
			return fail(errors.New("want one SOURCE"))
		}
		return configFetch(c, pos[0], stdout, stderr)
	case "history":
		st, err := configstore.Open(c.dir)
		if err != nil {
			return fail(err)
		}
		h, err := st.History()
		if err != nil {
			return fail(err)
		}
		if c.output == "json" {
			if h == nil {
				h = []configstore.Entry{}
			}
			writeJSON(stdout, h)
			return 0
		}
		if len(h) == 0 {
			fmt.Fprintln(stdout, "no revisions recorded in", c.dir)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WHEN\tRESULT\tREVISION\tSOURCE\tERROR")
		for i := len(h) - 1; i >= 0; i-- {
			e := h[i]
			msg := e.Error
			if msg == "" {
				msg = e.Note
			}
			if j := strings.IndexByte(msg, '\n'); j >= 0 {
				msg = msg[:j] + fmt.Sprintf(" (+%d more)", strings.Count(msg, "\n"))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05"), e.Result, cfgShortID(e.ID), e.Source, msg)
		}
		tw.Flush()
		return 0
	case "apply":
		cl := c.live()
		if cl == nil {
			return fail(fmt.Errorf("no running host here (%s does not exist)", c.socket))
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout+5*time.Minute)
		defer cancel()
		var rep reconcile.ApplyReply
		err := cl.Do(ctx, "POST", "/v1/config/apply", nil, &rep)
		return configApplyReply(c, "apply", rep, err, stdout, stderr)
	case "status":
		if cl := c.live(); cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var rep reconcile.StatusReply
			if err := cl.Do(ctx, "GET", "/v1/config", nil, &rep); err != nil {
				return fail(err)
			}
			if c.output == "json" {
				writeJSON(stdout, rep)
				return 0
			}
			if rep.Running != nil {
				fmt.Fprintf(stdout, "running:  %s from %s\n", cfgShortID(rep.Running.ID), cfgOrDash(rep.Running.Source))
			}
			if rep.Source != "" {
				fmt.Fprintf(stdout, "source:   %s\n", rep.Source)
			}
			// `magestack scale` overrides the stack file's counts: say so
			// next to the revision they override.
			var roles []ScaleRole
			if err := cl.Do(ctx, "GET", "/v1/scale", nil, &roles); err == nil {
				for _, r := range roles {
					if r.Override != nil {
						fmt.Fprintf(stdout, "scaled:   %s=%d by `magestack scale` (stack file: %d); %s\n", r.Role, r.Running, r.StackFile, overrideText(r.Override))
					}
				}
			}
			configPrintStatus(rep.Store, stdout)
			return 0
		}
		st, err := configstore.Open(c.dir)
		if err != nil {
			return fail(err)
		}
		s, err := st.Status()
		if err != nil {
			return fail(err)
		}
		if c.output == "json" {
			writeJSON(stdout, s)
			return 0
		}
		configPrintStatus(s, stdout)
		return 0
	case "rollback":
		if len(pos) != 1 {
			return fail(errors.New("want one revision ID"))
		}
		if cl := c.live(); cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			var rep reconcile.ApplyReply
			err := cl.Do(ctx, "POST", "/v1/config/rollback", reconcile.RollbackRequest{Revision: pos[0]}, &rep)
			return configApplyReply(c, "rollback", rep, err, stdout, stderr)
		}
		st, err := configstore.Open(c.dir)
		if err != nil {
			return fail(err)
		}
		rev, err := st.Rollback(pos[0], func(r configsource.Revision) error {
			_, err := stackfile.Parse("revision "+cfgShortID(r.ID), r.Data)
			return err
		})
		if err != nil {
			fmt.Fprintf(stderr, "magestack config rollback: %v\n", err)
			return 1
		}
		if c.output == "json" {
			writeJSON(stdout, rev)
			return 0
		}
		fmt.Fprintf(stdout, "last good revision is now %s; a host applies it at its next reconcile or boot\n", rev.ID)
		return 0
	}
	fmt.Fprintf(stderr, "magestack config: unknown command %q\n\n%s\n", cmd, configUsage)
	return 2
}

func cfgShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func cfgOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cfgReadInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(stdin, stackfile.MaxFileSize+1))
	}
	return os.ReadFile(name)
}

// validateResult is one file's outcome for -o json.
type validateResult struct {
	File   string                  `json:"file"`
	Valid  bool                    `json:"valid"`
	Errors []*stackfile.FieldError `json:"errors,omitempty"`
}

func configValidate(c *configFlags, files []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var results []validateResult
	code := 0
	for _, name := range files {
		r := validateResult{File: name}
		data, err := cfgReadInput(name, stdin)
		if err == nil {
			_, err = stackfile.Parse(name, data)
		}
		if err != nil {
			code = 1
			r.Errors = stackfile.FieldErrors(err)
			if c.output != "json" {
				fmt.Fprintln(stderr, err)
			}
		} else {
			r.Valid = true
			if c.output != "json" {
				fmt.Fprintf(stdout, "%s: ok\n", name)
			}
		}
		results = append(results, r)
	}
	if c.output == "json" {
		writeJSON(stdout, results)
	}
	return code
}

// configLoad reads the stack named by args: a file, "-", or (no argument)
// the store's last good revision, else the built-in default.
func configLoad(c *configFlags, args []string, stdin io.Reader) (*stackfile.Stack, error) {
	if len(args) == 1 {
		data, err := cfgReadInput(args[0], stdin)
		if err != nil {
			return nil, err
		}
		return stackfile.Parse(args[0], data)
	}
	if st, err := configstore.Open(c.dir); err == nil {
		rev, err := st.LastGood()
		switch {
		case err == nil:
			return stackfile.Parse("revision "+cfgShortID(rev.ID), rev.Data)
		case !errors.Is(err, configstore.ErrNoRevision):
			return nil, err
		}
	}
	return stackfile.Default(), nil
}

func configShow(c *configFlags, s *stackfile.Stack, stdout io.Writer) error {
	if c.instances {
		insts, err := s.Instances()
		if err != nil {
			return err
		}
		if c.output == "json" {
			type row struct {
				Name    string `json:"name"`
				Role    string `json:"role"`
				Address string `json:"address"`
				FQDN    string `json:"fqdn"`
				Host    string `json:"host"`
			}
			rows := []row{}
			for _, in := range insts {
				rows = append(rows, row{in.Name, in.Role, in.Addr.String(), in.FQDN(), in.Host})
			}
			writeJSON(stdout, rows)
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "INSTANCE\tROLE\tADDRESS\tHOST")
		for _, in := range insts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", in.FQDN(), in.Role, in.Addr, in.Host)
		}
		return tw.Flush()
	}
	out, err := s.Marshal()
	if err != nil {
		return err
	}
	if c.output != "json" {
		_, err = stdout.Write(out)
		return err
	}
	js, err := s.MarshalJSONOrdered()
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, js, "", "  "); err != nil {
		return err
	}
	pretty.WriteByte('\n')
	_, err = pretty.WriteTo(stdout)
	return err
}

func configFetch(c *configFlags, source string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	rev, err := configsource.New(configsource.Options{Timeout: c.timeout}).Fetch(ctx, source)
	if err != nil {
		fmt.Fprintln(stderr, "magestack config fetch:", err)
		return 2
	}
	_, perr := stackfile.Parse(source, rev.Data)
	if c.output == "json" {
		writeJSON(stdout, struct {
			configsource.Revision
			Valid  bool                    `json:"valid"`
			Errors []*stackfile.FieldError `json:"errors,omitempty"`
		}{rev, perr == nil, stackfile.FieldErrors(perr)})
	} else {
		fmt.Fprintf(stdout, "revision %s (%s, %d bytes)\n", rev.ID, rev.Time.Local().Format(time.RFC3339), len(rev.Data))
		if perr != nil {
			fmt.Fprintln(stderr, perr)
		} else {
			fmt.Fprintln(stdout, "valid")
		}
	}
	if perr != nil {
		return 1
	}
	return 0
}

func configPrintStatus(s configstore.Status, stdout io.Writer) {
	if s.Current == nil {
		fmt.Fprintln(stdout, "applied:  none (the built-in default stack until a revision is applied)")
	} else {
		fmt.Fprintf(stdout, "applied:  %s from %s (%s at %s)\n", cfgShortID(s.Current.ID), cfgOrDash(s.Current.Source), s.Current.Result, s.Current.At.Local().Format(time.RFC3339))
	}
	if s.LastRejected != nil {
		fmt.Fprintf(stdout, "rejected: %s from %s at %s:\n  %s\n", cfgShortID(s.LastRejected.ID), cfgOrDash(s.LastRejected.Source),
			s.LastRejected.At.Local().Format(time.RFC3339), strings.ReplaceAll(s.LastRejected.Error, "\n", "\n  "))
	}
}

// configApplyReply prints the answer of a live apply or rollback. An
// APIError with a JSON ApplyReply body still carries the details.
func configApplyReply(c *configFlags, cmd string, rep reconcile.ApplyReply, err error, stdout, stderr io.Writer) int {
	if err != nil && rep.Revision.ID == "" {
		fmt.Fprintf(stderr, "magestack config %s: %v\n", cmd, err)
		return 1
	}
	if c.output == "json" {
		writeJSON(stdout, rep)
	} else {
		fmt.Fprintf(stdout, "revision %s\n%s", cfgShortID(rep.Revision.ID), rep.Summary)
		for _, sk := range rep.Skipped {
			fmt.Fprintf(stdout, "  not applied (no applier wired): %s\n", sk)
		}
		if rep.Error != "" {
			fmt.Fprintf(stderr, "magestack config %s: %s\n", cmd, rep.Error)
			if len(rep.RolledBack) > 0 {
				fmt.Fprintf(stderr, "undone: %s\n", strings.Join(rep.RolledBack, ", "))
			}
		}
	}
	if rep.Error != "" || err != nil {
		return 1
	}
	return 0
}

// configDiffLive compares a file with the stack running on this host.
func configDiffLive(c *configFlags, cl *api.Client, name string, stdin io.Reader, stdout, stderr io.Writer) int {
	data, err := cfgReadInput(name, stdin)
	if err != nil {
		fmt.Fprintln(stderr, "magestack config diff:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rep reconcile.DiffReply
	err = cl.Do(ctx, "POST", "/v1/config/diff", reconcile.DiffRequest{Name: name, Data: string(data)}, &rep)
	if err != nil {
		// The host refuses an invalid file (422); show its problems the way
		// validate does rather than as JSON inside an API error.
		if _, perr := stackfile.Parse(name, data); perr != nil {
			fmt.Fprintln(stderr, perr)
		} else {
			fmt.Fprintln(stderr, "magestack config diff:", err)
		}
		return 2
	}
	if c.output == "json" {
		writeJSON(stdout, rep.Changes)
	} else {
		fmt.Fprint(stdout, rep.Summary)
	}
	if rep.Changes.Empty() {
		return 0
	}
	return 1
}
