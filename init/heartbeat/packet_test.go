package heartbeat

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"magestack/init/nsdo"
)

var (
	testKey  = bytes.Repeat([]byte{7}, 32)
	otherKey = bytes.Repeat([]byte{9}, 32)
)

func TestEncodeDecode(t *testing.T) {
	p := packet{ID: "dh1", Path: "pair", Epoch: 5, Seq: 42, Time: time.Now().UnixNano()}
	got, err := decode(testKey, encode(testKey, p))
	if err != nil || got != p {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	good := encode(testKey, p)
	flipped := bytes.Clone(good)
	flipped[20] ^= 1 // the sequence
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errMalformed},
		{"magic only", []byte("MSHB"), errMalformed},
		{"version 1", append([]byte("MSHB\x01"), make([]byte, 80)...), errMalformed},
		{"other key", encode(otherKey, p), errForged},
		{"altered sequence", flipped, errForged},
		{"trailing byte", append(bytes.Clone(good), 'x'), errForged},
		{"truncated", good[:len(good)-1], errForged},
	} {
		if _, err := decode(testKey, tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestFresh(t *testing.T) {
	now := time.Now()
	at := func(d time.Duration) int64 { return now.Add(d).UnixNano() }
	for _, tc := range []struct {
		name  string
		p     packet
		last  lastHeard
		heard bool
		want  error
	}{
		{"first, fresh", packet{Epoch: 1, Seq: 1, Time: at(0)}, lastHeard{}, false, nil},
		{"first, skewed but within bound", packet{Epoch: 1, Seq: 1, Time: at(-50 * time.Second)}, lastHeard{}, false, nil},
		{"first, old recording", packet{Epoch: 1, Seq: 1, Time: at(-time.Hour)}, lastHeard{}, false, errStale},
		{"first, from the future", packet{Epoch: 1, Seq: 1, Time: at(time.Hour)}, lastHeard{}, false, errStale},
		{"next in sequence", packet{Epoch: 1, Seq: 8, Time: at(0)}, lastHeard{1, 7}, true, nil},
		{"next, sender clock stepped back", packet{Epoch: 1, Seq: 8, Time: at(-time.Hour)}, lastHeard{1, 7}, true, nil},
		{"replayed", packet{Epoch: 1, Seq: 7, Time: at(0)}, lastHeard{1, 7}, true, errReplayed},
		{"older", packet{Epoch: 1, Seq: 3, Time: at(0)}, lastHeard{1, 7}, true, errReplayed},
		{"sender restarted", packet{Epoch: 2, Seq: 1, Time: at(0)}, lastHeard{1, 7000}, true, nil},
		{"old incarnation replayed", packet{Epoch: 1, Seq: 9000, Time: at(-10 * time.Minute)}, lastHeard{2, 5}, true, errStale},
	} {
		if err := fresh(tc.p, tc.last, tc.heard, now, DefaultMaxSkew); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestAcceptCountsDrops feeds datagrams straight to a monitor's receive
// path: only authentic, fresh heartbeats of a listed peer from its address
// count; every other is dropped and counted by why.
func TestAcceptCountsDrops(t *testing.T) {
	m, err := New(Config{ID: "dh2", Key: testKey, Paths: []Path{{Name: "lan", Local: "127.0.0.1:0",
		Peers: map[string]string{"dh1": "127.0.0.5:7701"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dh1 := net.ParseIP("127.0.0.5")
	now := time.Now()
	hb := func(key []byte, id, path string, seq uint64, at time.Time) []byte {
		return encode(key, packet{ID: id, Path: path, Epoch: 1, Seq: seq, Time: at.UnixNano()})
	}
	m.accept(0, hb(testKey, "dh1", "lan", 1, now), dh1, now)
	if m.seen["dh1"]["lan"] != now {
		t.Fatal("an authentic heartbeat did not count")
	}
	later := now.Add(time.Second)
	m.accept(0, hb(testKey, "dh1", "lan", 1, now), dh1, later)                        // replayed
	m.accept(0, hb(otherKey, "dh1", "lan", 2, later), dh1, later)                     // forged
	m.accept(0, []byte("MSHB junk"), dh1, later)                                      // malformed
	m.accept(0, hb(testKey, "dh1", "pair", 3, later), dh1, later)                     // wrong path
	m.accept(0, hb(testKey, "dh1", "lan", 4, later), net.ParseIP("127.0.0.9"), later) // wrong address
	m.accept(0, hb(testKey, "dh9", "lan", 5, later), dh1, later)                      // not a peer
	if m.seen["dh1"]["lan"] != now {
		t.Error("a refused datagram counted as a heartbeat")
	}
	want := Drops{Malformed: 1, Forged: 1, Replayed: 1, Stranger: 3}
	if got := m.Drops(); got != want {
		t.Errorf("drops %+v, want %+v", got, want)
	}
	if _, err := New(Config{ID: "dh2", Paths: nil}); err == nil {
		t.Error("a monitor without a key was made")
	}
}

// TestForgedAndReplayedHeartbeatsAreDropped runs over real sockets: dh1's
// address sends heartbeats with another stack's key, then replays
// authentic heartbeats recorded earlier; neither makes dh1 alive to dh2.
func TestForgedAndReplayedHeartbeatsAreDropped(t *testing.T) {
	a, b, _, _ := twoHosts(t)
	mb := monitorIn(t, b, Config{ID: "dh2", Key: testKey, Paths: []Path{
		{Name: "pair", Local: "10.98.1.2:7701", Peers: map[string]string{"dh1": "10.98.1.1:7701"}}}})
	var conn *net.UDPConn
	if err := nsdo.Do(a, func() error {
		var err error
		conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("10.98.1.1"), Port: 7701})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := &net.UDPAddr{IP: net.ParseIP("10.98.1.2"), Port: 7701}
	send := func(b []byte) {
		if _, err := conn.WriteToUDP(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	// A recording of dh1's authentic heartbeats, all heard once.
	epoch := uint64(time.Now().UnixNano())
	var recorded [][]byte
	for seq := uint64(1); seq <= 5; seq++ {
		pkt := encode(testKey, packet{ID: "dh1", Path: "pair", Epoch: epoch, Seq: seq, Time: time.Now().UnixNano()})
		recorded = append(recorded, pkt)
		send(pkt)
		time.Sleep(20 * time.Millisecond)
	}
	waitState(t, mb, "dh1", Alive, 2*time.Second)
	// dh1 is gone; an attacker at its address forges and replays for 1.5 s.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for seq := uint64(100); time.Now().Before(deadline); seq++ {
		send(encode(otherKey, packet{ID: "dh1", Path: "pair", Epoch: epoch, Seq: seq, Time: time.Now().UnixNano()}))
		send(recorded[seq%uint64(len(recorded))])
		time.Sleep(50 * time.Millisecond)
	}
	if st := mb.Peer("dh1"); st != Dead {
		t.Errorf("dh1 silent for 1.5 s but forged and replayed heartbeats keep it %s", st)
	}
	d := mb.Drops()
	if d.Forged == 0 || d.Replayed == 0 {
		t.Errorf("drops %+v: want forged and replayed counted", d)
	}
}

// FuzzDecode: no datagram crashes decode, and one it accepts is the
// canonical encoding of what it decoded.
func FuzzDecode(f *testing.F) {
	f.Add(encode(testKey, packet{ID: "dh1", Path: "lan", Epoch: 1, Seq: 7, Time: 1}))
	f.Add(encode(otherKey, packet{ID: "witness", Path: "pair", Epoch: 2, Seq: 9, Time: 3}))
	f.Add([]byte("MSHB\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decode(testKey, b)
		if err == nil && !bytes.Equal(encode(testKey, p), b) {
			t.Fatalf("decode accepted a non-canonical packet %q", b)
		}
	})
}

// FuzzDecodeAuthentic fuzzes the fields behind a valid MAC, as a member
// holding the key could send them: parsing must hold up.
func FuzzDecodeAuthentic(f *testing.F) {
	f.Add([]byte("\x03dh1\x03lan"))
	f.Fuzz(func(t *testing.T, rest []byte) {
		b := append([]byte("MSHB\x02"), make([]byte, 24)...)
		b = append(b, rest...)
		b = append(b, mac(testKey, b)...)
		p, err := decode(testKey, b)
		if err == nil && !bytes.Equal(encode(testKey, p), b) {
			t.Fatalf("decode accepted a non-canonical packet %q", b)
		}
	})
}
