package datadisk

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// Linux filesystem data partition type GUID 0FC63DAF-8483-4772-8E79-3D69D8477DE4
// in GPT's mixed-endian byte order.
var linuxDataType = [16]byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}

const (
	sector      = 512
	entries     = 128
	entrySize   = 128
	firstUsable = 2048 // 1 MiB alignment
)

func guid() ([16]byte, error) {
	var g [16]byte
	if _, err := io.ReadFull(rand.Reader, g[:]); err != nil {
		return g, err
	}
	g[7] = g[7]&0x0f | 0x40 // version 4
	g[8] = g[8]&0x3f | 0x80
	return g, nil
}

// writeGPT writes a protective MBR, primary and backup GPT with one Linux
// data partition spanning the disk, named name. size is the disk's size in
// bytes.
func writeGPT(w io.WriterAt, size int64, name string) error {
	if size < 16<<20 {
		return fmt.Errorf("disk of %d bytes is too small for a data partition", size)
	}
	if size%sector != 0 {
		return errors.New("disk size is not a multiple of 512 bytes")
	}
	last := uint64(size/sector - 1)
	tableSectors := uint64(entries * entrySize / sector)
	lastUsable := last - tableSectors - 1
	diskGUID, err := guid()
	if err != nil {
		return err
	}
	partGUID, err := guid()
	if err != nil {
		return err
	}

	mbr := make([]byte, sector)
	p := mbr[446:]
	p[4] = 0xee // GPT protective
	binary.LittleEndian.PutUint32(p[8:], 1)
	n := last
	if n > 0xffffffff {
		n = 0xffffffff
	}
	binary.LittleEndian.PutUint32(p[12:], uint32(n))
	p[1], p[2], p[3] = 0, 2, 0
	p[5], p[6], p[7] = 0xff, 0xff, 0xff
	mbr[510], mbr[511] = 0x55, 0xaa

	table := make([]byte, entries*entrySize)
	e := table[:entrySize]
	copy(e[0:16], linuxDataType[:])
	copy(e[16:32], partGUID[:])
	binary.LittleEndian.PutUint64(e[32:], firstUsable)
	binary.LittleEndian.PutUint64(e[40:], lastUsable)
	for i, r := range utf16.Encode([]rune(name)) {
		if i >= 36 {
			break
		}
		binary.LittleEndian.PutUint16(e[56+2*i:], r)
	}
	tableCRC := crc32.ChecksumIEEE(table)

	header := func(self, alt, tableLBA uint64) []byte {
		h := make([]byte, sector)
		copy(h[0:8], "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], self)
		binary.LittleEndian.PutUint64(h[32:], alt)
		binary.LittleEndian.PutUint64(h[40:], firstUsable)
		binary.LittleEndian.PutUint64(h[48:], lastUsable)
		copy(h[56:72], diskGUID[:])
		binary.LittleEndian.PutUint64(h[72:], tableLBA)
		binary.LittleEndian.PutUint32(h[80:], entries)
		binary.LittleEndian.PutUint32(h[84:], entrySize)
		binary.LittleEndian.PutUint32(h[88:], tableCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	writes := []struct {
		off  int64
		data []byte
	}{
		{0, mbr},
		{2 * sector, table},
		{sector, header(1, last, 2)},
		{int64(last-tableSectors) * sector, table},
		{int64(last) * sector, header(last, 1, last-tableSectors)},
	}
	for _, wr := range writes {
		if _, err := w.WriteAt(wr.data, wr.off); err != nil {
			return fmt.Errorf("writing partition table: %w", err)
		}
	}
	return nil
}
