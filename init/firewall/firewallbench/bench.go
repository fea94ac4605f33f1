// Package firewallbench measures the firewall's figures for `make bench`:
// applying a 500-rule ruleset with a 10,000-address allow-list through
// netlink against `nft -f` loading the same text, and the cost of editing
// one allow-list address. Every measurement runs in a fresh network
// namespace; needs root and the nft binary (only for the comparison).
package firewallbench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/firewall"
	"magestack/init/stackfile"
)

const (
	rounds    = 5
	setSize   = 10000
	ruleCount = 500
	editCount = 50
)

// Ruleset is the benchmark ruleset: the default stack's policy padded with
// role-to-role style rules up to 500, and a 10,000-address allow-list.
func Ruleset() (*firewall.Ruleset, error) {
	rs, err := firewall.Build(stackfile.Default(), firewall.HostView{PublicIfaces: []string{"eth0"}})
	if err != nil {
		return nil, err
	}
	n := 0
	for _, c := range rs.Chains {
		n += len(c.Rules)
	}
	fwd := &rs.Chains[1]
	for i := 0; n < ruleCount; i++ {
		src := netip.AddrFrom4([4]byte{10, 200, byte(i / 250), byte(1 + i%250)})
		fwd.Rules = append(fwd.Rules, firewall.Rule{Comment: "bench", Stmts: []firewall.Stmt{
			firewall.IPAddr{Prefix: netip.PrefixFrom(src, 32)},
			firewall.IPAddr{Dst: true, Prefix: netip.MustParsePrefix("172.16.0.40/32")},
			firewall.Ports{Proto: "tcp", Ports: []uint16{uint16(10000 + i)}},
			firewall.Counter{}, firewall.Verdict{Kind: "accept"},
		}})
		n++
	}
	elems := make([]netip.Prefix, setSize)
	for i := range elems {
		// every other address, so no two elements merge into a range
		v := uint32(100<<24|64<<16) + uint32(2*i)
		elems[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32)
	}
	rs.Sets[0].Elements = elems
	return rs, nil
}

// freshNS creates a new network namespace and returns its handle; the
// calling thread is not moved.
func freshNS() (netns.NsHandle, error) {
	type res struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		// This thread ends up in the new namespace and is discarded.
		runtime.LockOSThread()
		h, err := netns.New()
		c <- res{h, err}
	}()
	r := <-c
	return r.h, r.err
}

// inNS runs f on a thread inside ns (discarded afterwards).
func inNS(ns netns.NsHandle, f func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			c <- err
			return
		}
		c <- f()
	}()
	return <-c
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Run prints the figures.
func Run(w io.Writer) error {
	rs, err := Ruleset()
	if err != nil {
		return err
	}
	text := firewall.Render(rs)
	f, err := os.CreateTemp("", "magestack-bench-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(text); err != nil {
		return err
	}
	f.Close()
	ctx := context.Background()

	var goTimes, nftTimes, replaceTimes, goCPU, nftCPU []time.Duration
	for range rounds {
		ns, err := freshNS()
		if err != nil {
			return fmt.Errorf("new netns: %w", err)
		}
		fw := firewall.NewInNetNS(int(ns))
		cpu0 := selfCPU()
		start := time.Now()
		if err := fw.Apply(ctx, rs); err != nil {
			ns.Close()
			return err
		}
		goTimes = append(goTimes, time.Since(start))
		goCPU = append(goCPU, selfCPU()-cpu0)
		start = time.Now()
		if err := fw.Apply(ctx, rs); err != nil {
			ns.Close()
			return err
		}
		replaceTimes = append(replaceTimes, time.Since(start))
		ns.Close()

		ns2, err := freshNS()
		if err != nil {
			return fmt.Errorf("new netns: %w", err)
		}
		var d time.Duration
		err = inNS(ns2, func() error {
			cmd := exec.Command("nft", "-f", f.Name())
			start := time.Now()
			out, err := cmd.CombinedOutput()
			d = time.Since(start)
			if err != nil {
				return fmt.Errorf("nft -f: %v: %s", err, out)
			}
			// The kernel processes the batch inside nft's sendmsg, so its
			// work is in nft's system time, as ours is in ours.
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				nftCPU = append(nftCPU, time.Duration(ru.Utime.Nano()+ru.Stime.Nano()))
			}
			return nil
		})
		ns2.Close()
		if err != nil {
			return err
		}
		nftTimes = append(nftTimes, d)
	}
	rules := 0
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	g, n := median(goTimes), median(nftTimes)
	fmt.Fprintf(w, "firewall: apply %d rules + %d-address set (fresh netns, median of %d): netlink %v, nft -f %v, ratio %.2f (target <= 1.0)\n",
		rules, setSize, rounds, g.Round(time.Microsecond), n.Round(time.Microsecond), float64(g)/float64(n))
	if len(nftCPU) == len(goCPU) {
		gc, nc := median(goCPU), median(nftCPU)
		fmt.Fprintf(w, "firewall: same, CPU time (user+system, kernel work included; steadier on a busy machine): netlink %v, nft -f %v, ratio %.2f\n",
			gc.Round(time.Microsecond), nc.Round(time.Microsecond), float64(gc)/float64(nc))
	}
	fmt.Fprintf(w, "firewall: replace the same ruleset in place: %v\n", median(replaceTimes).Round(time.Microsecond))

	ns, err := freshNS()
	if err != nil {
		return err
	}
	defer ns.Close()
	fw := firewall.NewInNetNS(int(ns))
	if err := fw.Apply(ctx, rs); err != nil {
		return err
	}
	var adds, dels []time.Duration
	for i := range editCount {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), 32)
		start := time.Now()
		if err := fw.UpdateAllow(ctx, []netip.Prefix{p}, nil); err != nil {
			return fmt.Errorf("add %s (round %d): %w", p, i, err)
		}
		adds = append(adds, time.Since(start))
		start = time.Now()
		if err := fw.UpdateAllow(ctx, nil, []netip.Prefix{p}); err != nil {
			return fmt.Errorf("remove %s (round %d): %w", p, i, err)
		}
		dels = append(dels, time.Since(start))
	}
	fmt.Fprintf(w, "firewall: allow-list edit in a %d-address set (median of %d): add %v, remove %v (target <= 5ms)\n",
		setSize, editCount, median(adds).Round(time.Microsecond), median(dels).Round(time.Microsecond))
	return Throughput(w)
}

// selfCPU is this process's user+system time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
