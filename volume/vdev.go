package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// vdev is a VDI opened as a Device. It caches the VDI's row and index and
// writes like QEMU's driver: WRITE to owned objects, CREATE for holes, COW
// CREATE for objects still owned by an ancestor, then the index update.
type vdev struct {
	m        *Manager
	name     string
	snapshot bool   // opened a snapshot: read-only, fixedVID set
	fixedVID uint32 // snapshot vid

	// gate is held for reading by every I/O and for writing while a
	// snapshot or rollback of this VDI is being taken.
	gate sync.RWMutex

	mu     sync.RWMutex
	vdi    cluster.VDI
	index  []uint32
	stale  bool
	closed bool

	locks rangeLocks // orders writes, allocation and COW per object index
}

// load installs row v and its index.
func (d *vdev) load(ctx context.Context, v *cluster.VDI) error {
	idx, err := d.m.ReadIndex(ctx, v, nrObjects(v.Size, v.ObjectSize()))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.vdi, d.index, d.stale = *v, idx, false
	d.mu.Unlock()
	return nil
}

func (d *vdev) markStale() {
	d.mu.Lock()
	d.stale = true
	d.mu.Unlock()
}

// noteChange marks the device stale when the table changed under it.
func (d *vdev) noteChange(s *cluster.State) {
	d.mu.RLock()
	vid, size := d.vdi.VID, d.vdi.Size
	d.mu.RUnlock()
	v, ok := s.VDIs[vid]
	stale := !ok || v.Size != size || v.Deleted || (!d.snapshot && v.IsSnapshot())
	if !d.snapshot {
		if w, ok := s.Working(d.name); !ok || w.VID != vid {
			stale = true
		}
	}
	if stale {
		d.markStale()
	}
}

// refresh reloads the row and index when stale.
func (d *vdev) refresh(ctx context.Context) error {
	d.mu.RLock()
	stale, closed := d.stale, d.closed
	d.mu.RUnlock()
	if closed {
		return fmt.Errorf("volume: %q: device closed: %w", d.name, proto.ResInvalidParms)
	}
	if !stale {
		return nil
	}
	var (
		v   *cluster.VDI
		err error
	)
	if d.snapshot {
		var ok bool
		if v, ok = d.m.VDI(d.fixedVID); !ok || v.Deleted {
			return fmt.Errorf("volume: snapshot of %q was deleted: %w", d.name, ErrNoVolume)
		}
	} else if v, err = d.m.Lookup(d.name, "", 0); err != nil {
		return fmt.Errorf("volume: %q: %w", d.name, wrapNoVDI(err))
	}
	return d.load(ctx, v)
}

// row returns a copy of the current table row.
func (d *vdev) row() cluster.VDI {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.vdi
}

func (d *vdev) Size() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.stale {
		if v, err := d.m.Lookup(d.name, "", 0); err == nil && !d.snapshot {
			return v.Size
		}
	}
	return d.vdi.Size
}

func (d *vdev) ObjectSize() uint32 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.vdi.ObjectSize()
}

// WritesInParts implements PartWriter: one copy, not erasure coded.
func (d *vdev) WritesInParts() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	r := d.vdi.Redundancy()
	return !r.IsEC() && r.Copies == 1
}

func (d *vdev) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.m.unregister(d)
	return nil
}

// piece is the part of an I/O inside one object.
type piece struct {
	idx   uint32
	inner uint32
	lo    uint64 // offset into the caller's buffer / range
	n     uint32
}

// pieces cuts [off, off+n) at object boundaries, and into pieces of at
// most chunk bytes (chunk >= objSize: object boundaries only).
func pieces(off, n uint64, objSize, chunk uint32) []piece {
	var out []piece
	os := uint64(objSize)
	for pos := off; pos < off+n; {
		idx := pos / os
		end := min(off+n, (idx+1)*os, pos+uint64(chunk))
		out = append(out, piece{idx: uint32(idx), inner: uint32(pos % os), lo: pos - off, n: uint32(end - pos)})
		pos = end
	}
	return out
}

// readChunk bounds the pieces a read is served in: a large read inside one
// object is split so that its copies out of the page cache and checksum
// checks run on more than one core.
const readChunk = 512 << 10

