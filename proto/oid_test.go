package proto

import (
	"hash/fnv"
	"testing"
)

func TestOIDGolden(t *testing.T) {
	cases := []struct {
		oid  OID
		want string
	}{
		{InodeOID(0x7c2b25), "807c2b2500000000"},
		{DataOID(0x7c2b25, 1), "007c2b2500000001"},
		{DataOID(0xffffff, 0xffffffff), "00ffffffffffffff"},
		{VMStateOID(0x7c2b25, 3), "407c2b2500000003"},
		{AttrOID(0x7c2b25, 0x1234), "207c2b2500001234"},
		{DataOID(0x1_000001, 2), "0000000100000002"}, // vid is masked to 24 bits
		{InodeOID(0), "8000000000000000"},
	}
	for _, c := range cases {
		if got := c.oid.String(); got != c.want {
			t.Errorf("got %s, want %s", got, c.want)
		}
	}
	o := OID(0x807c2b2500000000)
	if !o.IsInode() || o.IsData() || o.VID() != 0x7c2b25 || o.Index() != 0 || !o.Valid() {
		t.Errorf("inode oid predicates wrong")
	}
	d := OID(0x007c2b2500000001)
	if d.IsInode() || !d.IsData() || d.VID() != 0x7c2b25 || d.Index() != 1 || !d.Valid() {
		t.Errorf("data oid predicates wrong")
	}
	if v := VMStateOID(5, 6); !v.IsVMState() || v.IsData() || v.VID() != 5 || v.Index() != 6 {
		t.Errorf("vmstate oid predicates wrong")
	}
	if a := AttrOID(5, 6); !a.IsAttr() || a.IsData() || a.IsInode() {
		t.Errorf("attr oid predicates wrong")
	}
	for _, bad := range []OID{1 << 56, 1 << 58, OID(VDIBit | VMStateBit), OID(LedgerBit | VDIBtreeBit)} {
		if bad.Valid() {
			t.Errorf("%s should be invalid", bad)
		}
	}
	for _, good := range []OID{OID(LedgerBit | 5), OID(VDIBtreeBit), 0} {
		if !good.Valid() {
			t.Errorf("%s should be valid", good)
		}
	}
}

func TestNameToVID(t *testing.T) {
	// Goldens: "test" verified on a live sheep; the others computed
	// independently (FNV-1a 64, low 24 bits). "vdi16677191" hashes to
	// ...25000000, whose low 24 bits are 0 and must become vid 1.
	golden := map[string]uint32{
		"test": 0x7c2b25, "a": 0x01ec8c, "": 0x222325, "alice": 0xa03907,
		"vm-disk-01": 0xbaf19a, "snapshot": 0x379dad, "vdi16677191": 1,
	}
	for name, want := range golden {
		if got := NameToVID(name); got != want {
			t.Errorf("NameToVID(%q) = %#x, want %#x", name, got, want)
		}
	}
	// Cross-check against the standard library's FNV-1a.
	for _, name := range []string{"x", "y", "a long name with spaces", "ünïcødé", string(make([]byte, 255))} {
		h := fnv.New64a()
		h.Write([]byte(name))
		want := uint32(h.Sum64() & 0xffffff)
		if want == 0 {
			want = 1
		}
		if got := NameToVID(name); got != want {
			t.Errorf("NameToVID(%q) = %#x, stdlib says %#x", name, got, want)
		}
		if FNV1a64([]byte(name), FNV64Basis) != h.Sum64() {
			t.Errorf("FNV1a64(%q) differs from hash/fnv", name)
		}
	}
}

func TestHashOID(t *testing.T) {
	// sd_hash_oid = mix(fnv1a(le64(oid))); mix(h) = fnv1a(le64(h)) seeded with h.
	le64 := func(v uint64) []byte {
		b := make([]byte, 8)
		put64(b, 0, v)
		return b
	}
	fnvFrom := func(b []byte, h uint64) uint64 {
		for _, c := range b {
			h = (h ^ uint64(c)) * 0x100000001b3
		}
		return h
	}
	for _, oid := range []OID{0, 1, 0x807c2b2500000000, 0x007c2b2500000001} {
		h := fnvFrom(le64(uint64(oid)), 0xcbf29ce484222325)
		want := fnvFrom(le64(h), h)
		if got := HashOID(oid); got != want {
			t.Errorf("HashOID(%s) = %#x, want %#x", oid, got, want)
		}
	}
}
