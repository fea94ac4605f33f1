package qemu

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// loopCable joins two test sockets ("vm" and "bridge") through a cable
// whose ends are UDP sockets on loopback.
func loopCable(t *testing.T, seed uint64) (c *Cable, vm, bridge *net.UDPConn) {
	t.Helper()
	listen := func() *net.UDPConn {
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadBuffer(4 << 20)
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	vm, bridge = listen(), listen()
	ra, rb := listen(), listen()
	c = newCable("test", &udpPort{conn: ra, peer: vm.LocalAddr().(*net.UDPAddr)},
		&udpPort{conn: rb, peer: bridge.LocalAddr().(*net.UDPAddr)}, seed)
	c.relayAddr = ra.LocalAddr().String()
	t.Cleanup(func() { c.Close() })
	return c, vm, bridge
}

// frame is a numbered test frame stamped with its send time.
func frame(seq uint32) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b, seq)
	binary.BigEndian.PutUint64(b[4:], uint64(time.Now().UnixNano()))
	return b
}

type arrival struct {
	seq      uint32
	sent, at time.Time
}

// collect reads frames on conn until it is quiet for quiet.
func collect(conn *net.UDPConn, quiet time.Duration) []arrival {
	var out []arrival
	buf := make([]byte, 2048)
	for {
		conn.SetReadDeadline(time.Now().Add(quiet))
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			return out
		}
		if n >= 12 {
			out = append(out, arrival{seq: binary.BigEndian.Uint32(buf), sent: time.Unix(0, int64(binary.BigEndian.Uint64(buf[4:]))), at: time.Now()})
		}
	}
}

