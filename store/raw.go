package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"slices"

	"golang.org/x/sys/unix"

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

// NewRaw is a Raw for lenders outside this store (test devices): release
// runs once, at the first Release.
func NewRaw(src io.ReaderAt, off int64, n int, release func()) *Raw {
	return &Raw{Src: src, Off: off, N: n, release: release}
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

// PinnedReader lends out a verified range of an object, so a front end
// can send it from the object file (sendfile) instead of copying it.
type PinnedReader interface {
	// ReadPinned checks every block that [off, off+n) of k touches against
	// its checksums, as Read does, and pins the range: the object cannot
	// change until Release. Its errors are Read's.
	ReadPinned(ctx context.Context, k Key, off, n uint32) (*Raw, error)
}

var _ PinnedReader = (*Disk)(nil)

// ReadPinned implements PinnedReader.
func (d *Disk) ReadPinned(ctx context.Context, k Key, off, n uint32) (*Raw, error) {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return nil, err
	}
	if err := checkRange(k, o.h.size, off, uint64(n)); err != nil {
		unpin()
		return nil, err
	}
	if n > 0 {
		sawPrev, err := d.verifyInPlace(o, off, n)
		if sawPrev {
			o.sawPrev.Store(true)
		}
		if err != nil {
			unpin()
			return nil, err
		}
	}
	return &Raw{Src: o.f, Off: int64(o.h.dataOff) + int64(off), N: int(n), release: unpin}, nil
}

// errMappedFault: reading a mapped object faulted (the file is shorter
// than its header says, or the disk failed the read).
var errMappedFault = errors.New("fault reading mapped object file")

// verifyInPlace verifies the blocks [off, off+n) touches where they lie
// in the page cache, through a read-only mapping of the file kept while
// it is open, so that checking costs no copy and no mapping per read. A
// file without a descriptor is read into a buffer instead.
func (d *Disk) verifyInPlace(o *object, off, n uint32) (sawPrev bool, err error) {
	h := &o.h
	m, ok, err := d.mapData(o)
	if err != nil {
		return false, ioError("map", o.key, err)
	}
	if !ok {
		return d.readVerify(o.f, h, o.sums, off, make([]byte, n), o.key, false, 0)
	}
	b0, b1 := off/h.bs, (off+n-1)/h.bs
	return verifyMapped(h, o.sums, o.key, b0, m[h.blockStart(b0):h.blockEnd(b1)])
}

// mapData returns o's data area mapped read-only (o.mu held, at least
// for reading), mapping it on first use. ok is false for a file without a
// descriptor. Mappings past MapBudget are dropped oldest first.
func (d *Disk) mapData(o *object) (m []byte, ok bool, err error) {
	if p := o.mapped.Load(); p != nil {
		return *p, true, nil
	}
	ok, cerr := withFD(o.f, func(fd uintptr) {
		// dataOff is page-aligned, as mmap needs. The mapping stays
		// (a mapping per read cost ~8 % of a 1 MiB read), and so do
		// its pages: dropping them after each check (MADV_DONTNEED)
		// cost ~10 %, and populating each range up front
		// (MADV_POPULATE_READ) ~5 %, in interleaved runs.
		m, err = unix.Mmap(int(fd), int64(o.h.dataOff), int(o.h.size), unix.PROT_READ, unix.MAP_SHARED)
	})
	if !ok {
		return nil, false, nil
	}
	if cerr != nil {
		return nil, false, cerr
	}
	if err != nil {
		return nil, false, err
	}
	if !o.mapped.CompareAndSwap(nil, &m) {
		unix.Munmap(m) // another reader mapped it first
		return *o.mapped.Load(), true, nil
	}
	d.mapMu.Lock()
	d.maps = append(d.maps, o)
	d.mappedBytes += int64(len(m))
	for i := 0; d.mappedBytes > d.mapBudget && i < len(d.maps)-1; {
		v := d.maps[i]
		// A victim in use (read or written) keeps its mapping for now:
		// waiting for its lock here could deadlock.
		if !v.mu.TryLock() {
			i++
			continue
		}
		if p := v.mapped.Swap(nil); p != nil {
			unix.Munmap(*p)
			d.mappedBytes -= int64(len(*p))
		}
		v.mu.Unlock()
		d.maps = slices.Delete(d.maps, i, i+1)
	}
	d.mapMu.Unlock()
	return m, true, nil
}

// unmap drops o's mapping before its file closes (o.mu held for writing,
// so no reader is using it).
func (d *Disk) unmap(o *object) {
	p := o.mapped.Swap(nil)
	if p == nil {
		return
	}
	unix.Munmap(*p)
	d.mapMu.Lock()
	if i := slices.Index(d.maps, o); i >= 0 {
		d.maps = slices.Delete(d.maps, i, i+1)
		d.mappedBytes -= int64(len(*p))
	}
	d.mapMu.Unlock()
}

// verifyMapped checks the whole blocks held in m, the first of them b0,
// turning a fault on the mapping into an error instead of a crash.
func verifyMapped(h *header, sums []byte, k Key, b0 uint32, m []byte) (sawPrev bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = ioError("read", k, errMappedFault)
		}
	}()
	return verifyRun(h, sums, b0, m, k, false, 0)
}
