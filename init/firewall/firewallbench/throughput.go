package firewallbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"magestack/init/firewall"
	"magestack/init/stackfile"
)

// throughputRun is how long each transfer lasts.
const throughputRun = 2 * time.Second

const throughputRounds = 5

// dnatPath is client → host (router, firewall) → lb on veths.
type dnatPath struct {
	client, host, lb netns.NsHandle
}

func (p *dnatPath) close() {
	p.client.Close()
	p.host.Close()
	p.lb.Close()
}

func mkIPNet(cidr string) *net.IPNet {
	pr := netip.MustParsePrefix(cidr)
	return &net.IPNet{IP: pr.Addr().AsSlice(), Mask: net.CIDRMask(pr.Bits(), 32)}
}

// link joins a (as an) and b (as bn) with a veth pair, addresses and
// default routes as given ("" for none).
func link(a netns.NsHandle, an, aAddr string, b netns.NsHandle, bn, bAddr, bGw string) error {
	ha, err := netlink.NewHandleAt(a, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(b, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer hb.Close()
	tmp := fmt.Sprintf("fwb%d", time.Now().UnixNano()%100000)
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: an}, PeerName: tmp}); err != nil {
		return fmt.Errorf("veth %s: %w", an, err)
	}
	peer, err := ha.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := ha.LinkSetNsFd(peer, int(b)); err != nil {
		return err
	}
	if peer, err = hb.LinkByName(tmp); err != nil {
		return err
	}
	if err := hb.LinkSetName(peer, bn); err != nil {
		return err
	}
	for _, x := range []struct {
		h    *netlink.Handle
		name string
		addr string
	}{{ha, an, aAddr}, {hb, bn, bAddr}} {
		l, err := x.h.LinkByName(x.name)
		if err != nil {
			return err
		}
		if err := x.h.AddrAdd(l, &netlink.Addr{IPNet: mkIPNet(x.addr)}); err != nil {
			return err
		}
		if err := x.h.LinkSetUp(l); err != nil {
			return err
		}
	}
	if bGw != "" {
		l, _ := hb.LinkByName(bn)
		if err := hb.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(bGw)}); err != nil {
			return err
		}
	}
	return nil
}

func newDNATPath() (*dnatPath, error) {
	var p dnatPath
	var err error
	if p.client, err = freshNS(); err != nil {
		return nil, err
	}
	if p.host, err = freshNS(); err != nil {
		return nil, err
	}
	if p.lb, err = freshNS(); err != nil {
		return nil, err
	}
	if err := link(p.host, "pub0", "192.0.2.1/24", p.client, "eth0", "192.0.2.100/24", "192.0.2.1"); err != nil {
		p.close()
		return nil, err
	}
	if err := link(p.host, "int0", "172.16.0.1/24", p.lb, "eth0", "172.16.0.30/24", "172.16.0.1"); err != nil {
		p.close()
		return nil, err
	}
	if err := inNS(p.host, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		p.close()
		return nil, err
	}
	return &p, nil
}

// transfer streams from the client to addr for throughputRun and returns
// bytes per second received by the lb side.
func (p *dnatPath) transfer(addr string) (float64, error) {
	var ln net.Listener
	if err := inNS(p.lb, func() (err error) { ln, err = net.Listen("tcp", "172.16.0.30:80"); return }); err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	var start time.Time
	err := inNS(p.client, func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		buf := make([]byte, 256<<10)
		start = time.Now()
		for time.Since(start) < throughputRun {
			if _, err := c.Write(buf); err != nil {
				c.Close()
				return err
			}
		}
		return c.Close()
	})
	if err != nil {
		return 0, err
	}
	n := <-got
	return float64(n) / time.Since(start).Seconds(), nil
}

// Throughput measures client → lb through the host: plain routing with no
// ruleset, then the public path through the firewall's DNAT (conntrack,
// filter chains, rate-limit meter).
func Throughput(w io.Writer) error {
	p, err := newDNATPath()
	if err != nil {
		return fmt.Errorf("dnat path: %w", err)
	}
	defer p.close()
	rs, err := firewall.Build(stackfile.Default(), firewall.HostView{PublicIfaces: []string{"pub0"}, InternalBridge: "int0"})
	if err != nil {
		return err
	}
	fw := firewall.NewInNetNS(int(p.host))
	defer fw.Close()
	// Interleaved rounds, so a busy neighbour on a shared machine slows
	// both sides alike.
	var plain, dnat []float64
	for range throughputRounds {
		r, err := p.transfer("172.16.0.30:80")
		if err != nil {
			return fmt.Errorf("plain transfer: %w", err)
		}
		plain = append(plain, r)
		if err := fw.Apply(context.Background(), rs); err != nil {
			return err
		}
		r, err = p.transfer("192.0.2.1:80")
		if err != nil {
			return fmt.Errorf("dnat transfer: %w", err)
		}
		dnat = append(dnat, r)
		if err := fw.Apply(context.Background(), &firewall.Ruleset{}); err != nil {
			return err
		}
	}
	mp, md := medianF(plain), medianF(dnat)
	fmt.Fprintf(w, "firewall: throughput on veth, median of %d x %v: routed without ruleset %.0f MB/s, through DNAT + filter %.0f MB/s, ratio %.2f (target >= 0.90)\n",
		throughputRounds, throughputRun, mp/1e6, md/1e6, md/mp)
	return nil
}

func medianF(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
