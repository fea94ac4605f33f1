// Package roleinit is `magestack role-init`, PID 1 inside a role
// environment. PID 1 of the host clones it into fresh mount, PID, network,
// UTS and IPC namespaces with a spec file; it builds the role's root
// filesystem (read-only image + tmpfs overlay, its own /proc, read-only /sys,
// a minimal /dev, the data volume) and pivots into it, waits for the veth
// the host moves in, drops capabilities, sets no_new_privs, installs a
// seccomp filter, then supervises the role's services and reaps orphans
// until SIGTERM stops them in reverse order.
package roleinit

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"magestack/services"
)

// Spec is everything role-init needs, written by the host (roleenv) to a
// root-only file outside every role's filesystem.
type Spec struct {
	Name  string `json:"name"` // instance name, also the hostname: web1
	Role  string `json:"role"`
	Stack string `json:"stack"`

	// Image is the read-only lower layer: a directory tree, or a squashfs
	// file mounted through a loop device.
	Image string `json:"image"`
	// StateDir is a host directory for this instance; role-init mounts a
	// tmpfs over it in its own mount namespace to hold the overlay's upper
	// and work dirs and the new root, so nothing written leaks to the host.
	StateDir string `json:"state_dir"`
	// ScratchSize bounds the tmpfs in bytes (0: 64 MiB).
	ScratchSize uint64 `json:"scratch_size,omitempty"`
	// Volume is a host directory mounted at /data; "" for none.
	Volume string `json:"volume,omitempty"`
	// KeepRoot puts the root's writable layer on the volume
	// (<Volume>/.root), kept across starts, instead of the scratch tmpfs.
	KeepRoot bool `json:"keep_root,omitempty"`
	// Cgroup is the host path of the role's cgroup v2 directory; role-init
	// moves itself into its "init" leaf and puts each service in a sibling.
	// "" runs without cgroups.
	Cgroup string `json:"cgroup,omitempty"`
	// LogDir is a host directory for the services' log files; "" keeps logs
	// in memory only.
	LogDir string `json:"log_dir,omitempty"`

	// APISocket is a host path where role-init serves the control API of
	// its services (status, start/stop/restart, logs) for PID 1's API to
	// forward "role/service" requests to. It is bound before pivot_root,
	// so nothing inside the role can reach it. "" for none.
	APISocket string `json:"api_socket,omitempty"`

	Hosts string `json:"hosts"` // /etc/hosts content
	// ResolvConf is /etc/resolv.conf: the host's upstream name servers
	// (instance names resolve from Hosts). "" leaves the image's file.
	ResolvConf string       `json:"resolv_conf,omitempty"`
	Interface  string       `json:"interface"` // the veth end the host moves in, e.g. eth0
	Address    netip.Prefix `json:"address"`   // expected on Interface
	// NetworkWait bounds the wait for Interface to be configured (0: 5s).
	NetworkWait time.Duration `json:"network_wait,omitempty"`

	Payload services.Payload `json:"payload"`

	// NoSeccomp leaves the default seccomp filter out (debugging only).
	NoSeccomp bool `json:"no_seccomp,omitempty"`
}

// Validate checks the spec before anything is mounted.
func (s *Spec) Validate() error {
	switch {
	case s.Name == "" || strings.ContainsAny(s.Name, "/ ") || len(s.Name) > 63:
		return fmt.Errorf("spec: invalid instance name %q", s.Name)
	case !filepath.IsAbs(s.Image):
		return fmt.Errorf("spec %s: image %q must be an absolute path", s.Name, s.Image)
	case !filepath.IsAbs(s.StateDir):
		return fmt.Errorf("spec %s: state_dir %q must be an absolute path", s.Name, s.StateDir)
	case s.Volume != "" && !filepath.IsAbs(s.Volume):
		return fmt.Errorf("spec %s: volume %q must be an absolute path", s.Name, s.Volume)
	case s.KeepRoot && s.Volume == "":
		return fmt.Errorf("spec %s: keep_root needs a volume", s.Name)
	case s.Cgroup != "" && !filepath.IsAbs(s.Cgroup):
		return fmt.Errorf("spec %s: cgroup %q must be an absolute path", s.Name, s.Cgroup)
	case s.APISocket != "" && !filepath.IsAbs(s.APISocket):
		return fmt.Errorf("spec %s: api_socket %q must be an absolute path", s.Name, s.APISocket)
	case s.LogDir != "" && !filepath.IsAbs(s.LogDir):
		return fmt.Errorf("spec %s: log_dir %q must be an absolute path", s.Name, s.LogDir)
	}
	if fi, err := os.Stat(s.Image); err != nil || !(fi.IsDir() || fi.Mode().IsRegular()) {
		return fmt.Errorf("spec %s: image %s: not a directory or squashfs file (%v)", s.Name, s.Image, err)
	}
	if err := s.Payload.Validate(); err != nil {
		return fmt.Errorf("spec %s: payload: %w", s.Name, err)
	}
	return nil
}

// Write stores the spec at path, readable by root only.
func (s *Spec) Write(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("spec %s: %w", s.Name, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("spec %s: %w", s.Name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("spec %s: %w", s.Name, err)
	}
	return nil
}

// LoadSpec reads and validates a spec file.
func LoadSpec(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("role spec: %w", err)
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("role spec %s: %w", path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("role spec %s: %w", path, err)
	}
	return &s, nil
}