// TestCableLossDelayOrder: with 20% loss and 50 ms delay, about a fifth of
// the frames are lost, every kept frame arrives no earlier than 50 ms after
// it was sent, in order, and the counters add up to what was sent. The other
// direction is impaired the same way.
func TestCableLossDelayOrder(t *testing.T) {
	c, vm, bridge := loopCable(t, 42)
	if err := c.Impair(Impairment{Loss: 0.2, Delay: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	relay, _ := net.ResolveUDPAddr("udp", c.relayAddr)
	const sent = 2000
	got := make(chan []arrival)
	go func() { got <- collect(bridge, Scale(2*time.Second)) }()
	for i := range uint32(sent) {
		if _, err := vm.WriteToUDP(frame(i), relay); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // stay below the socket buffers
		}
	}
	arrived := <-got
	_, fromVM := c.Stats()
	t.Logf("from the VM: sent %d, %+v, received %d", sent, fromVM, len(arrived))
	if fromVM.Passed+fromVM.Lost+fromVM.Overflowed != sent {
		t.Errorf("counters %+v do not add up to the %d frames sent", fromVM, sent)
	}
	if uint64(len(arrived)) != fromVM.Passed {
		t.Errorf("received %d frames, the cable says it passed %d", len(arrived), fromVM.Passed)
	}
	if lossPct := float64(fromVM.Lost) * 100 / sent; lossPct < 16 || lossPct > 24 {
		t.Errorf("lost %.1f%% of the frames, want about 20%%", lossPct)
	}
	var last int64 = -1
	for _, a := range arrived {
		if int64(a.seq) <= last {
			t.Fatalf("frame %d arrived after frame %d: out of order", a.seq, last)
		}
		last = int64(a.seq)
		if d := a.at.Sub(a.sent); d < 50*time.Millisecond {
			t.Fatalf("frame %d arrived %v after it was sent, before the 50 ms delay", a.seq, d)
		}
	}

	// The other direction: bridge → VM.
	toRelay, _ := net.ResolveUDPAddr("udp", c.b.(*udpPort).conn.LocalAddr().String())
	go func() { got <- collect(vm, Scale(2*time.Second)) }()
	for i := range uint32(500) {
		bridge.WriteToUDP(frame(i), toRelay)
	}
	back := <-got
	toVM, _ := c.Stats()
	if toVM.Lost == 0 || uint64(len(back)) != toVM.Passed || toVM.Passed+toVM.Lost+toVM.Overflowed != 500 {
		t.Errorf("towards the VM: %+v, received %d of 500", toVM, len(back))
	}
}

// TestCableQueueIsBounded: frames beyond QueueFrames waiting for their delay
// are dropped and counted, not buffered without end.
func TestCableQueueIsBounded(t *testing.T) {
	c, vm, bridge := loopCable(t, 1)
	c.Impair(Impairment{Delay: time.Hour})
	relay, _ := net.ResolveUDPAddr("udp", c.relayAddr)
	const sent = QueueFrames + 2000
	for i := range uint32(sent) {
		vm.WriteToUDP(frame(i), relay)
		if i%50 == 49 {
			time.Sleep(time.Millisecond)
		}
	}
	deadline := time.Now().Add(Scale(10 * time.Second))
	for {
		_, s := c.Stats()
		if s.Overflowed > 0 && s.Overflowed+QueueFrames+1 >= sent-100 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, s := c.Stats()
	t.Logf("sent %d with a 1 h delay: %+v", sent, s)
	if s.Overflowed == 0 || s.Passed != 0 {
		t.Errorf("a full queue: %+v, want overflow counted and nothing passed", s)
	}
	_ = bridge
}

func TestCableRejectsBadImpairment(t *testing.T) {
	c, _, _ := loopCable(t, 1)
	for _, im := range []Impairment{{Loss: -0.1}, {Loss: 1.5}, {Delay: -time.Second}} {
		if err := c.Impair(im); err == nil {
			t.Errorf("Impair(%+v) accepted", im)
		}
	}
	if c.Impairment() != (Impairment{}) {
		t.Errorf("a rejected setting replaced the last good one: %+v", c.Impairment())
	}
}

// arpRequest is who-has target tell sender, from mac.
func arpRequest(mac net.HardwareAddr, sender, target net.IP) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	b.Write(mac)
	b.Write([]byte{0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1})
	b.Write(mac)
	b.Write(sender.To4())
	b.Write(make([]byte, 6))
	b.Write(target.To4())
	return b.Bytes()
}

// TestCableTapOnBridge: a frame sent where QEMU's NIC would send it reaches
// a machine on the bridge through the cable's tap, and its answer comes
// back; with 100% loss nothing passes and the loss is counted.
func TestCableTapOnBridge(t *testing.T) {
	requireRoot(t)
	n := NewNet(t, "cable")
	n.AddClient("peer", "192.0.2.1/24")
	c := n.AddCable("cab0")
	mac, _ := net.ParseMAC("02:00:00:00:00:09")

	var vm *net.UDPConn
	if err := n.Do(func() error {
		addr, err := net.ResolveUDPAddr("udp", c.vmAddr)
		if err == nil {
			vm, err = net.ListenUDP("udp", addr)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	relay, _ := net.ResolveUDPAddr("udp", c.relayAddr)
	if l, err := n.WaitCarrier("cab0", true, 10*time.Second); err != nil || l.Master != BridgeName {
		t.Fatalf("cable tap: %+v %v", l, err)
	}

	// wantReply asks for 192.0.2.1 until its ARP reply arrives at the VM.
	wantReply := func() bool {
		buf := make([]byte, 2048)
		deadline := time.Now().Add(Scale(5 * time.Second))
		for time.Now().Before(deadline) {
			vm.WriteToUDP(arpRequest(mac, net.IPv4(192, 0, 2, 2), net.IPv4(192, 0, 2, 1)), relay)
			vm.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				k, _, err := vm.ReadFromUDP(buf)
				if err != nil {
					break
				}
				// An ARP reply (op 2) to our MAC from 192.0.2.1.
				if k >= 42 && bytes.Equal(buf[:6], mac) && buf[12] == 0x08 && buf[13] == 0x06 && buf[21] == 2 &&
					net.IP(buf[28:32]).Equal(net.IPv4(192, 0, 2, 1)) {
					return true
				}
			}
		}
		return false
	}
	if !wantReply() {
		t.Fatal("no ARP reply from 192.0.2.1 came back through the cable")
	}
	// A lane counts a frame after writing it, so the answer can arrive
	// before its request was counted: read the counters once they settle.
	settled := func() (toVM, fromVM CableStats) {
		toVM, fromVM = c.Stats()
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
			time.Sleep(100 * time.Millisecond)
			t2, f2 := c.Stats()
			if t2 == toVM && f2 == fromVM {
				break
			}
			toVM, fromVM = t2, f2
		}
		return toVM, fromVM
	}
	toVM, fromVM := settled()
	if toVM.Passed == 0 || fromVM.Passed == 0 {
		t.Errorf("stats after an exchange: to VM %+v, from VM %+v", toVM, fromVM)
	}

	c.Impair(Impairment{Loss: 1})
	_, before := settled()
	if wantReply() {
		t.Error("an ARP reply came back through a cable losing every frame")
	}
	_, after := settled()
	if after.Lost <= before.Lost || after.Passed != before.Passed {
		t.Errorf("with 100%% loss: before %+v, after %+v", before, after)
	}
}
