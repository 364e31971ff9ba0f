// Package voltest provides an in-memory volume.Device for front-end tests.
package voltest

import (
	"context"
	"sync"

	"github.com/gosheep/gosheep/volume"
)

// MemDevice is a sparse in-memory volume.Device. Discarded and never-written
// objects are holes. It can be resized and made to fail, for fault tests.
type MemDevice struct {
	mu      sync.RWMutex
	size    uint64
	objSize uint32
	objs    map[uint64][]byte
	flushes int
	// Fail, when set, is consulted before every operation; a non-nil
	// result is returned instead of doing it.
	Fail func(op string, off, n uint64) error
}

// NewMemDevice returns a device of size bytes with objSize-byte objects.
func NewMemDevice(size uint64, objSize uint32) *MemDevice {
	return &MemDevice{size: size, objSize: objSize, objs: map[uint64][]byte{}}
}

// Resize changes the size (data beyond a shrink is dropped).
func (d *MemDevice) Resize(size uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.size = size
	for idx := range d.objs {
		if idx*uint64(d.objSize) >= size {
			delete(d.objs, idx)
		}
	}
}

// Flushes counts Flush calls.
func (d *MemDevice) Flushes() int { d.mu.RLock(); defer d.mu.RUnlock(); return d.flushes }

// AllocatedObjects counts objects holding data.
func (d *MemDevice) AllocatedObjects() int { d.mu.RLock(); defer d.mu.RUnlock(); return len(d.objs) }

func (d *MemDevice) Size() uint64       { d.mu.RLock(); defer d.mu.RUnlock(); return d.size }
func (d *MemDevice) ObjectSize() uint32 { return d.objSize }
func (d *MemDevice) Close() error       { return nil }

func (d *MemDevice) check(op string, off, n uint64) error {
	if d.Fail != nil {
		if err := d.Fail(op, off, n); err != nil {
			return err
		}
	}
	if off+n < off || off+n > d.size {
		return volume.ErrOutOfRange
	}
	return nil
}

// each calls fn for every object-sized piece of [off, off+n).
func (d *MemDevice) each(off, n uint64, fn func(idx uint64, inner uint32, lo, hi uint64)) {
	os := uint64(d.objSize)
	for pos := off; pos < off+n; {
		idx, inner := pos/os, pos%os
		end := min(off+n, (idx+1)*os)
		fn(idx, uint32(inner), pos-off, end-off)
		pos = end
	}
}

func (d *MemDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.check("read", off, uint64(len(p))); err != nil {
		return err
	}
	d.each(off, uint64(len(p)), func(idx uint64, inner uint32, lo, hi uint64) {
		if o, ok := d.objs[idx]; ok {
			copy(p[lo:hi], o[inner:])
		} else {
			clear(p[lo:hi])
		}
	})
	return nil
}

func (d *MemDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check("write", off, uint64(len(p))); err != nil {
		return err
	}
	d.each(off, uint64(len(p)), func(idx uint64, inner uint32, lo, hi uint64) {
		o, ok := d.objs[idx]
		if !ok {
			o = make([]byte, d.objSize)
			d.objs[idx] = o
		}
		copy(o[inner:], p[lo:hi])
	})
	return nil
}

func (d *MemDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check("flush", 0, 0); err != nil {
		return err
	}
	d.flushes++
	return nil
}

func (d *MemDevice) Discard(ctx context.Context, off, n uint64) error {
	return d.zero("discard", off, n)
}

func (d *MemDevice) WriteZeroes(ctx context.Context, off, n uint64, fua bool) error {
	return d.zero("write-zeroes", off, n)
}

func (d *MemDevice) zero(op string, off, n uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(op, off, n); err != nil {
		return err
	}
	d.each(off, n, func(idx uint64, inner uint32, lo, hi uint64) {
		o, ok := d.objs[idx]
		if !ok {
			return
		}
		if inner == 0 && hi-lo == uint64(d.objSize) {
			delete(d.objs, idx)
			return
		}
		clear(o[inner : uint64(inner)+hi-lo])
	})
	return nil
}

func (d *MemDevice) Extents(ctx context.Context, off, n uint64) ([]volume.Extent, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.check("extents", off, n); err != nil {
		return nil, err
	}
	var out []volume.Extent
	d.each(off, n, func(idx uint64, inner uint32, lo, hi uint64) {
		_, alloc := d.objs[idx]
		if k := len(out) - 1; k >= 0 && out[k].Allocated == alloc {
			out[k].Length += hi - lo
			return
		}
		out = append(out, volume.Extent{Offset: off + lo, Length: hi - lo, Allocated: alloc})
	})
	return out, nil
}

var _ volume.Device = (*MemDevice)(nil)
