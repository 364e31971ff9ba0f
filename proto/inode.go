package proto

import (
	"bytes"
	"fmt"
)

// Inode layout (section 3.3).
const (
	NameLen          = 256
	TagLen           = 256
	InodeHeaderSize  = 4664                            // bytes before data_vdi_id
	MaxDataObjs      = 1 << 20                         // entries in data_vdi_id
	InodeIndexOffset = InodeHeaderSize                 // byte offset of data_vdi_id[0]
	InodeSize        = InodeHeaderSize + 4*MaxDataObjs // 4,198,968: QEMU's view, our inode object size
	InodeLookupSize  = 568                             // what sheep's lookup reads

	offName        = 0
	offTag         = 256
	offCreateTime  = 512
	offSnapCtime   = 520
	offVMClock     = 528
	offVDISize     = 536
	offVMStateSize = 544
	offCopyPolicy  = 552
	offStorePolicy = 553
	offNrCopies    = 554
	offBSS         = 555
	offSnapID      = 556
	offVDIID       = 560
	offParentVDIID = 564
	offBtreeCtr    = 568

	// InodeVDISizeOffset is where vdi_size lives; QEMU grows a VDI by rewriting the header.
	InodeVDISizeOffset = offVDISize
)

// Inode is sheepdog's struct sd_inode. DataVDIID is nil when only the header
// was decoded, else exactly MaxDataObjs entries.
type Inode struct {
	Name           string
	Tag            string
	CreateTime     uint64
	SnapCtime      uint64
	VMClockNsec    uint64
	VDISize        uint64
	VMStateSize    uint64
	CopyPolicy     uint8
	StorePolicy    uint8
	NrCopies       uint8
	BlockSizeShift uint8
	SnapID         uint32
	VDIID          uint32
	ParentVDIID    uint32
	BtreeCounter   uint32
	DataVDIID      []uint32
}

// IsSnapshot reports whether the inode is frozen.
func (i *Inode) IsSnapshot() bool { return i.SnapCtime != 0 }

// ObjectSize is the data object size of this VDI.
func (i *Inode) ObjectSize() uint32 { return 1 << i.BlockSizeShift }

// MarshalHeader encodes the first InodeHeaderSize bytes.
func (i *Inode) MarshalHeader() []byte {
	b := make([]byte, InodeHeaderSize)
	putString(b[offName:offName+NameLen], i.Name)
	putString(b[offTag:offTag+TagLen], i.Tag)
	le.PutUint64(b[offCreateTime:], i.CreateTime)
	le.PutUint64(b[offSnapCtime:], i.SnapCtime)
	le.PutUint64(b[offVMClock:], i.VMClockNsec)
	le.PutUint64(b[offVDISize:], i.VDISize)
	le.PutUint64(b[offVMStateSize:], i.VMStateSize)
	b[offCopyPolicy] = i.CopyPolicy
	b[offStorePolicy] = i.StorePolicy
	b[offNrCopies] = i.NrCopies
	b[offBSS] = i.BlockSizeShift
	le.PutUint32(b[offSnapID:], i.SnapID)
	le.PutUint32(b[offVDIID:], i.VDIID)
	le.PutUint32(b[offParentVDIID:], i.ParentVDIID)
	le.PutUint32(b[offBtreeCtr:], i.BtreeCounter)
	return b
}

// Marshal encodes the whole inode (InodeSize bytes); a nil index is all holes.
func (i *Inode) Marshal() []byte {
	b := make([]byte, InodeSize)
	copy(b, i.MarshalHeader())
	for k, v := range i.DataVDIID {
		if k >= MaxDataObjs {
			break
		}
		le.PutUint32(b[InodeIndexOffset+4*k:], v)
	}
	return b
}

