// Command testgate reads `go test -json` event streams and fails when a
// test skipped for a reason the project has not accepted. A skip hides a
// check behind a condition ("image not built", "needs root"); on the CI
// machine every such condition is fixable by the project's own files,
// except the few listed, each with why, in qemu-tests/README.md under
// "Skips CI accepts".
//
//	go test -json ./... | tee unit.json | go run ./qemu-tests/testgate -print -gate=false -
//	go run ./qemu-tests/testgate unit.json qemu.json
//
// A test skipped in one stream and run in another (the QEMU scenarios skip
// in the quick run) counts as run. -print also writes what `go test`
// without -v would have: build errors, failed tests' output, each
// package's result line.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

func main() {
	allowFile := flag.String("allow", "qemu-tests/README.md", "file whose \"Skips CI accepts\" section lists the accepted skip reasons")
	printResults := flag.Bool("print", false, "print package results, build errors and failed tests' output as they come")
	gate := flag.Bool("gate", true, "fail on a refused skip (false: only list the skips)")
	flag.Parse()
	if err := run(os.Stdout, *allowFile, *printResults, *gate, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "testgate:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, allowFile string, printResults, gate bool, files []string) error {
	if len(files) == 0 {
		return errors.New("no event files given")
	}
	readme, err := os.ReadFile(allowFile)
	if err != nil {
		return err
	}
	accepted, err := acceptedSkips(string(readme))
	if err != nil {
		return fmt.Errorf("%s: %w", allowFile, err)
	}
	all := report{ran: map[string][]string{}}
	for _, name := range files {
		f := os.Stdin
		if name != "-" {
			if f, err = os.Open(name); err != nil {
				return err
			}
		}
		var echo io.Writer
		if printResults {
			echo = w
		}
		r, err := readEvents(f, echo)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		all.skips = append(all.skips, r.skips...)
		for name, pkgs := range r.ran {
			all.ran[name] = append(all.ran[name], pkgs...)
		}
	}
	skips := all.unresolved()
	if !gate {
		fmt.Fprintf(w, "testgate: %d tests ran, %d skipped (judged once every run is in)\n", all.count(), len(skips))
		return nil
	}
	refused := judge(w, skips, accepted)
	fmt.Fprintf(w, "testgate: %d tests ran, %d skipped and run nowhere else (%d accepted, %d refused)\n", all.count(), len(skips), len(skips)-refused, refused)
	if refused > 0 {
		return fmt.Errorf("%d tests skipped for a reason not listed under %q in %s: make them run, or list the reason there with why this machine cannot run them", refused, section, allowFile)
	}
	return nil
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	// ImportPath names the package of a build-output line (Go 1.24+).
	ImportPath string
}

// skip is one skipped test and the message it skipped with.
type skip struct {
	Package, Test, Reason string
}

// report is what one event stream says.
type report struct {
	// ran lists, by test name, the packages it passed or failed in ("" in
	// a stream made by test2json from a log of several packages).
	ran   map[string][]string
	skips []skip
}

// readEvents reads one stream; with echo set, it writes there what `go
// test` without -v would have, as it comes: build errors, each failed
// test's output, each package's result line.
func readEvents(r io.Reader, echo io.Writer) (report, error) {
	if echo == nil {
		echo = io.Discard
	}
	rep := report{ran: map[string][]string{}}
	output := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Bytes()
		if len(text) == 0 || text[0] != '{' {
			continue // go vet or build noise mixed into the stream
		}
		var ev event
		if err := json.Unmarshal(text, &ev); err != nil {
			return rep, fmt.Errorf("line %d: %w", line, err)
		}
		key := ev.Package + " " + ev.Test
		switch {
		case ev.Action == "output" && ev.Test != "":
			output[key] = append(output[key], ev.Output)
		case ev.Action == "build-output":
			fmt.Fprint(echo, ev.Output)
		case ev.Action == "output":
			if packageResult.MatchString(ev.Output) {
				fmt.Fprint(echo, ev.Output)
			}
		case ev.Test == "":
		case ev.Action == "skip":
			rep.skips = append(rep.skips, skip{Package: ev.Package, Test: ev.Test, Reason: skipReason(output[key])})
		case ev.Action == "pass":
			rep.ran[ev.Test] = append(rep.ran[ev.Test], ev.Package)
		case ev.Action == "fail":
			rep.ran[ev.Test] = append(rep.ran[ev.Test], ev.Package)
			fmt.Fprint(echo, strings.Join(output[key], ""))
		}
	}
	return rep, sc.Err()
}

// unresolved are the skips of tests that did not run in another stream
// either: the QEMU scenarios skip in the quick run and run in the QEMU run.
func (r report) unresolved() []skip {
	var out []skip
	for _, s := range r.skips {
		ranElsewhere := slices.ContainsFunc(r.ran[s.Test], func(pkg string) bool { return pkg == s.Package || pkg == "" || s.Package == "" })
		if !ranElsewhere {
			out = append(out, s)
		}
	}
	return out
}

func (r report) count() int {
	n := 0
	for _, pkgs := range r.ran {
		n += len(pkgs)
	}
	return n
}

// packageResult matches the line `go test` prints for each package.
var packageResult = regexp.MustCompile(`^(ok|FAIL|\?|panic:)\s`)

// skipReason is what a skipped test logged, without go test's own framing.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- ") {
			continue
		}
		msg = append(msg, l)
	}
	return strings.Join(msg, " ")
}

// section is the README heading whose list holds the accepted reasons.
const section = "Skips CI accepts"

// acceptedSkips reads the list under the "Skips CI accepts" heading: one
// item per reason, "- `text the skip message contains` — why".
func acceptedSkips(readme string) ([]string, error) {
	var out []string
	in := false
	for _, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(strings.TrimLeft(line, "#")) == section
			continue
		}
		if !in || !strings.HasPrefix(line, "- `") {
			continue
		}
		text, _, ok := strings.Cut(line[len("- `"):], "`")
		if !ok || strings.TrimSpace(text) == "" {
			return nil, fmt.Errorf("under %q: %q does not start with a `quoted` reason", section, line)
		}
		out = append(out, text)
	}
	if !strings.Contains(readme, "# "+section) {
		return nil, fmt.Errorf("no %q section", section)
	}
	return out, nil
}

// judge prints every skip with its verdict and returns how many it refused.
func judge(w io.Writer, skips []skip, accepted []string) int {
	refused := 0
	slices.SortFunc(skips, func(a, b skip) int { return strings.Compare(a.Package+a.Test, b.Package+b.Test) })
	for _, s := range skips {
		verdict := "REFUSED"
		if slices.ContainsFunc(accepted, func(a string) bool { return strings.Contains(s.Reason, a) }) {
			verdict = "accepted"
		} else {
			refused++
		}
		fmt.Fprintf(w, "testgate: skip %-8s %s %s: %s\n", verdict, s.Package, s.Test, s.Reason)
	}
	return refused
}
