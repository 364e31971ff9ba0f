package store

import (
	"context"
	"fmt"
	"io"

	"github.com/gosheep/gosheep/proto"
)

// RawReader lends out a range of an object as it is stored, so it can be
// sent to another node without passing through this one's memory
// (sendfile): the receiver checks the data against the block checksums
// that come with it.
type RawReader interface {
	// ReadRaw pins [off, off+n) of k, both multiples of SumBlock, and
	// appends the stored (cur) checksum of each of its blocks to sums. The
	// data is not read or verified: a block that fails the receiver's
	// check may be rotten or the remnant of a torn write (matching its
	// prev checksum), and the receiver must then fall back to Read, which
	// tells the two apart. The object cannot change until Release.
	ReadRaw(ctx context.Context, k Key, off, n uint32, sums []uint32) (*Raw, []uint32, error)
}

// Raw is a pinned range of an object file.
type Raw struct {
	// Src holds the data at [Off, Off+N). It implements syscall.Conn when
	// the file is an operating system file.
	Src io.ReaderAt
	Off int64
	N   int

	release func()
}

// Release unpins the range; Src must not be used after it. Idempotent.
func (r *Raw) Release() {
	if r.release != nil {
		r.release()
		r.release = nil
	}
}

var _ RawReader = (*Disk)(nil)

// ReadRaw implements RawReader.
func (d *Disk) ReadRaw(ctx context.Context, k Key, off, n uint32, sums []uint32) (*Raw, []uint32, error) {
	if off%SumBlock != 0 || n%SumBlock != 0 {
		return nil, sums, fmt.Errorf("store: raw read of %s at %d+%d: not whole blocks: %w", k, off, n, proto.ResInvalidParms)
	}
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return nil, sums, err
	}
	if err := checkRange(k, o.h.size, off, uint64(n)); err != nil {
		unpin()
		return nil, sums, err
	}
	for b := off / SumBlock; b < (off+n)/SumBlock; b++ {
		_, cur := pairAt(o.sums, b)
		sums = append(sums, cur)
	}
	return &Raw{Src: o.f, Off: int64(o.h.dataOff) + int64(off), N: int(n), release: unpin}, sums, nil
}
