package qemu

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Console lines magestack prints that tests and the benchmark read
// (init/timeline and init/pid1 write them).
const (
	// ReadyPattern matches `magestack: stack ready uptime_ms=<N>`.
	ReadyPattern = `magestack: stack ready uptime_ms=(\d+)`
	// TimelinePattern matches one finished boot step.
	TimelinePattern = `magestack: timeline (\S+) start_ms=(\d+) end_ms=(\d+) (ok|error)`
	// NopInitPattern matches the do-nothing PID 1's start line.
	NopInitPattern = `nopinit: pid1 uptime_ms=(\d+)`
)

// TimelineStep is one `magestack: timeline` line.
type TimelineStep struct {
	Step           string
	StartMS, EndMS int64
	OK             bool
}

var timelineRE = regexp.MustCompile(TimelinePattern)

// ParseTimeline returns every timeline line of a console text, in order.
func ParseTimeline(console string) []TimelineStep {
	var steps []TimelineStep
	for _, m := range timelineRE.FindAllStringSubmatch(console, -1) {
		start, _ := strconv.ParseInt(m[2], 10, 64)
		end, _ := strconv.ParseInt(m[3], 10, 64)
		steps = append(steps, TimelineStep{Step: m[1], StartMS: start, EndMS: end, OK: m[4] == "ok"})
	}
	return steps
}

// FormatTimeline renders steps as an aligned table for test logs.
func FormatTimeline(steps []TimelineStep) string {
	if len(steps) == 0 {
		return "(no timeline lines on the console)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-24s %9s %9s %8s %s\n", "step", "start_ms", "end_ms", "took_ms", "result")
	for _, s := range steps {
		res := "ok"
		if !s.OK {
			res = "error"
		}
		fmt.Fprintf(&b, "%-24s %9d %9d %8d %s\n", s.Step, s.StartMS, s.EndMS, s.EndMS-s.StartMS, res)
	}
	return strings.TrimRight(b.String(), "\n")
}

// FindStep returns the last entry for step (a retried step logs again).
func FindStep(steps []TimelineStep, step string) (TimelineStep, bool) {
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i].Step == step {
			return steps[i], true
		}
	}
	return TimelineStep{}, false
}

// TestImageArg makes roles that name no image run the built-in busybox
// image instead of their real (Debian) images: scenarios about boot,
// supervision, the network or the cluster need neither the images disk nor
// the minute the real daemons take to start under TCG. Options adds it;
// scenarios of the real stack remove it (RealImages).
const TestImageArg = "magestack.test.image=busybox"

// Options returns the VM options that boot this image with the given extra
// kernel arguments: quiet console, 2 GiB, an RNG and one user-mode NIC (so
// DHCP answers) with no port forwards and no PXE ROM (the kernel is given).
// Roles run the built-in test image unless the stack names theirs
// (TestImageArg).
func (im Image) Options(appendArgs string) Options {
	return Options{
		Kernel: im.Kernel,
		Initrd: im.Initramfs,
		Append: strings.TrimSpace("console=ttyS0 quiet panic=-1 " + TestImageArg + " " + appendArgs),
		Memory: 2048,
		RNG:    true,
		NICs:   []NIC{{User: true, ROM: "none"}},
	}
}

// RealImages drops TestImageArg from o: every role runs its real image, as
// on a production host.
func (o Options) RealImages() Options {
	o.Append = strings.Join(strings.Fields(strings.ReplaceAll(o.Append, TestImageArg, "")), " ")
	return o
}
