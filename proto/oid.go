package proto

import "fmt"

// Object ID bits (section 3.1 of the reference).
const (
	VDIBit      uint64 = 1 << 63
	VMStateBit  uint64 = 1 << 62
	VDIAttrBit  uint64 = 1 << 61
	VDIBtreeBit uint64 = 1 << 60
	LedgerBit   uint64 = 1 << 59

	VDISpaceShift = 32
	NrVDIs        = 1 << 24 // size of the vid space
	MaxVID        = NrVDIs - 1
)

// OID is a 64-bit object ID.
type OID uint64

// DataOID is the oid of data object idx of vdi vid.
func DataOID(vid uint32, idx uint32) OID { return OID(uint64(vid&MaxVID)<<VDISpaceShift | uint64(idx)) }

// InodeOID is the oid of vdi vid's inode object.
func InodeOID(vid uint32) OID { return OID(VDIBit | uint64(vid&MaxVID)<<VDISpaceShift) }

// VMStateOID is the oid of vmstate chunk idx of vdi vid.
func VMStateOID(vid uint32, idx uint32) OID {
	return OID(VMStateBit | uint64(vid&MaxVID)<<VDISpaceShift | uint64(idx))
}

// AttrOID is the oid of attribute object attrID in the hash bucket of vid.
func AttrOID(vid uint32, attrID uint32) OID {
	return OID(VDIAttrBit | uint64(vid&MaxVID)<<VDISpaceShift | uint64(attrID))
}

// VID returns the vdi id encoded in bits 32..55.
func (o OID) VID() uint32 { return uint32(uint64(o)>>VDISpaceShift) & MaxVID }

// Index returns the low 32 bits: data index, vmstate index or attr id.
func (o OID) Index() uint32 { return uint32(o) }

// IsInode reports whether o is a VDI inode object.
func (o OID) IsInode() bool { return uint64(o)&VDIBit != 0 }

// IsVMState reports whether o is a vmstate object.
func (o OID) IsVMState() bool { return uint64(o)&VMStateBit != 0 }

// IsAttr reports whether o is a VDI attribute object.
func (o OID) IsAttr() bool { return uint64(o)&VDIAttrBit != 0 }

// IsData reports whether o is a plain data object (no type bit set).
func (o OID) IsData() bool {
	return uint64(o)&(VDIBit|VMStateBit|VDIAttrBit|VDIBtreeBit|LedgerBit) == 0
}

// Valid reports whether reserved bits 56..58 are clear and at most one type bit is set.
func (o OID) Valid() bool {
	if uint64(o)&(7<<56) != 0 {
		return false
	}
	t := uint64(o) >> 59
	return t&(t-1) == 0
}

// String formats the oid as sheep names object files: 16 hex digits.
func (o OID) String() string { return fmt.Sprintf("%016x", uint64(o)) }

// FNV-1a 64-bit constants.
const (
	FNV64Basis uint64 = 0xcbf29ce484222325
	FNV64Prime uint64 = 0x100000001b3
)

// FNV1a64 hashes b with FNV-1a starting from h (use FNV64Basis for a fresh hash).
func FNV1a64(b []byte, h uint64) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= FNV64Prime
	}
	return h
}

// NameToVID is the first candidate vid for a name: low 24 bits of FNV-1a,
// with 0 (reserved) replaced by 1. "test" -> 0x7c2b25.
func NameToVID(name string) uint32 {
	v := uint32(FNV1a64([]byte(name), FNV64Basis) & MaxVID)
	if v == 0 {
		v = 1
	}
	return v
}

// HashMix is sheep's extra mixing round: FNV-1a over the 8 LE bytes of h, seeded with h.
func HashMix(h uint64) uint64 {
	var b [8]byte
	le.PutUint64(b[:], h)
	return FNV1a64(b[:], h)
}

// HashOID is sd_hash_oid: FNV-1a over the 8 LE bytes of oid, then one mix round.
func HashOID(oid OID) uint64 {
	var b [8]byte
	le.PutUint64(b[:], uint64(oid))
	return HashMix(FNV1a64(b[:], FNV64Basis))
}
