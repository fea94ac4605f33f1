package qemu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Impairment is what a Cable does to every frame, in each direction: what
// `tc qdisc add ... netem loss L delay D` does, for host kernels without
// sch_netem (nftables can drop but not delay).
type Impairment struct {
	Loss  float64       // share of frames dropped at random, 0..1
	Delay time.Duration // added to every frame that is kept
}

func (im Impairment) validate() error {
	if im.Loss < 0 || im.Loss > 1 {
		return fmt.Errorf("impairment: loss %v outside 0..1", im.Loss)
	}
	if im.Delay < 0 {
		return fmt.Errorf("impairment: negative delay %v", im.Delay)
	}
	return nil
}

// CableStats counts one direction's frames.
type CableStats struct {
	Passed     uint64 // delivered
	Lost       uint64 // dropped by the impairment's loss
	Overflowed uint64 // dropped because the delay queue was full
}

// QueueFrames bounds each direction's delay queue; like a NIC ring, frames
// beyond it are dropped (counted in CableStats.Overflowed).
const QueueFrames = 4096

// framePort is one end of a cable: it moves whole Ethernet frames.
type framePort interface {
	readFrame(b []byte) (int, error)
	writeFrame(b []byte) error
	close() error
}

// Cable is a userspace Ethernet cable between a VM's NIC and a tap on a
// bridge of a Net. QEMU's socket netdev sends each of the guest's frames as
// one UDP datagram on the namespace's loopback; the cable forwards them to
// its tap and the tap's frames back, dropping and delaying them as its
// Impairment says. Frames keep their order (one FIFO queue per direction).
type Cable struct {
	Name string // the tap on the bridge

	a, b framePort // a: the VM side, b: the bridge side
	imp  atomic.Pointer[Impairment]

	rngMu sync.Mutex
	rng   *rand.Rand

	toVM, fromVM lane
	vmAddr       string // where QEMU listens (its NIC's UDP address)
	relayAddr    string // where the cable listens

	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// lane is one direction: a bounded FIFO of frames waiting for their time.
type lane struct {
	q                        chan queued
	passed, lost, overflowed atomic.Uint64
}

type queued struct {
	due   time.Time
	frame []byte
}

func (l *lane) stats() CableStats {
	return CableStats{Passed: l.passed.Load(), Lost: l.lost.Load(), Overflowed: l.overflowed.Load()}
}

// newCable joins a (the VM side) and b (the bridge side); seed fixes the
// random loss pattern.
func newCable(name string, a, b framePort, seed uint64) *Cable {
	c := &Cable{Name: name, a: a, b: b, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		toVM: lane{q: make(chan queued, QueueFrames)}, fromVM: lane{q: make(chan queued, QueueFrames)},
		done: make(chan struct{})}
	c.imp.Store(&Impairment{})
	c.wg.Add(4)
	go c.receive(a, &c.fromVM)
	go c.deliver(&c.fromVM, b)
	go c.receive(b, &c.toVM)
	go c.deliver(&c.toVM, a)
	return c
}

// Impair replaces the impairment; frames already queued keep their time.
func (c *Cable) Impair(im Impairment) error {
	if err := im.validate(); err != nil {
		return fmt.Errorf("cable %s: %w", c.Name, err)
	}
	c.imp.Store(&im)
	return nil
}

// Impairment is the current setting.
func (c *Cable) Impairment() Impairment { return *c.imp.Load() }

// Stats returns the frames counted towards the VM and from it.
func (c *Cable) Stats() (toVM, fromVM CableStats) { return c.toVM.stats(), c.fromVM.stats() }

// NIC is a VM NIC plugged into this cable; set its MAC (and ROM).
func (c *Cable) NIC(mac string) NIC {
	return NIC{MAC: mac, UDP: c.vmAddr, UDPPeer: c.relayAddr}
}

// Close unplugs the cable (the tap stays on the bridge, without carrier).
func (c *Cable) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.done)
		err = errors.Join(c.a.close(), c.b.close())
		c.wg.Wait()
	})
	return err
}

func (c *Cable) lose(p float64) bool {
	if p <= 0 {
		return false
	}
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return c.rng.Float64() < p
}

