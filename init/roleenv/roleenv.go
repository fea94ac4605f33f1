// Package roleenv prepares, on the host, everything a role instance's
// environment needs and hands PID 1's supervisor a unit that runs it: a
// cgroup v2 group with the role's limits, a veth pair into the internal
// bridge, a root-only spec file, and `role-init` cloned into new mount, PID,
// network, UTS and IPC namespaces. After the unit stops it removes the veth,
// the cgroup and the instance's scratch state; the data volume and the logs
// stay.
package roleenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/cgroup"
	"magestack/init/overlay"
	"magestack/init/roleinit"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services"
)

// Defaults of Options.
const (
	DefaultBridge     = "ms-int"
	DefaultStateRoot  = "/run/magestack/roles"
	DefaultLogRoot    = "/run/magestack/logs"
	DefaultVolumeRoot = "/run/magestack/volumes"
	DefaultImageRoot  = "/usr/share/magestack/images"
	DefaultExe        = "/proc/self/exe"
	// RoleInterface is the name of the role's end of its veth, inside.
	RoleInterface = "eth0"
)

// Options say where things live on the host. Zero values take the
// defaults above; tests point them at temporary places.
type Options struct {
	Exe        string // binary with the role-init face
	StateRoot  string // per-instance spec and scratch mount point
	LogRoot    string // per-instance service logs (LogRoot/<instance>/<service>.log)
	VolumeRoot string // per-instance data volumes, mounted at /data
	ImageRoot  string // image trees: ImageRoot/<image>
	// HostResolvConf is the host's resolver file roles take their upstream
	// name servers from (default /etc/resolv.conf).
	HostResolvConf string
	// DefaultImage is the image of roles whose stack entry names none; ""
	// is each role's real image (services.ImageFor).
	DefaultImage string
	// CgroupRoot is the cgroup2 mount; "" means cgroup.DefaultRoot when
	// that is a cgroup2 mount, else roles run without cgroups (a host
	// without cgroup v2). CgroupParent groups all roles below it.
	CgroupRoot   string
	CgroupParent string // default "magestack"
	Bridge       string
	// BridgeNS is the network namespace holding the bridge; zero value
	// (netns.None()): the caller's.
	BridgeNS netns.NsHandle
	// Render, when set, completes a role's payload from the stack before
	// each environment is described (services/render: configuration files
	// of the real images). nil: the payload as the image defines it.
	Render func(p services.Payload, stack *stackfile.Stack, inst stackfile.Instance) (services.Payload, error)
	// Volumes brings an instance's data volume up at VolumeRoot/<instance>
	// before each start and releases it after each stop; nil: the volume is
	// a plain directory there.
	Volumes Volumes
	// NoSeccomp and the limits switch are for hosts that lack the facility.
	NoSeccomp bool
	NoLimits  bool // create cgroups without cpu/memory/pids limits
}

// Volumes mounts instances' data volumes on the host (init/volume: DRBD
// on the data disk).
type Volumes interface {
	// Up mounts the instance's volume at VolumeRoot/<instance>; managed
	// false says the instance has none here and gets a plain directory.
	Up(ctx context.Context, instance string) (managed bool, err error)
	// Down unmounts it and lets the peer take it.
	Down(ctx context.Context, instance string) error
}

func (o Options) withDefaults() Options {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&o.Exe, DefaultExe)
	def(&o.StateRoot, DefaultStateRoot)
	def(&o.LogRoot, DefaultLogRoot)
	def(&o.VolumeRoot, DefaultVolumeRoot)
	def(&o.ImageRoot, DefaultImageRoot)
	def(&o.HostResolvConf, "/etc/resolv.conf")
	def(&o.CgroupParent, "magestack")
	def(&o.Bridge, DefaultBridge)
	if o.CgroupRoot == "" && cgroup.IsV2(cgroup.DefaultRoot) {
		o.CgroupRoot = cgroup.DefaultRoot
	}
	if o.BridgeNS == 0 {
		o.BridgeNS = netns.None()
	}
	return o
}

// ServiceSocket is where the role-init of unit serves its services' API
// (pid is unused: the socket is on the host, outside the role). Give it to
// api.Options.ServiceSocket so "web1/http" reaches web1's role-init.
func (o Options) ServiceSocket(unit string, pid int) string {
	o = o.withDefaults()
	return filepath.Join(o.StateRoot, unit, "api.sock")
}

