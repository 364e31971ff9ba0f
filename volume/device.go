// Package volume turns a VDI (an inode plus its data objects) into a block
// device: byte-addressed reads and writes with sheepdog's copy-on-write
// semantics, used by the iSCSI and NBD front ends.
package volume

import (
	"context"
	"errors"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// Sentinel errors for device I/O.
var (
	ErrOutOfRange = proto.NewError(proto.ResInvalidParms, "volume: access beyond end of device")
	ErrReadOnly   = proto.NewError(proto.ResReadonly, "volume: device is read-only")
	ErrNoVolume   = proto.NewError(proto.ResNoVDI, "volume: no such volume")
)

// Extent is a byte range of a device and whether it holds data.
type Extent struct {
	Offset    uint64
	Length    uint64
	Allocated bool // false: a hole, reads as zeros
}

// PartWriter is implemented by devices that say whether a large write
// may be split into parts, each written while the rest of the data is
// still arriving (scsi.WriteStream). Devices without it are written
// whole.
type PartWriter interface {
	// WritesInParts reports whether parts pay: with one copy a part costs
	// one more store write; with replicas each part pays a replicated
	// write's fixed costs on every copy, and erasure coding would
	// re-encode partial stripes.
	WritesInParts() bool
}

// Lent is a verified range of a device lent out of this node's store,
// or staged in a pipe from another node's (sendfile.Pipe, read in
// order): its bytes are Src[Off, Off+N), unchanged until Release.
type Lent = store.Raw

// ErrNotLent: the range cannot be lent (a hole, more than one object, no
// copy on this node, erasure coding); read it with ReadAt.
var ErrNotLent = errors.New("volume: range not lendable")

// LendMin is the smallest read worth lending: below it checking through
// the mapping and a second write per response cost more than the copies
// sendfile saves (qemu-img bench over iSCSI on one node, against copying:
// 64 KiB reads 7 % slower at QD1; 128-256 KiB 9-17 % faster at QD1 and
// level at QD32; 1 MiB faster at both).
const LendMin = 128 << 10

// Lender is implemented by devices that can lend a read instead of
// copying it, so a front end can send it with sendfile (or splice).
type Lender interface {
	// ReadLent lends [off, off+n). On any error the caller reads with
	// ReadAt, which tries every copy and repairs.
	ReadLent(ctx context.Context, off, n uint64) (*Lent, error)
}

// Device is a block device. Offsets and lengths are in bytes; callers keep
// them inside Size(). Writes are visible to reads at once; they are durable
// (survive a node crash) after Flush returns, or at once when fua is set.
// All methods are safe for concurrent use.
type Device interface {
	// Size is the current size in bytes (it may grow at run time).
	Size() uint64
	// ObjectSize is the allocation unit: discarding whole aligned objects frees space.
	ObjectSize() uint32
	ReadAt(ctx context.Context, p []byte, off uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	Flush(ctx context.Context) error
	// Discard drops [off, off+n): reads return zeros afterwards; whole
	// objects are freed, partial ranges are zeroed.
	Discard(ctx context.Context, off, n uint64) error
	// WriteZeroes makes [off, off+n) read as zeros (freeing space where it can).
	WriteZeroes(ctx context.Context, off, n uint64, fua bool) error
	// Extents describes allocation of [off, off+n) in order, covering it exactly.
	Extents(ctx context.Context, off, n uint64) ([]Extent, error)
	Close() error
}
