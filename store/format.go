package store

import (
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/proto"
)

// Object file layout (little endian):
//
//	[0, 64)      fixed header, written once when the object is created:
//	             magic "GSHEEPOB", version u16, flags u16, block size u32,
//	             logical size u32, checksum-area offset u32, data offset u32,
//	             EC index u8, 3 zero, oid u64, 20 zero, CRC32C of [0,60).
//	[64, 128)    two 32-byte mutable records (seq u32, epoch u32, flags u32,
//	             16 zero, CRC32C of the first 28 bytes). The valid record
//	             with the newer seq wins; an update writes the other slot,
//	             so a torn update leaves the previous record intact.
//	[512, ...)   checksum area: per block an 8-byte pair [prev u32][cur u32]
//	             of CRC32C values. The block's data is valid if it matches
//	             either. A mutation writes the pair {prev: what the block
//	             holds now, cur: what it will hold} before the data, so a
//	             crash at any point leaves data matching one of them. prev
//	             comes first so that even a byte-torn pair write leaves the
//	             block matching one slot.
//	[dataOff, +size)  the object's bytes, dataOff a multiple of 4096; the
//	             file is sparse and never-written ranges are holes.
//
// Blocks are blockSize (4096) bytes; the last is short when size is not a
// multiple (an object smaller than a block is one short block).
const (
	blockSize  = 4096
	pageSize   = 4096
	fixedLen   = 64
	recordOff  = 64
	recordLen  = 32
	sumOff     = 512
	pairLen    = 8
	fmtVersion = 1

	flagEC = 1 << 0 // fixed header flags

	recDirty = 1 << 0 // record flags: mutations since the last clean close

	tmpSuffix = ".tmp"
)

var magic = [8]byte{'G', 'S', 'H', 'E', 'E', 'P', 'O', 'B'}

// record is the mutable part of the header.
type record struct {
	seq   uint32
	epoch uint32
	flags uint32
}

// header is a parsed object header.
type header struct {
	key     Key
	bs      uint32 // block size
	size    uint32 // logical size
	dataOff uint32
	rec     record
}

func (h *header) nblocks() uint32 { return nblocks(h.size, h.bs) }

// fileSize is the length the object file must have.
func (h *header) fileSize() int64 { return int64(h.dataOff) + int64(h.size) }

func nblocks(size, bs uint32) uint32 { return uint32((uint64(size) + uint64(bs) - 1) / uint64(bs)) }

func dataOffFor(size, bs uint32) uint32 {
	end := uint64(sumOff) + uint64(nblocks(size, bs))*pairLen
	return uint32((end + pageSize - 1) / pageSize * pageSize)
}

func newHeader(k Key, size, epoch uint32) header {
	return header{key: k, bs: blockSize, size: size, dataOff: dataOffFor(size, blockSize),
		rec: record{seq: 1, epoch: epoch}}
}

// encodeFixed writes the fixed header into b[:fixedLen].
func encodeFixed(b []byte, h *header) {
	_ = b[fixedLen-1]
	clear(b[:fixedLen])
	copy(b[0:8], magic[:])
	le := binary.LittleEndian
	le.PutUint16(b[8:], fmtVersion)
	var fl uint16
	if h.key.EC {
		fl |= flagEC
		b[28] = h.key.ECIndex
	}
	le.PutUint16(b[10:], fl)
	le.PutUint32(b[12:], h.bs)
	le.PutUint32(b[16:], h.size)
	le.PutUint32(b[20:], sumOff)
	le.PutUint32(b[24:], h.dataOff)
	le.PutUint64(b[32:], uint64(h.key.OID))
	le.PutUint32(b[60:], crc32c.Checksum(b[:60]))
}

// encodeRecord writes r into b[:recordLen].
func encodeRecord(b []byte, r record) {
	_ = b[recordLen-1]
	clear(b[:recordLen])
	le := binary.LittleEndian
	le.PutUint32(b[0:], r.seq)
	le.PutUint32(b[4:], r.epoch)
	le.PutUint32(b[8:], r.flags)
	le.PutUint32(b[28:], crc32c.Checksum(b[:28]))
}

// recordSlot is where record seq goes.
func recordSlot(seq uint32) int64 { return recordOff + int64(seq&1)*recordLen }

var (
	errShortHeader = errors.New("short header")
	errMagic       = errors.New("bad magic")
	errVersion     = errors.New("unsupported version")
	errHeaderCRC   = errors.New("header checksum mismatch")
	errGeometry    = errors.New("inconsistent geometry")
	errRecords     = errors.New("no valid mutable record")
)

func parseRecord(b []byte) (record, bool) {
	le := binary.LittleEndian
	if le.Uint32(b[28:]) != crc32c.Checksum(b[:28]) {
		return record{}, false
	}
	for _, c := range b[12:28] {
		if c != 0 {
			return record{}, false
		}
	}
	r := record{seq: le.Uint32(b[0:]), epoch: le.Uint32(b[4:]), flags: le.Uint32(b[8:])}
	if r.flags&^recDirty != 0 {
		return record{}, false
	}
	return r, true
}