// receive reads frames from port and queues the kept ones on l.
func (c *Cable) receive(from framePort, l *lane) {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := from.readFrame(buf)
		if err != nil {
			select {
			case <-c.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			// A transient error: do not spin on it.
			time.Sleep(time.Millisecond)
			continue
		}
		im := c.imp.Load()
		if c.lose(im.Loss) {
			l.lost.Add(1)
			continue
		}
		frame := append([]byte(nil), buf[:n]...)
		select {
		case l.q <- queued{due: time.Now().Add(im.Delay), frame: frame}:
		default:
			l.overflowed.Add(1)
		}
	}
}

// deliver writes l's frames to port when they are due, in order.
func (c *Cable) deliver(l *lane, to framePort) {
	defer c.wg.Done()
	for {
		var f queued
		select {
		case <-c.done:
			return
		case f = <-l.q:
		}
		if d := time.Until(f.due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-c.done:
				t.Stop()
				return
			case <-t.C:
			}
		}
		if err := to.writeFrame(f.frame); err == nil {
			l.passed.Add(1)
		}
	}
}

// udpPort is the VM side: QEMU's socket netdev, one frame per datagram.
type udpPort struct {
	conn *net.UDPConn
	peer *net.UDPAddr
}

func (p *udpPort) readFrame(b []byte) (int, error) {
	for {
		n, from, err := p.conn.ReadFromUDP(b)
		if err != nil {
			return 0, err
		}
		// Only QEMU's NIC talks to the cable.
		if from.Port == p.peer.Port && from.IP.Equal(p.peer.IP) {
			return n, nil
		}
	}
}

func (p *udpPort) writeFrame(b []byte) error {
	_, err := p.conn.WriteToUDP(b, p.peer)
	return err
}

func (p *udpPort) close() error { return p.conn.Close() }

// tapPort is the bridge side: a tap read and written without packet info.
type tapPort struct{ f *os.File }

func (p tapPort) readFrame(b []byte) (int, error) { return p.f.Read(b) }
func (p tapPort) writeFrame(b []byte) error {
	_, err := p.f.Write(b)
	return err
}
func (p tapPort) close() error { return p.f.Close() }

// openTap attaches to the tap name of the calling thread's namespace.
func openTap(name string) (*os.File, error) {
	// Non-blocking so that the runtime poller serves reads and Close ends
	// them.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// AddCable puts a tap called name on br0 and plugs a Cable into it, for a
// VM NIC made with Cable.NIC (QEMU must run in this Net, Options.NetNS).
// The cable starts unimpaired and is closed when the test ends.
func (n *Net) AddCable(name string) *Cable {
	n.t.Helper()
	return n.AddCableTo(BridgeName, name)
}

// AddCableTo is AddCable on another bridge of the namespace.
func (n *Net) AddCableTo(bridge, name string) *Cable {
	n.t.Helper()
	n.AddTapTo(bridge, name)
	var tap *os.File
	var relay *net.UDPConn
	var vmAddr *net.UDPAddr
	err := n.Do(func() error {
		var err error
		if tap, err = openTap(name); err != nil {
			return err
		}
		loop := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		if relay, err = net.ListenUDP("udp", loop); err != nil {
			tap.Close()
			return fmt.Errorf("cable %s: relay socket: %w", name, err)
		}
		// A port for QEMU's end: free now, and nothing else runs in this
		// private namespace to take it before QEMU binds it.
		probe, err := net.ListenUDP("udp", loop)
		if err != nil {
			tap.Close()
			relay.Close()
			return fmt.Errorf("cable %s: picking the VM's port: %w", name, err)
		}
		vmAddr = probe.LocalAddr().(*net.UDPAddr)
		return probe.Close()
	})
	if err != nil {
		n.t.Fatal(err)
	}
	c := newCable(name, &udpPort{conn: relay, peer: vmAddr}, tapPort{tap}, uint64(time.Now().UnixNano()))
	c.vmAddr, c.relayAddr = vmAddr.String(), relay.LocalAddr().String()
	n.t.Cleanup(func() { c.Close() })
	return c
}