// begin refreshes the device and checks the range; callers hold d.gate.RLock.
func (d *vdev) begin(ctx context.Context, off, n uint64) (cluster.VDI, error) {
	if err := d.refresh(ctx); err != nil {
		return cluster.VDI{}, err
	}
	v := d.row()
	if off+n < off || off+n > v.Size {
		return v, fmt.Errorf("volume: %q: %d+%d beyond size %d: %w", d.name, off, n, v.Size, ErrOutOfRange)
	}
	return v, nil
}

// span begins an access to [off, off+n) (callers hold d.gate.RLock): the
// device row, and the range cut into pieces of at most chunk bytes (0:
// at object boundaries only) whose index entries are revalidated.
func (d *vdev) span(ctx context.Context, off, n uint64, chunk uint32) (cluster.VDI, []piece, error) {
	v, err := d.begin(ctx, off, n)
	if err != nil {
		return v, nil, err
	}
	if chunk == 0 {
		chunk = v.ObjectSize()
	}
	ps := pieces(off, n, v.ObjectSize(), chunk)
	if err := d.revalidate(ctx, &v, ps); err != nil {
		return v, nil, err
	}
	return v, ps, nil
}

// parallel runs fn over pieces, concurrently when there are several.
func parallel(ps []piece, fn func(p piece) error) error {
	if len(ps) == 1 {
		return fn(ps[0])
	}
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, p := range ps {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// revalidate re-reads the index entries of ps that the cache does not own:
// holes and ancestors' objects may have been allocated or copied on write
// by another device (another front end, another node) since we cached
// them, while an entry naming our own vid only changes by discard, which
// removes the object (and a read of a missing object returns zeros).
func (d *vdev) revalidate(ctx context.Context, v *cluster.VDI, ps []piece) error {
	lo, hi := uint32(0), uint32(0)
	found := false
	for _, pc := range ps {
		if d.owner(pc.idx) == v.VID {
			continue
		}
		if !found {
			lo, found = pc.idx, true
		}
		hi = pc.idx
	}
	if !found {
		return nil
	}
	buf := make([]byte, 4*(hi-lo+1))
	if err := d.m.cfg.Objects.Read(ctx, inodeObject(v), proto.IndexOffset(lo), buf); err != nil {
		return fmt.Errorf("volume: read index of %q: %w", d.name, err)
	}
	fresh := make([]uint32, hi-lo+1)
	proto.DecodeIndex(fresh, buf)
	d.mu.Lock()
	if d.vdi.VID == v.VID {
		for i, val := range fresh {
			if idx := lo + uint32(i); int(idx) < len(d.index) && d.index[idx] != v.VID {
				d.index[idx] = val
			}
		}
	}
	d.mu.Unlock()
	return nil
}

func (d *vdev) ReadAt(ctx context.Context, p []byte, off uint64) error {
	d.gate.RLock()
	defer d.gate.RUnlock()
	v, ps, err := d.span(ctx, off, uint64(len(p)), readChunk)
	if err != nil {
		return err
	}
	return parallel(ps, func(pc piece) error {
		buf := p[pc.lo : pc.lo+uint64(pc.n)]
		owner := d.owner(pc.idx)
		if owner == 0 {
			clear(buf)
			return nil
		}
		err := d.m.cfg.Objects.Read(ctx, dataObject(&v, owner, pc.idx), pc.inner, buf)
		if errors.Is(err, proto.ResNoObj) {
			// The index names an object that is gone (an interrupted
			// discard): it reads as a hole.
			clear(buf)
			return nil
		}
		return err
	})
}

// ReadLent implements Lender for a range inside one allocated object.
func (d *vdev) ReadLent(ctx context.Context, off, n uint64) (*Lent, error) {
	po, ok := d.m.cfg.Objects.(PinnedObjects)
	if !ok || n == 0 {
		return nil, ErrNotLent
	}
	d.gate.RLock()
	defer d.gate.RUnlock()
	v, ps, err := d.span(ctx, off, n, 0)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, ErrNotLent
	}
	pc := ps[0]
	owner := d.owner(pc.idx)
	if owner == 0 {
		return nil, ErrNotLent
	}
	return po.ReadPinned(ctx, dataObject(&v, owner, pc.idx), pc.inner, pc.n)
}

func (d *vdev) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if d.snapshot {
		return ErrReadOnly
	}
	return d.mutate(ctx, off, uint64(len(p)), func(ctx context.Context, v *cluster.VDI, pc piece) error {
		return d.writePiece(ctx, v, pc, p[pc.lo:pc.lo+uint64(pc.n)], fua)
	})
}