// parseHeader validates the first 128 bytes of an object file. It never
// allocates beyond its result and rejects anything it did not write.
func parseHeader(b []byte) (header, error) {
	if len(b) < recordOff+2*recordLen {
		return header{}, errShortHeader
	}
	le := binary.LittleEndian
	if [8]byte(b[0:8]) != magic {
		return header{}, errMagic
	}
	if le.Uint32(b[60:]) != crc32c.Checksum(b[:60]) {
		return header{}, errHeaderCRC
	}
	if le.Uint16(b[8:]) != fmtVersion {
		return header{}, errVersion
	}
	fl := le.Uint16(b[10:])
	h := header{
		bs:      le.Uint32(b[12:]),
		size:    le.Uint32(b[16:]),
		dataOff: le.Uint32(b[24:]),
	}
	h.key.OID = proto.OID(le.Uint64(b[32:]))
	if fl&^flagEC != 0 || le.Uint32(b[20:]) != sumOff {
		return header{}, errGeometry
	}
	if fl&flagEC != 0 {
		h.key.EC, h.key.ECIndex = true, b[28]
	} else if b[28] != 0 {
		return header{}, errGeometry
	}
	for _, c := range b[29:32] {
		if c != 0 {
			return header{}, errGeometry
		}
	}
	for _, c := range b[40:60] {
		if c != 0 {
			return header{}, errGeometry
		}
	}
	// Version 1 always uses 4 KiB blocks; the field exists for later
	// versions. This also bounds the checksum area to 8 MiB.
	if h.bs != blockSize || h.dataOff != dataOffFor(h.size, h.bs) {
		return header{}, errGeometry
	}
	r0, ok0 := parseRecord(b[recordOff : recordOff+recordLen])
	r1, ok1 := parseRecord(b[recordOff+recordLen : recordOff+2*recordLen])
	// A record must sit in the slot its seq selects.
	ok0 = ok0 && r0.seq&1 == 0
	ok1 = ok1 && r1.seq&1 == 1
	switch {
	case ok0 && ok1:
		// Serial-number comparison so seq may wrap.
		if int32(r1.seq-r0.seq) > 0 {
			h.rec = r1
		} else {
			h.rec = r0
		}
	case ok0:
		h.rec = r0
	case ok1:
		h.rec = r1
	default:
		return header{}, errRecords
	}
	return h, nil
}

// String is the object's file name: 16 hex digits, plus _<index> for an
// EC strip (sheepdog's naming).
func (k Key) String() string { return string(appendName(make([]byte, 0, 20), k)) }

func appendName(b []byte, k Key) []byte {
	const hexd = "0123456789abcdef"
	v := uint64(k.OID)
	for i := 60; i >= 0; i -= 4 {
		b = append(b, hexd[(v>>uint(i))&0xf])
	}
	if k.EC {
		b = append(b, '_')
		b = strconv.AppendUint(b, uint64(k.ECIndex), 10)
	}
	return b
}

// parseName parses an object file name strictly: exactly 16 lower-case hex
// digits, optionally "_" and a decimal strip index 0..255 without leading
// zeros. Anything else (temp files, junk) is rejected.
func parseName(s string) (Key, bool) {
	if len(s) < 16 {
		return Key{}, false
	}
	var v uint64
	for i := 0; i < 16; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return Key{}, false
		}
	}
	k := Key{OID: proto.OID(v)}
	if len(s) == 16 {
		return k, true
	}
	if s[16] != '_' {
		return Key{}, false
	}
	idx, ok := parseDec(s[17:], 255)
	if !ok {
		return Key{}, false
	}
	k.EC, k.ECIndex = true, uint8(idx)
	return k, true
}

// parseDec parses a canonical decimal number no greater than max.
func parseDec(s string, max uint64) (uint64, bool) {
	if len(s) == 0 || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v > max {
		return 0, false
	}
	return v, true
}

// staleName is a stale copy's file name: <object name>.<epoch>.
func staleName(k Key, epoch uint32) string {
	b := appendName(make([]byte, 0, 32), k)
	b = append(b, '.')
	return string(strconv.AppendUint(b, uint64(epoch), 10))
}

// parseStaleName is the inverse of staleName.
func parseStaleName(s string) (Key, uint32, bool) {
	i := len(s) - 1
	for i >= 0 && s[i] != '.' {
		i--
	}
	if i < 0 {
		return Key{}, 0, false
	}
	k, ok := parseName(s[:i])
	if !ok {
		return Key{}, 0, false
	}
	e, ok := parseDec(s[i+1:], 1<<32-1)
	if !ok {
		return Key{}, 0, false
	}
	return k, uint32(e), true
}
