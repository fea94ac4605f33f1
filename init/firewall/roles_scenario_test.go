package firewall

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"magestack/init/stackfile"
	"magestack/services"
)

// The pair lab's addresses: this host is dh1 (hostPublic), its peer dh2
// and the witness sit on the public LAN (the public namespace carries their
// addresses), the peer's pair-link end is a namespace of its own.
const (
	peerPublic  = "192.0.2.12"
	witnessAddr = "192.0.2.5"
	bmcAddr     = "192.0.2.200"
	labVIP      = "192.0.2.50"
	hostPair    = "10.99.0.1"
	peerPair    = "10.99.0.2"
	bridgeAddr  = "172.16.0.1"
)

// Cluster ports as hostView gives them to a paired host (clusterconf and
// failover): raft, heartbeats, cluster RPC.
var labClusterPorts = []services.Port{{Proto: "tcp", Port: 7700}, {Proto: "udp", Port: 7701}, {Proto: "tcp", Port: 7702}}

func pairStack(s *stackfile.Stack) {
	s.Hosts = []stackfile.Host{
		{Name: "dh1", MAC: "52:54:00:00:00:01", Address: netip.MustParsePrefix(hostPublic + "/24"), Pair: "dh2",
			PairLink: &stackfile.PairLink{MAC: "52:54:00:00:01:01", Address: netip.MustParsePrefix(hostPair + "/30")}},
		{Name: "dh2", MAC: "52:54:00:00:00:02", Address: netip.MustParsePrefix(peerPublic + "/24"), Pair: "dh1",
			PairLink: &stackfile.PairLink{MAC: "52:54:00:00:01:02", Address: netip.MustParsePrefix(peerPair + "/30")},
			Fence:    &stackfile.Fence{Type: "redfish", Address: "https://" + bmcAddr}},
	}
	s.PairNet = netip.MustParsePrefix("10.99.0.0/30")
	s.Public.VIP = netip.MustParsePrefix(labVIP + "/24")
	s.Witness = witnessAddr + ":7700"
}

type pairLab struct {
	*lab
	pair int // the peer's pair-link namespace
}

// newPairLab is the namespace lab for dh1 of a pair: cluster ports served
// on every address of the host, of the peer (public and pair link) and of
// the witness, and a BMC's HTTPS port, each answering with its name.
func newPairLab(t *testing.T) *pairLab {
	l := newLabView(t, HostView{PublicIfaces: []string{"eth0"}, PairIfaces: []string{"pair0"}, HostName: "dh1",
		APIPort: apiPort, ClusterPorts: labClusterPorts}, pairStack)
	pl := &pairLab{lab: l}
	pairNS, pairFD := netns(t)
	pl.pair = pairFD
	veth(t, l.hostNS, "pair0", pairNS, "pair0")
	ipns(t, l.hostNS, "addr", "add", hostPair+"/30", "dev", "pair0")
	ipns(t, pairNS, "addr", "add", peerPair+"/30", "dev", "pair0")
	ipns(t, l.hostNS, "addr", "add", labVIP+"/24", "dev", "eth0")
	for _, a := range []string{peerPublic, witnessAddr, bmcAddr} {
		ipns(t, l.publicNS, "addr", "add", a+"/24", "dev", "eth0")
	}
	for _, p := range []int{7700, 7702} {
		serve(t, l.host, fmt.Sprintf(":%d", p), "host-cluster")
		serve(t, l.public, fmt.Sprintf("%s:%d", peerPublic, p), "peer-cluster")
		serve(t, l.public, fmt.Sprintf("%s:%d", witnessAddr, p), "witness-cluster")
		serve(t, pairFD, fmt.Sprintf("%s:%d", peerPair, p), "peer-pair-cluster")
	}
	serve(t, l.public, bmcAddr+":443", "bmc")
	return pl
}

// serveUDP receives datagrams on addr inside a namespace and passes each
// sender's address on.
func serveUDP(t *testing.T, fd int, addr string) <-chan string {
	t.Helper()
	var pc net.PacketConn
	if err := inNetNS(fd, func() (err error) { pc, err = net.ListenPacket("udp", addr); return }); err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- from.(*net.UDPAddr).IP.String():
			default:
			}
		}
	}()
	return got
}

// sendUDP sends one datagram from a namespace, from the local address src
// ("" lets the kernel choose).
func sendUDP(t *testing.T, fd int, src, dst string) {
	t.Helper()
	err := inNetNS(fd, func() error {
		var laddr *net.UDPAddr
		if src != "" {
			laddr = &net.UDPAddr{IP: net.ParseIP(src)}
		}
		raddr, err := net.ResolveUDPAddr("udp", dst)
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp", laddr, raddr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("heartbeat"))
		return err
	})
	if err != nil {
		t.Fatalf("send udp %s -> %s: %v", src, dst, err)
	}
}

// received waits for a datagram: its sender, or "" after timeout.
func received(c <-chan string, timeout time.Duration) string {
	select {
	case from := <-c:
		return from
	case <-time.After(timeout):
		return ""
	}
}

