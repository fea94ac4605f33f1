package tftpd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// fuzzServer is one running server per fuzz worker: starting one per input
// would measure socket setup, not packet handling.
var fuzzServer struct {
	once    sync.Once
	addr    *net.UDPAddr
	payload []byte
	err     error
}

func startFuzzServer(t *testing.T) (*net.UDPAddr, []byte) {
	t.Helper()
	fs := &fuzzServer
	fs.once.Do(func() {
		dir, err := os.MkdirTemp("", "tftpd-fuzz")
		if err != nil {
			fs.err = err
			return
		}
		// Several blocks at any block size a client may ask for, and no
		// byte netascii would rewrite, so every DATA block must be a slice
		// of this payload.
		fs.payload = bytes.Repeat([]byte("ipxe-boot-rom."), 6000)
		file := filepath.Join(dir, "undionly.kpxe")
		if fs.err = os.WriteFile(file, fs.payload, 0o644); fs.err != nil {
			return
		}
		if fs.err = os.WriteFile(filepath.Join(dir, "secret"), []byte("never served"), 0o600); fs.err != nil {
			return
		}
		s, err := New(map[string]string{"undionly.kpxe": file}, nil, nil)
		if err != nil {
			fs.err = err
			return
		}
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			fs.err = err
			return
		}
		fs.addr = conn.LocalAddr().(*net.UDPAddr)
		// Runs for the life of the worker process.
		go s.Serve(context.Background(), conn)
	})
	if fs.err != nil {
		t.Fatalf("tftp fuzz server: %v", fs.err)
	}
	return fs.addr, fs.payload
}

func rrq(name, mode string, opts ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, opRRQ)
	for _, s := range append([]string{name, mode}, opts...) {
		b = append(append(b, s...), 0)
	}
	return b
}

// requestedName returns the file name of an RRQ packet as the server will
// read it, or ok=false when p is not a well-formed RRQ.
func requestedName(p []byte) (string, bool) {
	if len(p) < 4 || binary.BigEndian.Uint16(p) != opRRQ {
		return "", false
	}
	name, _, ok := bytes.Cut(p[2:], []byte{0})
	return string(name), ok
}

// readReply waits up to d for one datagram on c.
func readReply(c *net.UDPConn, d time.Duration) ([]byte, *net.UDPAddr, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDP(buf)
	if err != nil {
		return nil, nil, err
	}
	return buf[:n], from, nil
}

// abort ends a transfer the server started, so its goroutine and socket
// are released now rather than after its retries.
func abort(c *net.UDPConn, to *net.UDPAddr) {
	p := binary.BigEndian.AppendUint16(nil, opERROR)
	p = binary.BigEndian.AppendUint16(p, 0)
	c.WriteToUDP(append(append(p, "fuzz: done"...), 0), to)
}

// FuzzPacket sends whole datagrams (any opcode, options, lengths) to a
// running server. Whatever arrives: every reply is a TFTP DATA, OACK or
// ERROR packet; DATA is only ever a block of the one served file and only
// for a request whose name CleanName maps to it; and the server still
// serves a well-formed request afterwards.
func FuzzPacket(f *testing.F) {
	for _, seed := range [][]byte{
		rrq("undionly.kpxe", "octet"),
		rrq("/undionly.kpxe", "netascii", "blksize", "1468", "tsize", "0"),
		rrq("undionly.kpxe", "octet", "blksize", "8", "windowsize", "4", "timeout", "1"),
		rrq("undionly.kpxe", "octet", "blksize", "99999999999999999999"),
		rrq("../secret", "octet"),
		rrq("undionly.kpxe", "mail"),
		rrq("undionly.kpxe", "octet", "blksize"),
		{0, opRRQ, 'u', 'n', 'd', 'i'}, // no terminators
		{0, opWRQ, 'x', 0, 'o', 'c', 't', 'e', 't', 0},
		{0, opDATA, 0, 1, 'h', 'i'},
		{0, opACK, 0, 0},
		{0, opERROR, 0, 1, 'x', 0},
		{0, opOACK, 'b', 'l', 'k', 's', 'i', 'z', 'e', 0, '9', 0},
		{0, 9},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		srv, payload := startFuzzServer(t)
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.WriteToUDP(pkt, srv); err != nil {
			// The kernel refuses some datagrams (too large for UDP): not
			// the server's business.
			return
		}

		// The server reads its socket in order, so once it answers a good
		// request sent after the fuzzed one, it has handled the fuzzed one
		// and is still serving.
		probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer probe.Close()
		if _, err := probe.WriteToUDP(rrq("undionly.kpxe", "octet"), srv); err != nil {
			t.Fatal(err)
		}
		reply, from, err := readReply(probe, 5*time.Second)
		if err != nil {
			t.Fatalf("after packet %q the server no longer serves: %v", pkt, err)
		}
		abort(probe, from)
		if len(reply) < 4 || binary.BigEndian.Uint16(reply) != opDATA || binary.BigEndian.Uint16(reply[2:]) != 1 ||
			!bytes.Equal(reply[4:], payload[:min(len(payload), 512)]) {
			t.Fatalf("after packet %q a good request got %q, want DATA block 1", pkt, reply[:min(len(reply), 32)])
		}

		// The fuzzed packet's own replies: a request is answered (DATA,
		// OACK or ERROR) by a transfer goroutine started before the probe's,
		// so its reply is normally already queued. The wait stays short:
		// the fuzzer's minimiser runs thousands of inputs.
		wait := time.Millisecond
		if len(pkt) >= 2 && (binary.BigEndian.Uint16(pkt) == opRRQ || binary.BigEndian.Uint16(pkt) == opWRQ) {
			wait = 5 * time.Millisecond
		}
		name, isRRQ := requestedName(pkt)
		clean, cerr := CleanName(name)
		servable := isRRQ && cerr == nil && clean == "undionly.kpxe"
		for {
			reply, from, err := readReply(c, wait)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			abort(c, from)
			if len(reply) < 2 {
				t.Fatalf("packet %q got a %d-byte reply", pkt, len(reply))
			}
			switch op := binary.BigEndian.Uint16(reply); op {
			case opERROR, opOACK:
			case opDATA:
				if !servable {
					t.Fatalf("packet %q (not a request for the served file) got DATA %q", pkt, reply[:min(len(reply), 32)])
				}
				if len(reply) < 4 || binary.BigEndian.Uint16(reply[2:]) != 1 || !bytes.HasPrefix(payload, reply[4:]) {
					t.Fatalf("packet %q got DATA %q, not the served file's first block", pkt, reply[:min(len(reply), 32)])
				}
			default:
				t.Fatalf("packet %q got a reply with opcode %d", pkt, op)
			}
		}
	})
}
