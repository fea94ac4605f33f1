// Package sysctl holds the kernel settings PID 1 applies before any child
// exists: the ones that take a class of escape away from every process in
// a role, whatever its capabilities or seccomp filter.
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Setting is one /proc/sys value and why it is set.
type Setting struct {
	Key   string // dotted, as sysctl(8) writes it
	Value string
	Why   string
}

// Hardening are the host's settings. No magestack process uses a user
// namespace; unprivileged ones are where most kernel escalations start,
// and clone3 (which a seccomp filter cannot inspect) could still make one.
var Hardening = []Setting{
	{"user.max_user_namespaces", "0", "no process may create a user namespace"},
	{"kernel.kptr_restrict", "2", "kernel addresses hidden from every process"},
	{"kernel.dmesg_restrict", "1", "the kernel log is root's on the host only"},
	{"kernel.unprivileged_bpf_disabled", "1", "no BPF without CAP_BPF"},
	{"kernel.perf_event_paranoid", "3", "no perf events without CAP_PERFMON"},
}

// Apply writes settings under root (normally /proc/sys) and reads each
// back. A key the kernel lacks is skipped (older kernels); any other
// failure is returned, naming every setting that did not take.
func Apply(root string, settings []Setting) error {
	var errs []error
	for _, s := range settings {
		p := filepath.Join(root, strings.ReplaceAll(s.Key, ".", "/"))
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.WriteFile(p, []byte(s.Value+"\n"), 0); err != nil {
			errs = append(errs, fmt.Errorf("%s=%s: %w", s.Key, s.Value, err))
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != s.Value {
			errs = append(errs, fmt.Errorf("%s=%s: reads back %q (%v)", s.Key, s.Value, strings.TrimSpace(string(b)), err))
		}
	}
	return errors.Join(errs...)
}
