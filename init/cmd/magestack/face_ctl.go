package main

// The operator faces on top of the control API: status, start, stop,
// restart, logs, boot.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"magestack/init/api"
	"magestack/init/supervise"
)

func statusMain(args []string) int  { return ctlStatus(args, os.Stdout, os.Stderr) }
func startMain(args []string) int   { return ctlAction("start", args, os.Stdout, os.Stderr) }
func stopMain(args []string) int    { return ctlAction("stop", args, os.Stdout, os.Stderr) }
func restartMain(args []string) int { return ctlAction("restart", args, os.Stdout, os.Stderr) }
func logsMain(args []string) int    { return ctlLogs(args, os.Stdout, os.Stderr) }
func bootMain(args []string) int    { return ctlBoot(args, os.Stdout, os.Stderr) }

// ctlFlags holds the flags every control face shares.
type ctlFlags struct {
	fs     *flag.FlagSet
	socket *string
	output *string
}

func newCtlFlags(name, usage string, stderr io.Writer, withOutput bool) *ctlFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &ctlFlags{fs: fs, socket: fs.String("socket", api.DefaultSocket, "control API socket")}
	if withOutput {
		c.output = fs.String("o", "table", "output format: table or json")
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: magestack %s %s\n", name, usage)
		fs.PrintDefaults()
	}
	return c
}

// parse accepts flags before and after positional arguments
// ("magestack logs web1 -f" as well as "magestack logs -f web1").
func (c *ctlFlags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := c.fs.Parse(args); err != nil {
			return nil, err
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if c.output != nil && *c.output != "table" && *c.output != "json" {
		return nil, fmt.Errorf("-o %q: want table or json", *c.output)
	}
	return pos, nil
}

func (c *ctlFlags) json() bool { return c.output != nil && *c.output == "json" }

// usageError prints a usage problem; exit code 2.
func usageError(c *ctlFlags, stderr io.Writer, err error) int {
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "magestack %s: %v\n", c.fs.Name(), err)
		c.fs.Usage()
	}
	return 2
}

func apiError(stderr io.Writer, face string, err error) int {
	fmt.Fprintf(stderr, "magestack %s: %v\n", face, err)
	return 1
}

func checkUnitArg(pos []string) (string, error) {
	if len(pos) != 1 {
		return "", fmt.Errorf("want one unit: <role> or <role>/<service>, got %d arguments", len(pos))
	}
	parts := strings.Split(pos[0], "/")
	if len(parts) > 2 {
		return "", fmt.Errorf("unit %q: want <role> or <role>/<service>", pos[0])
	}
	for _, p := range parts {
		if !supervise.ValidName(p) {
			return "", fmt.Errorf("unit %q: %q is not a valid name (letters, digits, '.', '_', '-')", pos[0], p)
		}
	}
	return pos[0], nil
}