// Env is one role instance's environment on this host.
type Env struct {
	log   *slog.Logger
	opts  Options
	inst  stackfile.Instance
	spec  roleinit.Spec
	image string // image name, resolved to a path at each start
	lim   cgroup.Limits
	gw    netip.Addr // host's bridge address: the role's default route
	dir   string     // StateRoot/<instance>
	cgrel string     // CgroupParent/<instance>

	// Timing of the last start's host side; read it after the unit is up.
	Timing Timing
}

// Timing records the host side of the last start.
type Timing struct {
	Begin    time.Time     // start requested (prepare began)
	Prepared time.Duration // cgroup, veth, spec file ready; clone follows
}

// New describes the environment of inst (one of stack.Instances()) running
// on the host at hostIndex of stack.Hosts. Nothing is created until the
// unit starts.
func New(log *slog.Logger, opts Options, stack *stackfile.Stack, hostIndex int, inst stackfile.Instance) (*Env, error) {
	opts = opts.withDefaults()
	role, ok := stack.Roles[inst.Role]
	if !ok {
		return nil, fmt.Errorf("role %s: not in the stack", inst.Name)
	}
	gw, err := stack.HostBridgeAddr(hostIndex)
	if err != nil {
		return nil, fmt.Errorf("role %s: %w", inst.Name, err)
	}
	image := services.ImageFor(inst.Role, role.Image, opts.DefaultImage)
	payload, err := services.PayloadFor(image, inst.Role, role.Settings)
	if err != nil {
		return nil, fmt.Errorf("role %s: %w", inst.Name, err)
	}
	if opts.Render != nil {
		if payload, err = opts.Render(payload, stack, inst); err != nil {
			return nil, fmt.Errorf("role %s: render: %w", inst.Name, err)
		}
		if err := payload.Validate(); err != nil {
			return nil, fmt.Errorf("role %s: rendered payload: %w", inst.Name, err)
		}
	}
	hosts, err := HostsFile(stack)
	if err != nil {
		return nil, fmt.Errorf("role %s: %w", inst.Name, err)
	}
	e := &Env{
		log:   log.With("role", inst.Name),
		opts:  opts,
		inst:  inst,
		gw:    gw,
		dir:   filepath.Join(opts.StateRoot, inst.Name),
		cgrel: opts.CgroupParent + "/" + inst.Name,
		image: image,
	}
	if !opts.NoLimits {
		e.lim = cgroup.Limits{CPUWeight: role.CPUWeight, MemoryMax: uint64(role.Memory), PidsMax: role.Pids}
		if err := e.lim.Validate(); err != nil {
			return nil, fmt.Errorf("roles.%s: %w", inst.Role, err)
		}
	}
	e.spec = roleinit.Spec{
		Name:      inst.Name,
		Role:      inst.Role,
		Stack:     stack.Name,
		Image:     imagePath(opts.ImageRoot, image),
		StateDir:  filepath.Join(e.dir, "mnt"),
		LogDir:    filepath.Join(opts.LogRoot, inst.Name),
		APISocket: opts.ServiceSocket(inst.Name, 0),
		Hosts:     hosts,
		Interface: RoleInterface,
		Address:   netip.PrefixFrom(inst.Addr, stack.Internal.Bits()),
		Payload:   payload,
		NoSeccomp: opts.NoSeccomp,
	}
	if role.Volume != 0 {
		e.spec.Volume = filepath.Join(opts.VolumeRoot, inst.Name)
		def, _ := services.Lookup(inst.Role)
		e.spec.KeepRoot = def.KeepsRoot
	}
	if opts.CgroupRoot != "" {
		e.spec.Cgroup = filepath.Join(opts.CgroupRoot, e.cgrel)
	}
	return e, nil
}

// imagePath prefers the packed image (<root>/<image>.squashfs) over the
// tree (<root>/<image>).
func imagePath(root, image string) string {
	sq := filepath.Join(root, image+".squashfs")
	if fi, err := os.Stat(sq); err == nil && fi.Mode().IsRegular() {
		return sq
	}
	return filepath.Join(root, image)
}

// RoleResolvConf is a role's /etc/resolv.conf made from the host's file at
// path: its name servers (loopback ones left out: a role's loopback is its
// own), search domains and options. "" when the host has no usable server,
// which leaves the image's file.
func RoleResolvConf(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var out strings.Builder
	servers := 0
	out.WriteString("# Written by magestack from the host's name servers; instance names (<name>.i) are in /etc/hosts.\n")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			a, err := netip.ParseAddr(f[1])
			if err != nil || a.IsLoopback() || a.IsUnspecified() {
				continue
			}
			servers++
		case "search", "domain", "options":
		default:
			continue
		}
		out.WriteString(strings.Join(f, " ") + "\n")
	}
	if servers == 0 {
		return ""
	}
	return out.String()
}

