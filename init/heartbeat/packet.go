package heartbeat

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"
)

// magic starts every heartbeat datagram.
var magic = [4]byte{'M', 'S', 'H', 'B'}

// version 2 is the authenticated packet:
//
//	magic(4) version(1) epoch(8) seq(8) time(8) len(1) id len(1) path mac(32)
//
// epoch is the sender's start (unix ns), fixed for its lifetime; seq counts
// its sends; time is its clock when sending; mac is HMAC-SHA256 under the
// stack's heartbeat key over everything before it.
const version = 2

const (
	headerLen = 4 + 1 + 8 + 8 + 8
	macLen    = sha256.Size
	minLen    = headerLen + 1 + 1 + macLen
	// MinKeyLen is the shortest heartbeat key New accepts.
	MinKeyLen = 16
)

// packet is one heartbeat.
type packet struct {
	ID    string
	Path  string
	Epoch uint64
	Seq   uint64
	Time  int64 // unix ns
}

// Errors decode returns; receive counts drops by them.
var (
	errMalformed = errors.New("not a heartbeat")
	errForged    = errors.New("heartbeat fails authentication")
)

func encode(key []byte, p packet) []byte {
	b := make([]byte, 0, minLen+len(p.ID)+len(p.Path))
	b = append(b, magic[:]...)
	b = append(b, version)
	b = binary.BigEndian.AppendUint64(b, p.Epoch)
	b = binary.BigEndian.AppendUint64(b, p.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(p.Time))
	b = append(b, byte(len(p.ID)))
	b = append(b, p.ID...)
	b = append(b, byte(len(p.Path)))
	b = append(b, p.Path...)
	return append(b, mac(key, b)...)
}

func mac(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// decode checks a heartbeat's authentication and parses it: anything
// malformed is errMalformed, a wrong MAC errForged. The MAC is checked
// before any field is believed.
func decode(key, b []byte) (packet, error) {
	if len(b) < minLen || [4]byte(b[:4]) != magic || b[4] != version {
		return packet{}, errMalformed
	}
	body, sum := b[:len(b)-macLen], b[len(b)-macLen:]
	if !hmac.Equal(sum, mac(key, body)) {
		return packet{}, errForged
	}
	p := packet{
		Epoch: binary.BigEndian.Uint64(body[5:13]),
		Seq:   binary.BigEndian.Uint64(body[13:21]),
		Time:  int64(binary.BigEndian.Uint64(body[21:29])),
	}
	rest := body[headerLen:]
	n := int(rest[0])
	if len(rest) < 1+n+1 {
		return packet{}, errMalformed
	}
	p.ID = string(rest[1 : 1+n])
	rest = rest[1+n:]
	if len(rest) != 1+int(rest[0]) {
		return packet{}, errMalformed
	}
	p.Path = string(rest[1:])
	return p, nil
}

// lastHeard is what a receiver keeps of a peer on a path to refuse
// replays: the sender incarnation (epoch) and sequence last accepted.
type lastHeard struct {
	epoch, seq uint64
}

// Why a packet that authenticated is still refused.
var (
	errReplayed = errors.New("heartbeat replayed (sequence not newer)")
	errStale    = errors.New("heartbeat of a new sender incarnation is not fresh (clock skew or replay)")
)

// fresh decides whether an authentic packet p may count, given what was
// last accepted from its sender on this path (ok false: nothing yet).
//
// Within one incarnation only a newer sequence counts: a replay of
// anything already heard is refused without looking at clocks, so a
// clock step on either side never drops real heartbeats. A new
// incarnation (a sender restart, or this receiver's) is taken only when
// its packet's time is within maxSkew of this clock: that bounds what a
// recording can replay after a restart.
func fresh(p packet, last lastHeard, ok bool, now time.Time, maxSkew time.Duration) error {
	if ok && p.Epoch == last.epoch {
		if p.Seq <= last.seq {
			return errReplayed
		}
		return nil
	}
	skew := now.Sub(time.Unix(0, p.Time))
	if skew < -maxSkew || skew > maxSkew {
		return errStale
	}
	return nil
}