func ctlStatus(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("status", "[-o json] [--socket PATH]", stderr, true)
	pos, err := c.parse(args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := api.NewClient(*c.socket).Status(ctx)
	if err != nil {
		return apiError(stderr, "status", err)
	}
	if c.json() {
		writeJSON(stdout, st)
		return 0
	}
	writeStatusTable(stdout, st)
	return 0
}

func writeStatusTable(w io.Writer, st *api.StatusReply) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UNIT\tSTATE\tPID\tUPTIME\tRESTARTS\tHEALTH\tCPU\tMEM\tLAST-EXIT")
	var notes []string
	for _, u := range st.Units {
		pid, uptime := "-", "-"
		if u.PID != 0 {
			pid, uptime = fmt.Sprint(u.PID), formatDuration(u.Uptime)
		}
		last := "-"
		if u.LastExit != nil {
			last = u.LastExit.Reason
			if !u.LastExit.At.IsZero() {
				last += " (" + formatDuration(st.Time.Sub(u.LastExit.At)) + " ago)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", u.Name, u.State, pid, uptime, u.Restarts,
			orDash(u.Health), formatCPU(u.CPUUsec), formatBytes(u.MemoryBytes), last)
		if u.Message != "" {
			notes = append(notes, u.Name+": "+u.Message)
		}
		if u.Health == "unhealthy" || (u.Health == "starting" && u.HealthReason != "") {
			notes = append(notes, u.Name+": health: "+u.HealthReason)
		}
	}
	tw.Flush()
	var errKeys []string
	for k := range st.Errors {
		errKeys = append(errKeys, k)
	}
	sort.Strings(errKeys)
	for _, k := range errKeys {
		notes = append(notes, k+": "+st.Errors[k])
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
	if raw, ok := st.Sections["secrets"]; ok {
		var sec struct{ ID, Source string }
		if err := json.Unmarshal(raw, &sec); err == nil && sec.ID != "" {
			// Hosts of one stack must show the same id.
			fmt.Fprintf(w, "\nstack secret: id %s (%s)\n", sec.ID, sec.Source)
		}
	}
	if raw, ok := st.Sections["volumes"]; ok && string(raw) != "null" {
		var vols []volumeStatus
		if err := json.Unmarshal(raw, &vols); err == nil && len(vols) > 0 {
			fmt.Fprintln(w)
			writeVolumes(w, vols)
		}
	}
	if raw, ok := st.Sections["cluster"]; ok && string(raw) != "null" {
		var c clusterStatus
		if err := json.Unmarshal(raw, &c); err == nil {
			writeCluster(w, c)
		}
	}
	if len(st.Sections) > 0 {
		var names []string
		for k := range st.Sections {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Fprintf(w, "\nmore with -o json: %s\n", strings.Join(names, ", "))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func formatCPU(usec uint64) string {
	if usec == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", float64(usec)/1e6)
}

func formatBytes(b uint64) string {
	switch {
	case b == 0:
		return "-"
	case b < 1<<20:
		return fmt.Sprintf("%.0fK", float64(b)/(1<<10))
	case b < 1<<30:
		return fmt.Sprintf("%.1fM", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.2fG", float64(b)/(1<<30))
}

func ctlAction(action string, args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags(action, "<role>[/<service>] [-o json] [--socket PATH]", stderr, true)
	pos, err := c.parse(args)
	var unit string
	if err == nil {
		unit, err = checkUnitArg(pos)
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), api.Timeout)
	defer cancel()
	r, err := api.NewClient(*c.socket).Action(ctx, action, unit)
	if err != nil {
		return apiError(stderr, action, err)
	}
	if c.json() {
		writeJSON(stdout, r)
		return 0
	}
	line := fmt.Sprintf("%s: %s", r.Unit, r.Status.State)
	if r.Status.PID != 0 {
		line += fmt.Sprintf(" (pid %d)", r.Status.PID)
	}
	if r.Status.Message != "" {
		line += ": " + r.Status.Message
	}
	fmt.Fprintln(stdout, line)
	return 0
}

func ctlLogs(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("logs", "<role>[/<service>] [-f] [-n LINES] [--socket PATH]", stderr, false)
	follow := c.fs.Bool("f", false, "follow: keep printing new lines")
	n := c.fs.Int("n", 200, "recent lines to print (0: all kept in memory)")
	pos, err := c.parse(args)
	var unit string
	if err == nil {
		unit, err = checkUnitArg(pos)
	}
	if err == nil && *n < 0 {
		err = fmt.Errorf("-n %d: want 0 or more", *n)
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !*follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	if err := api.NewClient(*c.socket).Logs(ctx, unit, *n, *follow, stdout); err != nil {
		return apiError(stderr, "logs", err)
	}
	return 0
}

func ctlBoot(args []string, stdout, stderr io.Writer) int {
	c := newCtlFlags("boot", "[-o json] [--socket PATH]", stderr, true)
	pos, err := c.parse(args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err != nil {
		return usageError(c, stderr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := api.NewClient(*c.socket).Boot(ctx)
	if err != nil {
		return apiError(stderr, "boot", err)
	}
	if c.json() {
		var v any
		json.Unmarshal(raw, &v)
		writeJSON(stdout, v)
		return 0
	}
	writeBootTable(stdout, raw)
	return 0
}

// timelineEntry mirrors init/timeline.Entry, the shape PID 1 serves.
type timelineEntry struct {
	Step    string `json:"step"`
	Attempt int    `json:"attempt"`
	StartMS int64  `json:"start_ms"`
	EndMS   int64  `json:"end_ms"`
	Done    bool   `json:"done"`
	OK      bool   `json:"ok"`
	Error   string `json:"error"`
}

// writeBootTable prints the boot timeline: one row per step attempt with
// its start and end in ms since the kernel started. A timeline of another
// shape is printed as indented JSON.
func writeBootTable(w io.Writer, raw json.RawMessage) {
	var entries []timelineEntry
	if err := json.Unmarshal(raw, &entries); err != nil || len(entries) == 0 || entries[0].Step == "" {
		var v any
		json.Unmarshal(raw, &v)
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Fprintln(w, string(b))
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tATTEMPT\tSTART-MS\tEND-MS\tTOOK-MS\tRESULT")
	for _, e := range entries {
		end, took, result := "-", "-", "running"
		if e.Done {
			end, took = fmt.Sprint(e.EndMS), fmt.Sprint(e.EndMS-e.StartMS)
			result = "ok"
			if !e.OK {
				result = "error: " + e.Error
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", e.Step, e.Attempt, e.StartMS, end, took, result)
	}
	tw.Flush()
}

// writeJSON prints v indented, for -o json.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