// mutate runs fn for each piece, reloading and retrying once the VDI turns
// out to have been snapshotted under us (READONLY).
func (d *vdev) mutate(ctx context.Context, off, n uint64, fn func(ctx context.Context, v *cluster.VDI, pc piece) error) error {
	d.gate.RLock()
	defer d.gate.RUnlock()
	for attempt := 0; ; attempt++ {
		v, err := d.begin(ctx, off, n)
		if err != nil {
			return err
		}
		err = parallel(pieces(off, n, v.ObjectSize(), v.ObjectSize()), func(pc piece) error {
			return fn(ctx, &v, pc)
		})
		if errors.Is(err, proto.ResReadonly) && attempt < maxReloads {
			d.markStale()
			continue
		}
		return err
	}
}

// writable checks the table: writes to a VDI that has become a snapshot
// (or was deleted) must go to the new working VDI.
func (d *vdev) writable(v *cluster.VDI) error {
	cur, ok := d.m.VDI(v.VID)
	if !ok || cur.Deleted || cur.IsSnapshot() {
		return fmt.Errorf("volume: %q (%#x) is no longer the working vdi: %w", d.name, v.VID, proto.ResReadonly)
	}
	return nil
}

func (d *vdev) owner(idx uint32) uint32 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if int(idx) < len(d.index) {
		return d.index[idx]
	}
	return 0
}

// lockIdx holds object index idx alone (allocation, copy-on-write,
// discard).
func (d *vdev) lockIdx(idx uint32) func() {
	return d.locks.lock(idx, 0, ^uint32(0), true)
}