// HostsFile is /etc/hosts for every role: each instance as <name>.i and
// <name>.
func HostsFile(stack *stackfile.Stack) (string, error) {
	insts, err := stack.Instances()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, in := range insts {
		fmt.Fprintf(&b, "%s\t%s %s\n", in.Addr, in.FQDN(), in.Name)
	}
	return b.String(), nil
}

// RoleSpec is the spec role-init gets (for inspection and tests).
func (e *Env) RoleSpec() roleinit.Spec { return e.spec }

// CgroupPath is the role's cgroup directory, "" without cgroups.
func (e *Env) CgroupPath() string { return e.spec.Cgroup }

// HostVeth is the name of the host end of the role's veth.
func (e *Env) HostVeth() string { return vethName("ms-", e.inst.Name) }

func vethName(prefix, name string) string {
	n := prefix + name
	if len(n) > unix.IFNAMSIZ-1 {
		n = n[:unix.IFNAMSIZ-1]
	}
	return n
}

// StopGrace is how long the role gets to stop its services in order
// before its cgroup is killed.
const StopGrace = roleinit.StopTimeout + 5*time.Second

// Unit returns the supervised unit that runs the environment.
func (e *Env) Unit() supervise.Spec {
	return supervise.Spec{
		Name:        e.inst.Name,
		Command:     []string{e.opts.Exe, "role-init", filepath.Join(e.dir, "spec.json")},
		Env:         []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"},
		NotifyFD:    true,
		StopSignal:  syscall.SIGTERM,
		StopGrace:   StopGrace,
		Cgroup:      e.spec.Cgroup,
		SysProcAttr: e.prepare,
		AfterStart:  e.afterStart,
		AfterStop:   e.cleanup,
	}
}

// prepare runs before every start: it (re)creates the scratch directory,
// spec file and cgroup, and returns the clone attributes.
func (e *Env) prepare() (*syscall.SysProcAttr, error) {
	t0 := time.Now()
	// A previous run that ended without cleanup (PID 1 restarted) leaves a
	// veth or a cgroup; start from nothing.
	if err := e.cleanup(); err != nil {
		return nil, fmt.Errorf("clean up the previous run: %w", err)
	}
	for _, d := range []string{e.dir, e.spec.StateDir, e.spec.LogDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("role %s: %w", e.inst.Name, err)
		}
	}
	if err := e.volumeUp(); err != nil {
		return nil, err
	}
	// The image is looked up again at each start: images fetched after the
	// role was set up (a slow image server) are used by the next attempt.
	spec := e.spec
	spec.Image = imagePath(e.opts.ImageRoot, e.image)
	// Read at each start: a DHCP renewal may have changed the servers.
	spec.ResolvConf = RoleResolvConf(e.opts.HostResolvConf)
	if _, err := os.Stat(spec.Image); err != nil {
		// Said plainly, and the role stays down: a placeholder served as
		// if it were the site would hide the fault.
		return nil, fmt.Errorf("role %s: image %q is not on this host (%w): attach the MAGESTACK-IMAGES disk (make images) "+
			"or boot with magestack.images=URL; name `image: busybox` for the test image", e.inst.Name, e.image, err)
	}
	if err := spec.Write(filepath.Join(e.dir, "spec.json")); err != nil {
		return nil, err
	}
	e.log.Info("role: image in use", "image", e.image, "path", spec.Image)
	if e.spec.Cgroup != "" {
		if _, err := cgroup.Create(e.opts.CgroupRoot, e.cgrel, e.lim); err != nil {
			return nil, err
		}
	}
	e.Timing = Timing{Begin: t0, Prepared: time.Since(t0)}
	return &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
	}, nil
}

func (e *Env) handle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(e.opts.BridgeNS, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return h, nil
}

