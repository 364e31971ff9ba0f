package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store/vfs"
)

func encodeHeaderForTest(h header) []byte {
	b := make([]byte, sumOff)
	encodeFixed(b, &h)
	encodeRecord(b[recordSlot(h.rec.seq):], h.rec)
	return b
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		k     Key
		size  uint32
		epoch uint32
	}{
		{ReplicaKey(1), 0, 0},
		{ReplicaKey(proto.DataOID(7, 3)), 1, 1},
		{StripKey(proto.DataOID(7, 3), 0), 4096, 9},
		{StripKey(proto.DataOID(7, 3), 255), 4097, 1 << 31},
		{ReplicaKey(proto.InodeOID(5)), proto.InodeSize, 3},
		{ReplicaKey(^proto.OID(0)), ^uint32(0), ^uint32(0)},
	} {
		h := newHeader(tc.k, tc.size, tc.epoch)
		got, err := parseHeader(encodeHeaderForTest(h))
		if err != nil {
			t.Fatalf("%v size %d: %v", tc.k, tc.size, err)
		}
		if got != h {
			t.Fatalf("round trip: got %+v want %+v", got, h)
		}
		if got.dataOff%pageSize != 0 || uint64(got.dataOff) < sumOff+uint64(got.nblocks())*pairLen {
			t.Fatalf("data offset %d overlaps checksums of %d blocks", got.dataOff, got.nblocks())
		}
	}
}

func TestHeaderRecordSelection(t *testing.T) {
	h := newHeader(ReplicaKey(42), 10000, 1)
	b := encodeHeaderForTest(h) // seq 1 in slot 1, slot 0 invalid
	r2 := record{seq: 2, epoch: 7, flags: recDirty}
	encodeRecord(b[recordSlot(2):], r2)
	got, err := parseHeader(b)
	if err != nil || got.rec != r2 {
		t.Fatalf("newer record: got %+v, %v", got.rec, err)
	}
	// A torn update of the newer slot falls back to the older one.
	b[recordSlot(2)+5] ^= 0xff
	got, err = parseHeader(b)
	if err != nil || got.rec != h.rec {
		t.Fatalf("torn record: got %+v, %v; want %+v", got.rec, err, h.rec)
	}
	// Both bad: corrupt.
	b[recordSlot(1)+1] ^= 0xff
	if _, err := parseHeader(b); err == nil {
		t.Fatal("header with no valid record parsed")
	}
	// Sequence numbers wrap.
	b = encodeHeaderForTest(h)
	encodeRecord(b[recordSlot(0xffffffff):], record{seq: 0xffffffff, epoch: 1})
	encodeRecord(b[recordSlot(0):], record{seq: 0, epoch: 2})
	if got, err := parseHeader(b); err != nil || got.rec.epoch != 2 {
		t.Fatalf("wrapped seq: got %+v, %v", got.rec, err)
	}
}

func TestHeaderRejects(t *testing.T) {
	good := encodeHeaderForTest(newHeader(StripKey(9, 2), 5000, 1))
	for name, mutate := range map[string]func(b []byte) []byte{
		"short":        func(b []byte) []byte { return b[:100] },
		"magic":        func(b []byte) []byte { b[0] = 'X'; return b },
		"fixed crc":    func(b []byte) []byte { b[16]++; return b },
		"zero":         func(b []byte) []byte { return make([]byte, len(b)) },
		"version":      func(b []byte) []byte { b[8] = 2; fixCRC(b); return b },
		"block size":   func(b []byte) []byte { b[13] = 0x20; fixCRC(b); return b },
		"data offset":  func(b []byte) []byte { b[25] += 0x10; fixCRC(b); return b },
		"flags":        func(b []byte) []byte { b[10] |= 4; fixCRC(b); return b },
		"reserved":     func(b []byte) []byte { b[45] = 1; fixCRC(b); return b },
		"ec index w/o": func(b []byte) []byte { b[10] = 0; fixCRC(b); return b },
	} {
		if _, err := parseHeader(mutate(bytes.Clone(good))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// fixCRC re-signs a tampered fixed header so only the tampering is judged.
func fixCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], crc32.MakeTable(crc32.Castagnoli)))
}