// setIndex persists data_vdi_id[idx] = val in the inode, then the cache.
func (d *vdev) setIndex(ctx context.Context, v *cluster.VDI, idx, val uint32, fua bool) error {
	var b [4]byte
	b[0], b[1], b[2], b[3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
	if err := d.m.cfg.Objects.Write(ctx, inodeObject(v), proto.IndexOffset(idx), b[:], fua); err != nil {
		return fmt.Errorf("volume: update index of %q: %w", d.name, err)
	}
	// A snapshot taken on another node may have copied the index before
	// this update landed; then it is redone on the new working VDI.
	if err := d.m.ConfirmWorking(ctx, v.VID); err != nil {
		return err
	}
	d.mu.Lock()
	if d.vdi.VID == v.VID && int(idx) < len(d.index) {
		d.index[idx] = val
	}
	d.mu.Unlock()
	return nil
}

func (d *vdev) writePiece(ctx context.Context, v *cluster.VDI, pc piece, data []byte, fua bool) error {
	if err := d.writable(v); err != nil {
		return err
	}
	obj := dataObject(v, v.VID, pc.idx)
	if d.owner(pc.idx) == v.VID {
		// Our own object: writes to other ranges of it go on meanwhile;
		// only overlapping ones wait, so every copy applies them in the
		// same order.
		unlock := d.locks.lock(pc.idx, pc.inner, pc.inner+uint32(len(data)), false)
		if d.owner(pc.idx) == v.VID {
			err := d.m.cfg.Objects.Write(ctx, obj, pc.inner, data, fua)
			unlock()
			if !errors.Is(err, proto.ResNoObj) {
				return err
			}
			// Discarded by another device since we cached the entry: the
			// path below looks again and allocates.
		} else {
			unlock()
		}
	}
	unlock := d.lockIdx(pc.idx)
	defer unlock()
	owner := d.owner(pc.idx)
	if owner != v.VID {
		// Someone else may have allocated it meanwhile: never CREATE over it.
		if err := d.revalidate(ctx, v, []piece{pc}); err != nil {
			return err
		}
		owner = d.owner(pc.idx)
	}
	if owner == v.VID {
		err := d.m.cfg.Objects.Write(ctx, obj, pc.inner, data, fua)
		if !errors.Is(err, proto.ResNoObj) {
			return err
		}
		// Discarded by another device since we cached the entry: look
		// again and allocate.
		d.mu.Lock()
		if d.vdi.VID == v.VID && int(pc.idx) < len(d.index) {
			d.index[pc.idx] = 0
		}
		d.mu.Unlock()
		if err := d.revalidate(ctx, v, []piece{pc}); err != nil {
			return err
		}
		if owner = d.owner(pc.idx); owner == v.VID {
			return d.allocate(ctx, obj, pc.inner, data, pc.inner, data, fua)
		}
	}
	switch owner {
	case 0:
		if err := d.allocate(ctx, obj, pc.inner, data, pc.inner, data, fua); err != nil {
			return err
		}
	default:
		// Copy-on-write from the ancestor's object.
		full := make([]byte, v.ObjectSize())
		if err := d.m.cfg.Objects.Read(ctx, dataObject(v, owner, pc.idx), 0, full); err != nil && !errors.Is(err, proto.ResNoObj) {
			return fmt.Errorf("volume: copy-on-write read of %s: %w", proto.DataOID(owner, pc.idx), err)
		}
		copy(full[pc.inner:], data)
		if err := d.allocate(ctx, obj, 0, full, pc.inner, data, fua); err != nil {
			return err
		}
	}
	return d.setIndex(ctx, v, pc.idx, v.VID, fua)
}

// allocate creates our object with init at initOff, unless another device
// (on this node or another) created it meanwhile: then only our own range
// (data at off) is written into it, never wiping what the other wrote.
func (d *vdev) allocate(ctx context.Context, obj gateway.Object, initOff uint32, init []byte, off uint32, data []byte, fua bool) error {
	err := d.m.cfg.Objects.CreateExclusive(ctx, obj, initOff, init, fua)
	if errors.Is(err, proto.ResOIDExist) {
		return d.m.cfg.Objects.Write(ctx, obj, off, data, fua)
	}
	return err
}

func (d *vdev) Flush(ctx context.Context) error {
	return d.m.cfg.Objects.Flush(ctx)
}

func (d *vdev) Discard(ctx context.Context, off, n uint64) error {
	return d.zero(ctx, off, n, false)
}

func (d *vdev) WriteZeroes(ctx context.Context, off, n uint64, fua bool) error {
	return d.zero(ctx, off, n, fua)
}

// zero makes a range read as zeros: whole objects leave the index (own
// objects are removed), partial ranges are zeroed in place or by COW.
func (d *vdev) zero(ctx context.Context, off, n uint64, fua bool) error {
	if d.snapshot {
		return ErrReadOnly
	}
	return d.mutate(ctx, off, n, func(ctx context.Context, v *cluster.VDI, pc piece) error {
		if err := d.writable(v); err != nil {
			return err
		}
		unlock := d.lockIdx(pc.idx)
		defer unlock()
		if err := d.revalidate(ctx, v, []piece{pc}); err != nil {
			return err
		}
		owner := d.owner(pc.idx)
		if owner == 0 {
			return nil
		}
		whole := pc.inner == 0 && pc.n == v.ObjectSize()
		switch {
		case whole:
			if owner == v.VID {
				// Before the index lets go of it (see gateway Discard).
				if err := d.m.cfg.Objects.Discard(ctx, dataObject(v, owner, pc.idx), fua); err != nil {
					return err
				}
			}
			return d.setIndex(ctx, v, pc.idx, 0, fua)
		case owner == v.VID:
			return d.m.cfg.Objects.Zero(ctx, dataObject(v, owner, pc.idx), pc.inner, pc.n, fua)
		default:
			full := make([]byte, v.ObjectSize())
			if err := d.m.cfg.Objects.Read(ctx, dataObject(v, owner, pc.idx), 0, full); err != nil && !errors.Is(err, proto.ResNoObj) {
				return err
			}
			clear(full[pc.inner : pc.inner+pc.n])
			if err := d.allocate(ctx, dataObject(v, v.VID, pc.idx), 0, full, pc.inner, make([]byte, pc.n), fua); err != nil {
				return err
			}
			return d.setIndex(ctx, v, pc.idx, v.VID, fua)
		}
	})
}

func (d *vdev) Extents(ctx context.Context, off, n uint64) ([]Extent, error) {
	d.gate.RLock()
	defer d.gate.RUnlock()
	_, ps, err := d.span(ctx, off, n, 0)
	if err != nil {
		return nil, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []Extent
	for _, pc := range ps {
		alloc := int(pc.idx) < len(d.index) && d.index[pc.idx] != 0
		if k := len(out) - 1; k >= 0 && out[k].Allocated == alloc {
			out[k].Length += uint64(pc.n)
			continue
		}
		out = append(out, Extent{Offset: off + pc.lo, Length: uint64(pc.n), Allocated: alloc})
	}
	return out, nil
}

var _ Device = (*vdev)(nil)

// maxReloads bounds how often one write follows the VDI into a newer
// snapshot generation (each snapshot committed while it was in flight
// costs one reload and copy-on-write).
const maxReloads = 16