// afterStart creates the role's veth pair with one end in the bridge and
// the other born inside the new network namespace (creating it there is
// much cheaper than moving a device between namespaces), then configures
// the inner end: address, up, default route via the host.
func (e *Env) afterStart(pid int) error {
	h, err := e.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(e.opts.Bridge)
	if err != nil {
		return fmt.Errorf("role %s: bridge %s: %w", e.inst.Name, e.opts.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: e.HostVeth(), MasterIndex: br.Attrs().Index},
		PeerName:      RoleInterface,
		PeerNamespace: netlink.NsPid(pid),
	}
	// The instance's MAC follows its address, not its start: when a paired
	// host takes the instance over (or a resumed host's stale copy speaks
	// once before it steps down), neighbours' ARP entries stay right.
	var mac net.HardwareAddr
	if e.inst.Addr.Is4() {
		mac = overlay.InstanceMAC(e.inst.Addr)
		veth.PeerHardwareAddr = mac
	}
	// The previous run's veth dies with its namespace, which the kernel
	// tears down asynchronously: a restart can find the old host end still
	// there. It belongs to no live role, so it goes (bounded retries).
	for attempt := 0; ; attempt++ {
		err := h.LinkAdd(veth)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || attempt >= 20 {
			return fmt.Errorf("role %s: create veth %s: %w%s", e.inst.Name, veth.Name, err, moduleHint(err, "veth"))
		}
		if old, lerr := h.LinkByName(veth.Name); lerr == nil {
			h.LinkDel(old)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := h.LinkSetUp(veth); err != nil {
		return fmt.Errorf("role %s: veth %s up: %w", e.inst.Name, veth.Name, err)
	}
	if mac != nil {
		if err := pinMAC(h, veth, mac); err != nil {
			return fmt.Errorf("role %s: %w", e.inst.Name, err)
		}
	}
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("role %s: namespace of pid %d: %w", e.inst.Name, pid, err)
	}
	defer ns.Close()
	rh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("role %s: netlink in the role: %w", e.inst.Name, err)
	}
	defer rh.Close()
	link, err := rh.LinkByName(RoleInterface)
	if err != nil {
		return fmt.Errorf("role %s: veth inside: %w", e.inst.Name, err)
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(e.spec.Address)}
	if err := rh.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("role %s: address %s: %w", e.inst.Name, e.spec.Address, err)
	}
	if err := rh.LinkSetUp(link); err != nil {
		return fmt.Errorf("role %s: %s up: %w", e.inst.Name, RoleInterface, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: e.gw.AsSlice()}
	if err := rh.RouteAdd(route); err != nil {
		return fmt.Errorf("role %s: default route via %s: %w", e.inst.Name, e.gw, err)
	}
	return nil
}

// ntfSticky is linux/neighbour.h's NTF_STICKY: a bridge FDB entry that
// never roams to another port (not in x/sys/unix yet).
const ntfSticky = 0x40

// pinMAC binds mac to the role's bridge port with a static, sticky FDB
// entry: a frame from a stale copy of the same instance on the peer host
// (over the VXLAN port) must not move the bridge's idea of where the
// instance lives.
func pinMAC(h *netlink.Handle, port netlink.Link, mac net.HardwareAddr) error {
	n := &netlink.Neigh{
		LinkIndex:    port.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_NOARP,
		Flags:        netlink.NTF_MASTER | ntfSticky,
		HardwareAddr: mac,
	}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("pin %s to bridge port %s: %w", mac, port.Attrs().Name, err)
	}
	return nil
}

// volumeUp mounts the instance's data volume, or makes its directory when
// it has no managed volume.
func (e *Env) volumeUp() error {
	if e.spec.Volume == "" {
		return nil
	}
	if e.opts.Volumes != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		managed, err := e.opts.Volumes.Up(ctx, e.inst.Name)
		cancel()
		if err != nil {
			return fmt.Errorf("role %s: volume: %w", e.inst.Name, err)
		}
		if managed {
			return nil
		}
	}
	if err := os.MkdirAll(e.spec.Volume, 0o755); err != nil {
		return fmt.Errorf("role %s: volume: %w", e.inst.Name, err)
	}
	return nil
}

// cleanup removes what a run leaves on the host: the veth (its role end
// died with the namespace, or is still here if the start failed), the
// cgroup tree and the scratch state. Volume and logs stay.
func (e *Env) cleanup() error {
	var errs []error
	if h, err := e.handle(); err != nil {
		errs = append(errs, err)
	} else {
		for _, name := range []string{e.HostVeth()} {
			if l, err := h.LinkByName(name); err == nil {
				if err := h.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete veth %s: %w", name, err))
				}
			}
		}
		h.Close()
	}
	if e.spec.Cgroup != "" {
		g, err := cgroup.Open(e.opts.CgroupRoot, e.cgrel)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = g.Remove(ctx)
			cancel()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	// The scratch tmpfs lived in the role's mount namespace only; the host
	// side is an empty directory and the spec file.
	if err := os.RemoveAll(e.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// Last: the volume is busy until every process of the role is gone.
	if e.spec.Volume != "" && e.opts.Volumes != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := e.opts.Volumes.Down(ctx, e.inst.Name)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("role %s: cleanup: %w", e.inst.Name, err)
	}
	return nil
}
