package firewall

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
	"sync"
	"time"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"magestack/init/stackfile"
)

// socketBuffer is the netlink socket buffer size: a ruleset with thousands
// of set elements overflows the default and fails with ENOBUFS/EMSGSIZE.
const socketBuffer = 8 << 20

// Firewall owns the host's table. Its methods serialise: one apply, update
// or read at a time per Firewall.
type Firewall struct {
	mu      sync.Mutex
	netnsFD int            // -1: the caller's network namespace
	cached  *nftables.Conn // kept between calls: a fresh socket per edit costs milliseconds
}

// New returns a Firewall for the current network namespace.
func New() *Firewall { return &Firewall{netnsFD: -1} }

// NewInNetNS returns a Firewall for the network namespace open at fd (the
// caller keeps fd open while the Firewall is used). Tests and tools use it
// to work on a namespace without switching threads.
func NewInNetNS(fd int) *Firewall { return &Firewall{netnsFD: fd} }

func bigBuffers(c *mdnetlink.Conn) error {
	// SO_*BUFFORCE ignores the rmem/wmem_max caps (we are root); fall back
	// to the capped variants when forcing is not allowed.
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		for _, o := range []struct{ force, plain int }{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.force, socketBuffer); e != nil {
				if e2 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.plain, socketBuffer); e2 != nil {
					serr = e2
				}
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// conn returns the kept netlink connection, dialing it on first use.
// Callers hold f.mu and call f.release(err) when done.
func (f *Firewall) conn() (*nftables.Conn, error) {
	if f.cached != nil {
		return f.cached, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	if f.netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(f.netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables netlink: %w", err)
	}
	f.cached = c
	return c, nil
}

// release drops the kept connection after a failure: unread replies from a
// rejected batch must not be taken for the answers to the next one.
func (f *Firewall) release(err error) {
	if err != nil && f.cached != nil {
		f.cached.CloseLasting()
		f.cached = nil
	}
}

// Close releases the netlink connection.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cached == nil {
		return nil
	}
	err := f.cached.CloseLasting()
	f.cached = nil
	return err
}

// Apply replaces the table inet magestack with rs in one netlink batch:
// the kernel commits a batch entirely or not at all, so on any error the
// previous table (or its absence) stays exactly as it was.
func (f *Firewall) Apply(ctx context.Context, rs *Ruleset) error {
	return f.batch(ctx, func(c *nftables.Conn) error {
		if err := queue(c, rs); err != nil {
			return fmt.Errorf("firewall: build batch: %w", err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("firewall: apply table inet %s (previous ruleset kept)%s: %w", rs.TableOrDefault(), hint(err), err)
		}
		return nil
	})
}

// batch runs one netlink batch on the kept connection under f.mu, and
// drops the connection when the batch fails.
func (f *Firewall) batch(ctx context.Context, run func(c *nftables.Conn) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	defer func() { f.release(err) }()
	return run(c)
}

// RemoveTable deletes the inet table name, if it exists, in one batch
// (add then delete, as Apply does, so a missing table is no error).
func (f *Firewall) RemoveTable(ctx context.Context, name string) error {
	return f.batch(ctx, func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
		c.AddTable(t)
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("firewall: remove table inet %s: %w", name, err)
		}
		return nil
	})
}

// Read returns the live table decoded from the kernel.
func (f *Firewall) Read(ctx context.Context) (_ *Ruleset, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return nil, err
	}
	defer func() {
		if !errors.Is(err, errNoTable) {
			f.release(err)
		}
	}()
	rs, err := read(c)
	if err != nil {
		return nil, fmt.Errorf("firewall: read: %w", err)
	}
	return rs, nil
}

// Check compares the live table with want and lists the differences as
// diff lines ("- " only wanted, "+ " only live); counters are ignored.
func (f *Firewall) Check(ctx context.Context, want *Ruleset) ([]string, error) {
	got, err := f.Read(ctx)
	if errors.Is(err, errNoTable) {
		return []string{fmt.Sprintf("- table inet %s (missing)", TableName)}, nil
	}
	if err != nil {
		return nil, err
	}
	return Diff(want, got), nil
}

// UpdateAllow edits the public allow-list set in place (one small batch),
// leaving every rule and counter untouched. Removing absent or adding
// present prefixes is an error from the kernel, and then nothing changes.
func (f *Firewall) UpdateAllow(ctx context.Context, add, remove []netip.Prefix) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	defer func() { f.release(err) }()
	set := &nftables.Set{
		Table:    &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName},
		Name:     AllowSet,
		KeyType:  nftables.TypeIPAddr,
		Interval: true,
	}
	if len(remove) > 0 {
		elems, err := setElements(true, remove)
		if err != nil {
			return fmt.Errorf("firewall: allow-list remove: %w", err)
		}
		if err := deleteElements(c, set, elems); err != nil {
			return fmt.Errorf("firewall: allow-list remove: %w", err)
		}
	}
	if len(add) > 0 {
		elems, err := setElements(true, add)
		if err != nil {
			return fmt.Errorf("firewall: allow-list add: %w", err)
		}
		if err := addElements(c, set, elems); err != nil {
			return fmt.Errorf("firewall: allow-list add: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: allow-list update (set unchanged)%s: %w", hint(err), err)
	}
	return nil
}