func TestNames(t *testing.T) {
	good := map[string]Key{
		"0000000000000000":     ReplicaKey(0),
		"00e0b0f400000003":     ReplicaKey(0x00e0b0f400000003),
		"ffffffffffffffff":     ReplicaKey(^proto.OID(0)),
		"00e0b0f400000003_0":   StripKey(0x00e0b0f400000003, 0),
		"00e0b0f400000003_17":  StripKey(0x00e0b0f400000003, 17),
		"00e0b0f400000003_255": StripKey(0x00e0b0f400000003, 255),
	}
	for s, want := range good {
		k, ok := parseName(s)
		if !ok || k != want {
			t.Errorf("parseName(%q) = %v, %v; want %v", s, k, ok, want)
		}
		if k.String() != s {
			t.Errorf("%v.String() = %q, want %q", k, k.String(), s)
		}
	}
	for _, s := range []string{"", "0", "000000000000000", "00000000000000000", "00E0B0F400000003",
		"00e0b0f40000000g", "00e0b0f400000003_", "00e0b0f400000003_256", "00e0b0f400000003_01",
		"00e0b0f400000003_-1", "00e0b0f400000003.tmp", "00e0b0f400000003_1.tmp", "00e0b0f400000003x1",
		" 0e0b0f400000003", "00e0b0f400000003_1_2", "00e0b0f400000003_99999999999"} {
		if k, ok := parseName(s); ok {
			t.Errorf("parseName(%q) accepted as %v", s, k)
		}
	}
}

func TestStaleNames(t *testing.T) {
	for _, tc := range []struct {
		k     Key
		epoch uint32
		s     string
	}{
		{ReplicaKey(0x10), 0, "0000000000000010.0"},
		{ReplicaKey(0x10), 42, "0000000000000010.42"},
		{StripKey(0x10, 3), 4294967295, "0000000000000010_3.4294967295"},
	} {
		if got := staleName(tc.k, tc.epoch); got != tc.s {
			t.Errorf("staleName = %q, want %q", got, tc.s)
		}
		k, e, ok := parseStaleName(tc.s)
		if !ok || k != tc.k || e != tc.epoch {
			t.Errorf("parseStaleName(%q) = %v %d %v", tc.s, k, e, ok)
		}
	}
	for _, s := range []string{"", ".", "0000000000000010", "0000000000000010.", "0000000000000010.01",
		"0000000000000010.4294967296", "0000000000000010.1.2", "000000000000001.1", "0000000000000010_.1",
		".5", "0000000000000010.-1", "0000000000000010.tmp"} {
		if k, e, ok := parseStaleName(s); ok {
			t.Errorf("parseStaleName(%q) accepted as %v.%d", s, k, e)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(encodeHeaderForTest(newHeader(ReplicaKey(1), 4<<20, 3)))
	f.Add(encodeHeaderForTest(newHeader(StripKey(proto.DataOID(3, 4), 5), 1<<20/4, 1)))
	f.Add(encodeHeaderForTest(newHeader(ReplicaKey(7), 0, 0)))
	f.Add(make([]byte, 128))
	f.Add([]byte("GSHEEPOB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			return
		}
		// Anything accepted is self-consistent and re-encodes to the same
		// fixed header, and its checksum area is bounded.
		if h.bs != blockSize || h.dataOff != dataOffFor(h.size, h.bs) || h.nblocks() > 1<<20 {
			t.Fatalf("accepted inconsistent header %+v", h)
		}
		var fixed [fixedLen]byte
		encodeFixed(fixed[:], &h)
		if !bytes.Equal(fixed[:], b[:fixedLen]) {
			t.Fatalf("fixed header does not round-trip:\n%x\n%x", fixed, b[:fixedLen])
		}
		var rec [recordLen]byte
		encodeRecord(rec[:], h.rec)
		at := recordSlot(h.rec.seq)
		if !bytes.Equal(rec[:], b[at:at+recordLen]) {
			t.Fatalf("record does not round-trip")
		}
	})
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"0000000000000000", "00e0b0f400000003_12", "00e0b0f400000003.tmp",
		"0000000000000010_3.42", "junk", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if k, ok := parseName(s); ok && k.String() != s {
			t.Fatalf("parseName(%q) = %v which formats as %q", s, k, k.String())
		}
		if k, e, ok := parseStaleName(s); ok && staleName(k, e) != s {
			t.Fatalf("parseStaleName(%q) = %v.%d which formats as %q", s, k, e, staleName(k, e))
		}
	})
}

