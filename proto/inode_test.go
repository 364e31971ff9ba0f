package proto

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// goldenInode lays out an inode by hand from §3.3.
func goldenInode() ([]byte, Inode) {
	b := make([]byte, InodeSize)
	copy(b[0:], "test")
	copy(b[256:], "snap1")
	put64(b, 512, 0x5b34d9a5_1dcd6500) // create_time
	put64(b, 520, 0x5b34d9b0_00000001) // snap_ctime
	put64(b, 528, 123456789)           // vm_clock_nsec
	put64(b, 536, 10<<30)              // vdi_size
	put64(b, 544, 1<<20)               // vm_state_size
	b[552] = 0x22                      // copy_policy
	b[553] = 0                         // store_policy
	b[554] = 6                         // nr_copies
	b[555] = 22                        // block_size_shift
	put32(b, 556, 3)                   // snap_id
	put32(b, 560, 0x7c2b26)            // vdi_id
	put32(b, 564, 0x7c2b25)            // parent_vdi_id
	put32(b, 568, 9)                   // btree_counter
	idx := make([]uint32, MaxDataObjs)
	for _, k := range []int{0, 1, 2559, MaxDataObjs - 1} {
		idx[k] = 0x7c2b25 + uint32(k%2)
		put32(b, 4664+4*k, idx[k])
	}
	return b, Inode{
		Name: "test", Tag: "snap1", CreateTime: 0x5b34d9a51dcd6500, SnapCtime: 0x5b34d9b000000001,
		VMClockNsec: 123456789, VDISize: 10 << 30, VMStateSize: 1 << 20, CopyPolicy: 0x22,
		NrCopies: 6, BlockSizeShift: 22, SnapID: 3, VDIID: 0x7c2b26, ParentVDIID: 0x7c2b25,
		BtreeCounter: 9, DataVDIID: idx,
	}
}

func TestInodeConstants(t *testing.T) {
	if InodeSize != 4198968 || InodeHeaderSize != 4664 || InodeIndexOffset != 4664 ||
		MaxDataObjs != 1<<20 || InodeLookupSize != 568 || InodeVDISizeOffset != 536 {
		t.Fatal("inode size constants changed")
	}
	if IndexOffset(0) != 4664 || IndexOffset(1) != 4668 || IndexOffset(MaxDataObjs-1) != InodeSize-4 {
		t.Fatal("IndexOffset")
	}
}

func TestInodeGolden(t *testing.T) {
	golden, want := goldenInode()
	diffBytes(t, "marshal", want.Marshal(), golden)
	diffBytes(t, "header", want.MarshalHeader(), golden[:InodeHeaderSize])

	var got Inode
	if err := got.Unmarshal(golden); err != nil {
		t.Fatal(err)
	}
	if !inodeEqual(&got, &want) {
		t.Fatalf("unmarshal: %+v", headerOnly(got))
	}
	if !got.IsSnapshot() || got.ObjectSize() != 4<<20 {
		t.Fatal("IsSnapshot/ObjectSize")
	}

	// QEMU's header-only read (4664 bytes) and sheep's lookup read (568).
	for _, n := range []int{InodeHeaderSize, InodeLookupSize + 4, InodeLookupSize} {
		var h Inode
		if err := h.UnmarshalHeader(golden[:n]); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		w := headerOnly(want)
		if n == InodeLookupSize {
			w.BtreeCounter = 0 // beyond the 568 bytes sheep reads
		}
		if !reflect.DeepEqual(headerOnly(h), w) {
			t.Fatalf("%d bytes: %+v", n, headerOnly(h))
		}
	}
	var h Inode
	if err := h.UnmarshalHeader(golden[:InodeLookupSize-1]); !errors.Is(err, ResInvalidParms) {
		t.Fatalf("short header: %v", err)
	}

	// A partial inode: missing index entries read as holes.
	var p Inode
	if err := p.Unmarshal(golden[:InodeHeaderSize+4*3]); err != nil {
		t.Fatal(err)
	}
	if len(p.DataVDIID) != MaxDataObjs || p.DataVDIID[0] != 0x7c2b25 || p.DataVDIID[1] != 0x7c2b26 || p.DataVDIID[2559] != 0 {
		t.Fatal("partial index")
	}
}

func TestInodeStrings(t *testing.T) {
	long := strings.Repeat("n", 300)
	i := Inode{Name: long, Tag: "t\x00hidden"}
	b := i.MarshalHeader()
	if b[255] != 0 || b[511] != 0 {
		t.Fatal("name/tag fields must stay NUL-terminated")
	}
	var got Inode
	if err := got.UnmarshalHeader(b); err != nil {
		t.Fatal(err)
	}
	if got.Name != long[:255] || got.Tag != "t" {
		t.Fatalf("name %d bytes, tag %q", len(got.Name), got.Tag)
	}
}

func TestIndexCodec(t *testing.T) {
	src := []uint32{0, 1, 0x7c2b25, 0xffffffff}
	b := EncodeIndex(src)
	diffBytes(t, "EncodeIndex", b, unhex(t, "00000000 01000000 252b7c00 ffffffff"))
	dst := make([]uint32, 3)
	DecodeIndex(dst, b) // shorter dst: stops at len(dst)
	if dst[0] != 0 || dst[1] != 1 || dst[2] != 0x7c2b25 {
		t.Fatalf("%x", dst)
	}
	dst = make([]uint32, 4)
	DecodeIndex(dst, b[4:11]) // trailing partial entry ignored
	if dst[0] != 1 || dst[1] != 0 {
		t.Fatalf("%x", dst)
	}
}

func TestNameTagPayload(t *testing.T) {
	p := PadName("test")
	if len(p) != 256 || string(p[:4]) != "test" || !bytes.Equal(p[4:], make([]byte, 252)) {
		t.Fatal("PadName")
	}
	name, tag, err := ParseNameTag(p)
	if err != nil || name != "test" || tag != "" {
		t.Fatalf("%q %q %v", name, tag, err)
	}
	two := append(PadName("vm"), PadName("before-upgrade")...)
	name, tag, err = ParseNameTag(two)
	if err != nil || name != "vm" || tag != "before-upgrade" {
		t.Fatalf("%q %q %v", name, tag, err)
	}
	// A field without its NUL is cut at 255 bytes like sheep's pstrcpy, so
	// the decoded name re-encodes unchanged.
	full := []byte(strings.Repeat("x", 256))
	if name, _, err := ParseNameTag(full); err != nil || name != strings.Repeat("x", 255) {
		t.Fatalf("unterminated name: %d bytes, %v", len(name), err)
	}
	for _, n := range []int{0, 5, 255, 257, 511, 513, 1024} {
		if _, _, err := ParseNameTag(make([]byte, n)); !errors.Is(err, ResInvalidParms) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

func headerOnly(i Inode) Inode { i.DataVDIID = nil; return i }

func inodeEqual(a, b *Inode) bool {
	if !reflect.DeepEqual(headerOnly(*a), headerOnly(*b)) || len(a.DataVDIID) != len(b.DataVDIID) {
		return false
	}
	for k := range a.DataVDIID {
		if a.DataVDIID[k] != b.DataVDIID[k] {
			return false
		}
	}
	return true
}