// PublicIfaces finds the uplinks of the running system: the links that
// carry a default route, else every up physical link. magestack's own
// bridge and VPN interface are never public.
func PublicIfaces() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("firewall: list links: %w", err)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("firewall: list routes: %w", err)
	}
	withDefault := map[int]bool{}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
			withDefault[r.LinkIndex] = true
		}
	}
	var viaDefault, physical []string
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Name == DefaultBridge || a.Name == DefaultVPNIface {
			continue
		}
		if withDefault[a.Index] {
			viaDefault = append(viaDefault, a.Name)
		}
		if a.Flags&net.FlagUp != 0 && l.Type() == "device" {
			physical = append(physical, a.Name)
		}
	}
	if len(viaDefault) > 0 {
		return viaDefault, nil
	}
	if len(physical) == 0 {
		return nil, errors.New("firewall: no public interface found (no default route, no up physical link)")
	}
	return physical, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// Modules are the kernel modules the policy uses on a modular kernel
// (Debian's): the nftables expressions, the nat chain type, conntrack and
// bridge netfilter. nf_tables requests most of them itself through the
// kernel's modprobe helper; br_netfilter is never requested by anyone.
var Modules = []string{"nf_tables", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_ct", "nft_limit",
	"nft_nat", "nft_masq", "nft_fib_inet", "br_netfilter"}

// ModuleLoader loads one kernel module by name (init/kmod's Loader.Load).
type ModuleLoader func(ctx context.Context, name string) error

// ApplyForStack is PID 1's firewall step, and what a config reconcile calls
// for every new revision: load the modules (when a loader is given), build
// the ruleset for this host (uplinks found with PublicIfaces) and Sync it
// (an allow-list-only change is edited in place, anything else replaces the
// table in one batch), with bridge netfilter on so role-to-role
// traffic on ms-int passes the forward chain. A module that fails to load
// is reported and the apply is still tried: built-in code needs none.
func ApplyForStack(ctx context.Context, stack *stackfile.Stack, hostname string, log *slog.Logger, load ...ModuleLoader) error {
	return ApplyForHost(ctx, stack, HostView{HostName: hostname}, log, load...)
}

// ApplyForHost is ApplyForStack with the host's own services spelled out:
// give ClusterPorts (raft, heartbeats) and PairIfaces, or the input
// chain's default drop keeps the peers out. Empty PublicIfaces are found
// with PublicIfaces.
func ApplyForHost(ctx context.Context, stack *stackfile.Stack, host HostView, log *slog.Logger, load ...ModuleLoader) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	for _, l := range load {
		for _, m := range Modules {
			if err := l(ctx, m); err != nil {
				log.Warn("firewall: module did not load", "module", m, "err", err)
			}
		}
	}
	if len(host.PublicIfaces) == 0 {
		pub, err := PublicIfaces()
		if err != nil {
			return err
		}
		host.PublicIfaces = pub
	}
	pub := host.PublicIfaces
	rs, err := Build(stack, host)
	if err != nil {
		return err
	}
	if err := EnableBridgeFilter(); err != nil {
		// Without it, roles on the same bridge would bypass the role-to-role
		// allow-list; refuse rather than pretend.
		return err
	}
	fw := New()
	defer fw.Close()
	res, err := fw.Sync(ctx, rs)
	if err != nil {
		return err
	}
	log.Info("firewall applied", "table", "inet "+TableName, "change", string(res), "public", pub, "rules", countRules(rs), "took", time.Since(start))
	if err := SaveDesired(DesiredPath, rs); err != nil {
		log.Warn("firewall: cannot record the applied ruleset for `firewall check`", "err", err)
	}
	return nil
}

// EnableBridgeFilter makes bridged IPv4/IPv6 traffic traverse the inet
// hooks (br_netfilter; built in or loaded as a module beforehand).
func EnableBridgeFilter() error {
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		p := "/proc/sys/net/bridge/" + k
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("firewall: enable bridge filtering (%s; is br_netfilter loaded?): %w", p, err)
		}
	}
	return nil
}

func countRules(rs *Ruleset) int {
	n := 0
	for _, c := range rs.Chains {
		n += len(c.Rules)
	}
	return n
}

// hint explains the kernel's terse batch errors.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.ENOENT):
		return " [a rule or element names a chain, set or element that does not exist]"
	case errors.Is(err, unix.ENFILE):
		return " [a set is over its size limit]"
	case errors.Is(err, unix.EEXIST):
		return " [an element is already present or overlaps another]"
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return " [the kernel lacks an nftables feature: is the module loaded?]"
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EMSGSIZE):
		return " [netlink buffer too small for the batch]"
	}
	return ""
}

// DesiredPath records the ruleset the host last applied, so `magestack
// firewall check` compares the live table with what the running config
// asked for (whatever source it came from).
const DesiredPath = "/run/magestack/firewall/desired.nft"

// SaveDesired writes rs (counters zeroed) to path atomically.
func SaveDesired(path string, rs *Ruleset) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(Render(ZeroCounters(rs))), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CheckText compares the live table with a rendered ruleset (as
// SaveDesired writes it); counters are ignored.
func (f *Firewall) CheckText(ctx context.Context, want string) ([]string, error) {
	live, err := f.Read(ctx)
	if errors.Is(err, errNoTable) {
		return []string{fmt.Sprintf("- table inet %s (missing)", TableName)}, nil
	}
	if err != nil {
		return nil, err
	}
	return lineDiff(strings.Split(want, "\n"), strings.Split(Render(ZeroCounters(live)), "\n")), nil
}
