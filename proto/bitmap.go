package proto

import "fmt"

// VDIBitmapSize is the byte size of the 2^24-bit vdi_inuse bitmap READ_VDIS returns.
const VDIBitmapSize = NrVDIs / 8

// VDIBitmap is the in-use bitmap: bit vid set when vid was ever allocated.
// Bits are little-endian within 64-bit words, which on the wire is bit
// (vid%8) of byte vid/8, as sheep's unsigned long bitmap on x86-64.
type VDIBitmap []byte

// NewVDIBitmap returns an all-clear bitmap.
func NewVDIBitmap() VDIBitmap { return make(VDIBitmap, VDIBitmapSize) }

// ParseVDIBitmap checks the length of a READ_VDIS payload.
func ParseVDIBitmap(b []byte) (VDIBitmap, error) {
	if len(b) != VDIBitmapSize {
		return nil, fmt.Errorf("proto: vdi bitmap of %d bytes, want %d: %w", len(b), VDIBitmapSize, ResInvalidParms)
	}
	return VDIBitmap(b), nil
}

// Test reports whether vid is set.
func (m VDIBitmap) Test(vid uint32) bool {
	vid &= MaxVID
	return m[vid/8]&(1<<(vid%8)) != 0
}

// Set marks vid in use.
func (m VDIBitmap) Set(vid uint32) { vid &= MaxVID; m[vid/8] |= 1 << (vid % 8) }

// Clear marks vid free.
func (m VDIBitmap) Clear(vid uint32) { vid &= MaxVID; m[vid/8] &^= 1 << (vid % 8) }

// NextFree returns the first clear vid at or after start, wrapping to 1; false when full.
func (m VDIBitmap) NextFree(start uint32) (uint32, bool) {
	start &= MaxVID
	if start == 0 {
		start = 1
	}
	for v := start; v <= MaxVID; v++ {
		if !m.Test(v) {
			return v, true
		}
	}
	for v := uint32(1); v < start; v++ {
		if !m.Test(v) {
			return v, true
		}
	}
	return 0, false
}