// memFile is a read-only vfs.File over a byte slice, for fuzzing the
// loader without touching the disk.
type memFile struct{ b []byte }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, io.EOF
	}
	if off >= int64(len(m.b)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m *memFile) WriteAt(p []byte, off int64) (int, error) { return 0, errors.ErrUnsupported }
func (m *memFile) Sync() error                              { return nil }
func (m *memFile) Truncate(int64) error                     { return errors.ErrUnsupported }
func (m *memFile) PunchHole(int64, int64) error             { return errors.ErrUnsupported }
func (m *memFile) Close() error                             { return nil }
func (m *memFile) Stat() (vfs.Info, error) {
	return vfs.Info{Size: int64(len(m.b)), Alloc: int64(len(m.b))}, nil
}

// sparseFile claims a large size but holds only a prefix (the rest reads
// as zeros), so fuzzed headers with big sizes can pass the length check
// without allocating the file.
type sparseFile struct {
	memFile
	size int64
}

func (s *sparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-off))
	clear(p[:n])
	if off < int64(len(s.b)) {
		copy(p[:n], s.b[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (s *sparseFile) Stat() (vfs.Info, error) { return vfs.Info{Size: s.size}, nil }

// FuzzLoadObject feeds arbitrary file contents to the object loader and,
// when it accepts them, reads, verifies and hashes: errors are fine,
// panics and unbounded allocations are not.
func FuzzLoadObject(f *testing.F) {
	good := func(size uint32, data []byte) []byte {
		h := newHeader(ReplicaKey(1), size, 2)
		b := make([]byte, h.fileSize())
		copy(b, encodeHeaderForTest(h))
		for i := range h.nblocks() {
			blk := make([]byte, h.blockLen(i))
			copy(blk, data[min(int(h.blockStart(i)), len(data)):])
			c := crc32.Checksum(blk, crc32.MakeTable(crc32.Castagnoli))
			putPair(b[sumOff+int(i)*pairLen:], c, c)
		}
		copy(b[h.dataOff:], data)
		return b
	}
	f.Add(good(5000, []byte("hello")), int64(0))
	f.Add(good(0, nil), int64(0))
	f.Add(good(4096, bytes.Repeat([]byte{1}, 4096)), int64(0))
	f.Add(encodeHeaderForTest(newHeader(ReplicaKey(1), 4<<20, 1)), int64(4<<20+12288))
	f.Add(encodeHeaderForTest(newHeader(ReplicaKey(1), 1<<20, 1)), int64(1<<20+4096+4096))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		d := &Disk{zeros: make([]byte, blockSize)}
		d.blocks.New = func() any { b := make([]byte, blockSize); return &b }
		var file vfs.File = &memFile{b: b}
		if size > int64(len(b)) && size < 64<<20 { // big enough for 16K checksums, small enough to fuzz fast
			file = &sparseFile{memFile: memFile{b: b}, size: size}
		}
		h, sums, _, err := d.load(file, ReplicaKey(1), false, 0)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("load failed with %v, want a corruption", err)
			}
			return
		}
		if len(sums) != int(h.nblocks())*pairLen || len(sums) > 8<<20 {
			t.Fatalf("checksum area of %d bytes for %d blocks", len(sums), h.nblocks())
		}
		n := min(h.size, 64<<10)
		p := make([]byte, n)
		if _, err := d.readVerify(file, &h, sums, h.size-n, p, h.key, false, 0); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("read: %v", err)
		}
		if h.size <= 1<<20 {
			if _, err := d.verifyFile(bg, file, &h, sums, h.key, false, 0); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("verify: %v", err)
			}
		}
	})
}