// UnmarshalHeader decodes the header from b (at least InodeLookupSize bytes;
// fields beyond len(b) stay zero).
func (i *Inode) UnmarshalHeader(b []byte) error {
	if len(b) < offBtreeCtr {
		return fmt.Errorf("proto: inode header of %d bytes, need %d: %w", len(b), offBtreeCtr, ResInvalidParms)
	}
	*i = Inode{DataVDIID: i.DataVDIID}
	i.Name = cString(b[offName : offName+NameLen])
	i.Tag = cString(b[offTag : offTag+TagLen])
	i.CreateTime = le.Uint64(b[offCreateTime:])
	i.SnapCtime = le.Uint64(b[offSnapCtime:])
	i.VMClockNsec = le.Uint64(b[offVMClock:])
	i.VDISize = le.Uint64(b[offVDISize:])
	i.VMStateSize = le.Uint64(b[offVMStateSize:])
	i.CopyPolicy = b[offCopyPolicy]
	i.StorePolicy = b[offStorePolicy]
	i.NrCopies = b[offNrCopies]
	i.BlockSizeShift = b[offBSS]
	i.SnapID = le.Uint32(b[offSnapID:])
	i.VDIID = le.Uint32(b[offVDIID:])
	i.ParentVDIID = le.Uint32(b[offParentVDIID:])
	if len(b) >= offBtreeCtr+4 {
		i.BtreeCounter = le.Uint32(b[offBtreeCtr:])
	}
	return nil
}

// Unmarshal decodes a whole inode; b may be shorter than InodeSize, in which
// case missing index entries are holes.
func (i *Inode) Unmarshal(b []byte) error {
	if err := i.UnmarshalHeader(b); err != nil {
		return err
	}
	i.DataVDIID = make([]uint32, MaxDataObjs)
	if len(b) > InodeIndexOffset {
		DecodeIndex(i.DataVDIID, b[InodeIndexOffset:])
	}
	return nil
}

// DecodeIndex decodes little-endian u32 entries from b into dst.
func DecodeIndex(dst []uint32, b []byte) {
	n := min(len(dst), len(b)/4)
	for k := 0; k < n; k++ {
		dst[k] = le.Uint32(b[4*k:])
	}
}

// EncodeIndex encodes entries as little-endian u32s.
func EncodeIndex(src []uint32) []byte {
	b := make([]byte, 4*len(src))
	for k, v := range src {
		le.PutUint32(b[4*k:], v)
	}
	return b
}

// IndexOffset is the byte offset of data_vdi_id[idx] inside an inode object.
func IndexOffset(idx uint32) uint32 { return InodeIndexOffset + 4*idx }

func putString(dst []byte, s string) {
	clear(dst)
	copy(dst[:len(dst)-1], s) // always leave a terminating NUL
}

// cString decodes a fixed-size, NUL-terminated field. A field without a NUL
// is cut to len-1 bytes, as sheep's pstrcpy does, so that whatever we decode
// re-encodes unchanged.
func cString(b []byte) string {
	if n := bytes.IndexByte(b, 0); n >= 0 {
		b = b[:n]
	} else if len(b) > 0 {
		b = b[:len(b)-1]
	}
	return string(b)
}

// PadName encodes a name or tag as the fixed 256-byte field VDI ops carry.
func PadName(s string) []byte {
	b := make([]byte, NameLen)
	putString(b, s)
	return b
}

// ParseNameTag decodes the payload of LOCK_VDI/GET_VDI_INFO/DEL_VDI/NEW_VDI:
// name[256], optionally followed by tag[256]. Other lengths are invalid.
func ParseNameTag(b []byte) (name, tag string, err error) {
	switch len(b) {
	case NameLen, NameLen + TagLen:
	default:
		return "", "", fmt.Errorf("proto: name payload of %d bytes, want %d or %d: %w", len(b), NameLen, NameLen+TagLen, ResInvalidParms)
	}
	name = cString(b[:NameLen])
	if len(b) == NameLen+TagLen {
		tag = cString(b[NameLen:])
	}
	return name, tag, nil
}