// TestRolesCannotReachTheCluster plays a compromised role (web1's PHP)
// against every cluster address of a pair: the host's own addresses
// (public, VIP, bridge, pair link), the peer's (public and pair link),
// the witness and the peer's BMC. The members themselves still reach
// each other, and the roles keep their allow-list and internet egress.
func TestRolesCannotReachTheCluster(t *testing.T) {
	l := newPairLab(t)
	r := l.roles
	hb := func(addr string) string { return addr + ":7701" }

	t.Run("members reach the cluster ports", func(t *testing.T) {
		l.t = t
		l.mustReach(l.host, "dh1", peerPublic+":7700", "peer-cluster")
		l.mustReach(l.host, "dh1", peerPair+":7702", "peer-pair-cluster")
		l.mustReach(l.host, "dh1", witnessAddr+":7700", "witness-cluster")
		l.mustReach(l.pair, "dh2 (pair link)", hostPair+":7700", "host-cluster")
		// The public namespace holds the peer's and the witness's
		// addresses: dial from each as its own source.
		for _, src := range []string{peerPublic, witnessAddr} {
			got, err := dialFrom(l.public, src, hostPublic+":7702", reachTimeout)
			if err != nil || got != "host-cluster" {
				t.Errorf("%s -> dh1:7702: %q %v, want host-cluster", src, got, err)
			}
		}
		if got, err := dialFrom(l.public, publicClient, hostPublic+":7700", blockTimeout); err == nil {
			t.Errorf("a stranger on the public LAN reached dh1's raft port (%q)", got)
		}
	})
	t.Run("a role reaches no cluster port", func(t *testing.T) {
		l.t = t
		// Every role instance, in parallel: a blocked dial costs the
		// whole blockTimeout.
		var wg sync.WaitGroup
		for name, fd := range r {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, addr := range []string{hostPublic, labVIP, bridgeAddr, hostPair, peerPublic, peerPair, witnessAddr} {
					for _, p := range []int{7700, 7702} {
						l.mustNotReach(fd, name, fmt.Sprintf("%s:%d", addr, p))
					}
				}
				l.mustNotReach(fd, name, bmcAddr+":443")
				l.mustNotReach(fd, name, labVIP+":80")
			}()
		}
		wg.Wait()
	})
	t.Run("role heartbeats go nowhere", func(t *testing.T) {
		l.t = t
		host := serveUDP(t, l.host, ":7701")
		peer := serveUDP(t, l.public, hb(peerPublic))
		witness := serveUDP(t, l.public, hb(witnessAddr))
		pair := serveUDP(t, l.pair, hb(peerPair))
		// Controls first: members' heartbeats arrive.
		sendUDP(t, l.public, peerPublic, hb(hostPublic))
		if from := received(host, reachTimeout); from != peerPublic {
			t.Fatalf("the peer's heartbeat to dh1 arrived from %q, want %s", from, peerPublic)
		}
		sendUDP(t, l.host, "", hb(peerPublic))
		if from := received(peer, reachTimeout); from != hostPublic {
			t.Fatalf("dh1's heartbeat to the peer arrived from %q, want %s", from, hostPublic)
		}
		for _, dst := range []string{hostPublic, bridgeAddr, hostPair, peerPublic, peerPair, witnessAddr} {
			sendUDP(t, r["web1"], "", hb(dst))
		}
		// A role forging the peer's address on the bridge: the host's
		// input trusts that source for heartbeats, unless it came from
		// the roles' bridge.
		ipns(t, l.roleNS["web1"], "addr", "add", peerPublic+"/32", "dev", "eth0")
		sendUDP(t, r["web1"], peerPublic, hb(bridgeAddr))
		sendUDP(t, r["web1"], peerPublic, hb(hostPublic))
		for name, c := range map[string]<-chan string{"dh1": host, "peer": peer, "witness": witness, "peer pair link": pair} {
			if from := received(c, blockTimeout); from != "" {
				t.Errorf("%s received a heartbeat from web1 (source %s)", name, from)
			}
		}
	})
	t.Run("allow-list and egress unchanged", func(t *testing.T) {
		l.t = t
		l.mustReach(r["lb1"], "lb1", "172.16.0.100:80", "web1")
		l.mustReach(r["web1"], "web1", "172.16.0.40:3306", "db1")
		l.mustReach(r["web1"], "web1", publicClient+":8080", "internet")
		l.mustReach(l.public, "public", labVIP+":80", "lb1")
		l.mustReach(l.public, "public", hostPublic+":443", "lb1")
	})
	t.Run("drops counted", func(t *testing.T) {
		l.t = t
		live, err := l.fw.Read(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, chain := range []string{"input", "forward"} {
			i := ruleIndex(live, chain, `iifname "ms-int"`)
			for _, c := range live.Chains {
				if c.Name == chain && i >= 0 && counterOf(c.Rules[i]).Packets == 0 {
					t.Errorf("%s: the roles' drop counted nothing: %s", chain, c.Rules[i])
				}
			}
		}
	})
}

// dialFrom is dial with a chosen local address.
func dialFrom(fd int, src, addr string, timeout time.Duration) (string, error) {
	var greeting string
	err := inNetNS(fd, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		greeting = string(buf[:n])
		return err
	})
	if len(greeting) > 0 && greeting[len(greeting)-1] == '\n' {
		greeting = greeting[:len(greeting)-1]
	}
	return greeting, err
}
