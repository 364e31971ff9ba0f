package store

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"

	"github.com/gosheep/gosheep/proto"
)

// On-disk object file: a 4 KiB header, then two CRC32C slots per block
// (the current checksum and the previous one: a crash between writing the
// checksums and the data leaves a block matching the previous slot, which
// reads as the old data instead of as corruption), then the data, sparse.
const (
	headerSize   = 4096
	hdrFieldsLen = 40
	fileMagic    = "GSHPOBJ1"
	fileVersion  = 1
	maxBlockSize = 4096
	slotSize     = 8 // two u32 CRCs per block

	flagClean uint32 = 1 // every block matches its current slot
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// header is the decoded object header.
type header struct {
	size      uint32
	blockSize uint32
	epoch     uint32
	flags     uint32
	key       Key
}

func blockSizeFor(size uint32) uint32 {
	if size < maxBlockSize && size > 0 {
		return size
	}
	return maxBlockSize
}

func (h *header) nblocks() uint32 {
	if h.size == 0 {
		return 0
	}
	return (h.size + h.blockSize - 1) / h.blockSize
}

func (h *header) sumsLen() int64 { return int64(h.nblocks()) * slotSize }

// dataOff is where data byte 0 lives in the file (4 KiB aligned).
func (h *header) dataOff() int64 {
	return headerSize + (h.sumsLen()+headerSize-1)/headerSize*headerSize
}

// blockLen is the length of block b (the last one may be short).
func (h *header) blockLen(b uint32) uint32 {
	start := b * h.blockSize
	return min(h.blockSize, h.size-start)
}

func (h *header) marshal() []byte {
	b := make([]byte, hdrFieldsLen)
	copy(b, fileMagic)
	binary.LittleEndian.PutUint32(b[8:], fileVersion)
	binary.LittleEndian.PutUint32(b[12:], h.size)
	binary.LittleEndian.PutUint32(b[16:], h.blockSize)
	binary.LittleEndian.PutUint32(b[20:], h.epoch)
	binary.LittleEndian.PutUint64(b[24:], uint64(h.key.OID))
	if h.key.EC {
		b[32] = 1
	}
	b[33] = h.key.ECIndex
	binary.LittleEndian.PutUint16(b[34:], uint16(h.flags))
	binary.LittleEndian.PutUint32(b[36:], crc(b[:36]))
	return b
}

// parseHeader decodes and validates an object header.
func parseHeader(b []byte) (header, error) {
	var h header
	if len(b) < hdrFieldsLen {
		return h, fmt.Errorf("short header (%d bytes): %w", len(b), ErrCorrupt)
	}
	if string(b[:8]) != fileMagic {
		return h, fmt.Errorf("bad magic: %w", ErrCorrupt)
	}
	if crc(b[:36]) != binary.LittleEndian.Uint32(b[36:]) {
		return h, fmt.Errorf("header checksum mismatch: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != fileVersion {
		return h, fmt.Errorf("unknown format version %d: %w", v, ErrCorrupt)
	}
	h.size = binary.LittleEndian.Uint32(b[12:])
	h.blockSize = binary.LittleEndian.Uint32(b[16:])
	h.epoch = binary.LittleEndian.Uint32(b[20:])
	h.key = Key{OID: proto.OID(binary.LittleEndian.Uint64(b[24:])), EC: b[32] == 1, ECIndex: b[33]}
	h.flags = uint32(binary.LittleEndian.Uint16(b[34:]))
	if h.blockSize == 0 || h.blockSize > maxBlockSize || h.blockSize != blockSizeFor(h.size) {
		return h, fmt.Errorf("bad block size %d for size %d: %w", h.blockSize, h.size, ErrCorrupt)
	}
	return h, nil
}

// fileName is sheep's object file name: 16 hex digits, "_<strip>" for EC.
func fileName(k Key) string {
	s := fmt.Sprintf("%016x", uint64(k.OID))
	if k.EC {
		s += "_" + strconv.Itoa(int(k.ECIndex))
	}
	return s
}

// parseName decodes a file name; temp and foreign files are rejected.
func parseName(name string) (Key, bool) {
	hexPart, strip, ec := strings.Cut(name, "_")
	if len(hexPart) != 16 {
		return Key{}, false
	}
	v, err := strconv.ParseUint(hexPart, 16, 64)
	if err != nil {
		return Key{}, false
	}
	k := Key{OID: proto.OID(v)}
	if ec {
		i, err := strconv.ParseUint(strip, 10, 8)
		if err != nil || strconv.FormatUint(i, 10) != strip {
			return Key{}, false
		}
		k.EC, k.ECIndex = true, uint8(i)
	}
	return k, fileName(k) == name
}

// staleName is "<object name>.<epoch>".
func staleName(k Key, epoch uint32) string {
	return fileName(k) + "." + strconv.FormatUint(uint64(epoch), 10)
}

func parseStaleName(name string) (Key, uint32, bool) {
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return Key{}, 0, false
	}
	k, ok := parseName(name[:i])
	e, err := strconv.ParseUint(name[i+1:], 10, 32)
	if !ok || err != nil || strconv.FormatUint(e, 10) != name[i+1:] {
		return Key{}, 0, false
	}
	return k, uint32(e), true
}
