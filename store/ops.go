package store

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/gosheep/gosheep/store/vfs"
)

// Create makes an object of size bytes with data at off, atomically: it is
// written to a temp file and renamed over any existing copy.
func (d *Disk) Create(ctx context.Context, k Key, size uint32, off uint32, data []byte, o WriteOpts) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	if size == 0 {
		return fmt.Errorf("store: create %s of size 0: %w", fileName(k), ErrOutOfRange)
	}
	if err := checkRange(size, off, len(data)); err != nil {
		return fmt.Errorf("store: create %s: %w", fileName(k), err)
	}
	hdr := header{size: size, blockSize: blockSizeFor(size), epoch: o.Epoch, key: k}
	if err := d.reserveSpace(k, uint64(hdr.dataOff())+uint64(len(data))+uint64(hdr.blockSize)); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.Lock()
	defer l.Unlock()
	if o.Exclusive {
		d.idxMu.RLock()
		_, exists := d.index[k]
		d.idxMu.RUnlock()
		if exists {
			return fmt.Errorf("store: create %s: %w", fileName(k), ErrExists)
		}
	}
	tmp := d.tmpPath(k)
	err := d.writeNew(tmp, &hdr, off, data, o.Sync)
	if err != nil {
		d.fs.Remove(tmp)
		return mapErr(k, "create", err)
	}
	d.forget(k)
	if err := d.fs.Rename(tmp, d.path(k)); err != nil {
		d.fs.Remove(tmp)
		return mapErr(k, "create", err)
	}
	if o.Sync && !d.opts.NoSync {
		if err := d.fs.SyncDir(d.objDir); err != nil {
			return mapErr(k, "create", err)
		}
	} else {
		d.dirtyMu.Lock()
		d.dirDirty = true
		d.dirtyMu.Unlock()
	}
	var alloc uint64
	if fi, err := d.fs.Stat(d.path(k)); err == nil {
		alloc = vfs.Allocated(fi)
	}
	d.idxMu.Lock()
	old := d.index[k]
	d.used.Add(int64(alloc) - int64(old.allocated))
	d.index[k] = meta{size: size, epoch: o.Epoch, allocated: alloc}
	d.idxMu.Unlock()
	return nil
}

// writeNew writes a complete object file at p.
func (d *Disk) writeNew(p string, hdr *header, off uint32, data []byte, sync bool) error {
	f, err := d.fs.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	nb := hdr.nblocks()
	sums := make([]byte, hdr.sumsLen())
	zfull := zeroCRC(hdr.blockSize)
	var first, last uint32 = 1, 0 // blocks touched by data
	if len(data) > 0 {
		first, last = off/hdr.blockSize, (off+uint32(len(data))-1)/hdr.blockSize
	}
	var block []byte
	for b := uint32(0); b < nb; b++ {
		bl := hdr.blockLen(b)
		c := zfull
		if bl != hdr.blockSize {
			c = zeroCRC(bl)
		}
		if b >= first && b <= last {
			if block == nil {
				block = make([]byte, hdr.blockSize)
			}
			blk := block[:bl]
			clear(blk)
			start := b * hdr.blockSize
			lo := max(start, off)
			hi := min(start+bl, off+uint32(len(data)))
			copy(blk[lo-start:], data[lo-off:hi-off])
			c = crc(blk)
		}
		binary.LittleEndian.PutUint32(sums[8*b:], c)
		binary.LittleEndian.PutUint32(sums[8*b+4:], c)
	}
	hdr.flags = flagClean
	hb := make([]byte, headerSize)
	copy(hb, hdr.marshal())
	if _, err := f.WriteAt(hb, 0); err != nil {
		return err
	}
	if len(sums) > 0 {
		if _, err := f.WriteAt(sums, headerSize); err != nil {
			return err
		}
	}
	if err := writeSparse(f, data, hdr.dataOff()+int64(off)); err != nil {
		return err
	}
	// Size the file so the sparse tail reads as zeros.
	if st, err := f.Stat(); err == nil && st.Size() < hdr.dataOff()+int64(hdr.size) {
		if err := f.Truncate(hdr.dataOff() + int64(hdr.size)); err != nil {
			return err
		}
	}
	if sync && !d.opts.NoSync {
		return f.Sync()
	}
	return nil
}

// readBlocks reads whole blocks [first, last] into buf and verifies them.
// With exclusive set (the caller holds the key's write lock) it also
// records what it learned about the blocks.
func (d *Disk) readBlocks(h *handle, first, last uint32, buf []byte, exclusive bool) error {
	start := first * h.hdr.blockSize
	end := last*h.hdr.blockSize + h.hdr.blockLen(last)
	if _, err := h.f.ReadAt(buf[:end-start], h.hdr.dataOff()+int64(start)); err != nil {
		return fmt.Errorf("store: read %s: %w", fileName(h.key), err)
	}
	for b := first; b <= last; b++ {
		lo := (b - first) * h.hdr.blockSize
		blk := buf[lo : lo+h.hdr.blockLen(b)]
		c := crc(blk)
		switch {
		case c == h.cur(b):
		case c == h.prev(b):
			// A write was torn by a crash before it was acknowledged: the
			// block still holds the previous data. Adopt it as current.
			if exclusive {
				h.sums[2*b] = c
			}
		default:
			return fmt.Errorf("store: %s: block at offset %d (crc %08x, want %08x or %08x): %w",
				fileName(h.key), b*h.hdr.blockSize, c, h.cur(b), h.prev(b), ErrCorrupt)
		}
		if exclusive {
			h.setKnown(b)
		}
	}
	return nil
}

// Read fills p from off, verifying every block it touches.
func (d *Disk) Read(ctx context.Context, k Key, off uint32, p []byte) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.RLock()
	defer l.RUnlock()
	return d.readLocked(k, off, p)
}

func (d *Disk) readLocked(k Key, off uint32, p []byte) error {
	h, err := d.acquire(k)
	if err != nil {
		return err
	}
	defer d.release(h)
	if err := checkRange(h.hdr.size, off, len(p)); err != nil {
		return fmt.Errorf("store: read %s: %w", fileName(k), err)
	}
	if len(p) == 0 {
		return nil
	}
	bs := h.hdr.blockSize
	first, last := off/bs, (off+uint32(len(p))-1)/bs
	aligned := off%bs == 0 && (uint32(len(p))%bs == 0 || off+uint32(len(p)) == h.hdr.size)
	if aligned {
		return d.readBlocks(h, first, last, p, false)
	}
	buf := make([]byte, (last-first+1)*bs)
	if err := d.readBlocks(h, first, last, buf, false); err != nil {
		return err
	}
	copy(p, buf[off-first*bs:])
	return nil
}

// Write writes data at off into the existing object. Checksum slots are
// written before the data, so a crash in between leaves every block
// matching one of its two slots.
func (d *Disk) Write(ctx context.Context, k Key, off uint32, data []byte, o WriteOpts) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	return d.mutate(k, o, func(h *handle) error {
		if err := checkRange(h.hdr.size, off, len(data)); err != nil {
			return err
		}
		return d.writeRange(h, off, data, false)
	})
}

// Zero makes [off, off+n) read as zeros, punching holes for whole blocks.
func (d *Disk) Zero(ctx context.Context, k Key, off, n uint32, o WriteOpts) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	return d.mutate(k, o, func(h *handle) error {
		if err := checkRange(h.hdr.size, off, int(n)); err != nil {
			return err
		}
		return d.writeRange(h, off, make([]byte, 0, n), true)
	})
}

func (d *Disk) mutate(k Key, o WriteOpts, fn func(h *handle) error) error {
	l := d.keyLock(k)
	l.Lock()
	defer l.Unlock()
	h, err := d.acquire(k)
	if err != nil {
		return err
	}
	defer d.release(h)
	if err := d.markDirty(h); err != nil {
		return mapErr(k, "write", err)
	}
	if err := fn(h); err != nil {
		return mapErr(k, "write", err)
	}
	if o.Epoch > h.hdr.epoch {
		h.hdr.epoch = o.Epoch
		if _, err := h.f.WriteAt(h.hdr.marshal(), 0); err != nil {
			return mapErr(k, "write", err)
		}
	}
	if o.Sync {
		if err := d.syncFile(h); err != nil {
			return mapErr(k, "sync", err)
		}
	}
	d.account(k, h)
	return nil
}

// writeRange writes data (or zeros when zero is set; then cap(data) is the
// length) at off.
func (d *Disk) writeRange(h *handle, off uint32, data []byte, zero bool) error {
	n := uint32(len(data))
	if zero {
		n = uint32(cap(data))
	}
	if n == 0 {
		return nil
	}
	bs := h.hdr.blockSize
	first, last := off/bs, (off+n-1)/bs
	if !zero {
		if err := d.reserveSpace(h.key, uint64(n)); err != nil {
			return err
		}
	}
	headPartial := off%bs != 0 || (first == last && n < h.hdr.blockLen(first))
	tailPartial := (off+n)%bs != 0 && off+n != h.hdr.size
	// Blocks whose current content we do not know must be read first, or a
	// second crash could leave them matching neither slot.
	needRead := headPartial || tailPartial
	for b := first; b <= last && !needRead; b++ {
		needRead = !h.isKnown(b)
	}
	// span holds the new content of blocks [first, last]; whole-block
	// writes of known blocks use data in place (no copy).
	var span []byte
	if zero || needRead {
		span = make([]byte, (last-first+1)*bs)
		if needRead {
			if err := d.readBlocks(h, first, last, span, true); err != nil && !errors.Is(err, ErrCorrupt) {
				return err
			} else if err != nil && (headPartial || tailPartial) {
				return err // cannot merge into a corrupt block
			}
		}
		if zero {
			clear(span[off-first*bs : off-first*bs+n])
		} else {
			copy(span[off-first*bs:], data)
		}
	} else {
		span = data
	}
	// New checksum slots: {new, what is on disk now}.
	sums := make([]byte, 8*(last-first+1))
	for b := first; b <= last; b++ {
		lo := (b - first) * bs
		c := crc(span[lo : lo+h.hdr.blockLen(b)])
		binary.LittleEndian.PutUint32(sums[8*(b-first):], c)
		binary.LittleEndian.PutUint32(sums[8*(b-first)+4:], h.cur(b))
	}
	if _, err := h.f.WriteAt(sums, headerSize+int64(first)*slotSize); err != nil {
		return err
	}
	for b := first; b <= last; b++ {
		h.sums[2*b+1] = h.cur(b)
		h.sums[2*b] = binary.LittleEndian.Uint32(sums[8*(b-first):])
	}
	end := last*bs + h.hdr.blockLen(last)
	dataOff := h.hdr.dataOff()
	if zero {
		// Punch whole blocks; write zeros into partial ones.
		pStart, pEnd := first, last+1
		if headPartial {
			pStart++
		}
		if tailPartial {
			pEnd--
		}
		if headPartial {
			if _, err := h.f.WriteAt(span[:h.hdr.blockLen(first)], dataOff+int64(first*bs)); err != nil {
				return err
			}
		}
		if tailPartial && last != first {
			lo := (last - first) * bs
			if _, err := h.f.WriteAt(span[lo:lo+h.hdr.blockLen(last)], dataOff+int64(last*bs)); err != nil {
				return err
			}
		}
		if pEnd > pStart {
			if err := h.f.Punch(dataOff+int64(pStart*bs), int64(min(pEnd*bs, h.hdr.size)-pStart*bs)); err != nil {
				return err
			}
		}
	} else if !headPartial && !tailPartial && !needRead {
		if _, err := h.f.WriteAt(data, dataOff+int64(off)); err != nil {
			return err
		}
	} else {
		if _, err := h.f.WriteAt(span[:end-first*bs], dataOff+int64(first*bs)); err != nil {
			return err
		}
	}
	for b := first; b <= last; b++ {
		h.setKnown(b)
	}
	return nil
}

// Remove deletes the object; a missing object is not an error.
func (d *Disk) Remove(ctx context.Context, k Key) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.Lock()
	defer l.Unlock()
	d.forget(k)
	err := d.fs.Remove(d.path(k))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return mapErr(k, "remove", err)
	}
	d.idxMu.Lock()
	if m, ok := d.index[k]; ok {
		d.used.Add(-int64(m.allocated))
		delete(d.index, k)
	}
	d.idxMu.Unlock()
	d.dirtyMu.Lock()
	d.dirDirty = true
	d.dirtyMu.Unlock()
	return nil
}

// Stat describes a live object from the in-memory index.
func (d *Disk) Stat(ctx context.Context, k Key) (ObjInfo, error) {
	if err := d.check(ctx); err != nil {
		return ObjInfo{}, err
	}
	d.idxMu.RLock()
	m, ok := d.index[k]
	d.idxMu.RUnlock()
	if !ok {
		return ObjInfo{}, fmt.Errorf("store: stat %s: %w", fileName(k), ErrNotFound)
	}
	return ObjInfo{Key: k, Size: m.size, Epoch: m.epoch}, nil
}

// List returns every live object, ordered by key.
func (d *Disk) List(ctx context.Context) ([]ObjInfo, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	d.idxMu.RLock()
	out := make([]ObjInfo, 0, len(d.index))
	for k, m := range d.index {
		out = append(out, ObjInfo{Key: k, Size: m.size, Epoch: m.epoch})
	}
	d.idxMu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return keyLess(out[i].Key, out[j].Key) })
	return out, nil
}

func keyLess(a, b Key) bool {
	if a.OID != b.OID {
		return a.OID < b.OID
	}
	if a.EC != b.EC {
		return !a.EC
	}
	return a.ECIndex < b.ECIndex
}

// Hash is the SHA-1 of the object's content.
func (d *Disk) Hash(ctx context.Context, k Key) ([20]byte, error) {
	if err := d.check(ctx); err != nil {
		return [20]byte{}, err
	}
	l := d.keyLock(k)
	l.RLock()
	defer l.RUnlock()
	info, err := d.Stat(ctx, k)
	if err != nil {
		return [20]byte{}, err
	}
	buf := make([]byte, info.Size)
	if err := d.readLocked(k, 0, buf); err != nil {
		return [20]byte{}, err
	}
	return sha1.Sum(buf), nil
}

// Verify reads the whole object and checks every block.
func (d *Disk) Verify(ctx context.Context, k Key) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.RLock()
	defer l.RUnlock()
	info, err := d.Stat(ctx, k)
	if err != nil {
		return err
	}
	return d.readLocked(k, 0, make([]byte, info.Size))
}

// Sync makes every acknowledged mutation durable.
func (d *Disk) Sync(ctx context.Context) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	if d.opts.NoSync {
		return nil
	}
	d.dirtyMu.Lock()
	hs := make([]*handle, 0, len(d.dirty))
	for h := range d.dirty {
		hs = append(hs, h)
	}
	dirDirty := d.dirDirty
	d.dirDirty = false
	d.dirtyMu.Unlock()
	var errs []error
	for _, h := range hs {
		// Hold a reference so eviction cannot close the file under us; a
		// handle already retired was synced by retire.
		d.fdMu.Lock()
		live := !h.gone || h.refs > 0
		if live {
			h.refs++
		}
		d.fdMu.Unlock()
		if !live {
			continue
		}
		d.dirtyMu.Lock()
		delete(d.dirty, h)
		d.dirtyMu.Unlock()
		if err := h.f.Sync(); err != nil {
			errs = append(errs, mapErr(h.key, "sync", err))
			d.dirtyMu.Lock()
			d.dirty[h] = struct{}{}
			d.dirtyMu.Unlock()
		}
		d.release(h)
	}
	if dirDirty {
		for _, dir := range []string{d.objDir, d.staleDir} {
			if err := d.fs.SyncDir(dir); err != nil {
				errs = append(errs, fmt.Errorf("store: sync %s: %w", dir, err))
				d.dirtyMu.Lock()
				d.dirDirty = true
				d.dirtyMu.Unlock()
			}
		}
	}
	return errors.Join(errs...)
}

// Close syncs and releases every file.
func (d *Disk) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.fdMu.Lock()
	hs := make([]*handle, 0, len(d.fds))
	for _, h := range d.fds {
		hs = append(hs, h)
	}
	d.fds = map[Key]*handle{}
	d.lru.Init()
	d.fdMu.Unlock()
	for _, h := range hs {
		l := d.keyLock(h.key)
		l.Lock()
		d.retire(h, true)
		l.Unlock()
	}
	d.retiring.Wait()
	if !d.opts.NoSync {
		d.fs.SyncDir(d.objDir)
	}
	d.unlockDir()
	return nil
}

func (d *Disk) stalePath(k Key, epoch uint32) string {
	return filepath.Join(d.staleDir, staleName(k, epoch))
}

// Stash moves a live object aside as a stale copy of epoch.
func (d *Disk) Stash(ctx context.Context, k Key, epoch uint32) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.Lock()
	defer l.Unlock()
	d.forget(k)
	if err := d.fs.Rename(d.path(k), d.stalePath(k, epoch)); err != nil {
		return mapErr(k, "stash", err)
	}
	d.idxMu.Lock()
	delete(d.index, k) // its allocation stays counted in used
	d.idxMu.Unlock()
	d.stale.Add(1)
	d.dirtyMu.Lock()
	d.dirDirty = true
	d.dirtyMu.Unlock()
	return nil
}

// Unstash moves a stale copy back to live when no live copy exists.
func (d *Disk) Unstash(ctx context.Context, k Key, epoch uint32) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	l := d.keyLock(k)
	l.Lock()
	defer l.Unlock()
	d.idxMu.RLock()
	_, live := d.index[k]
	d.idxMu.RUnlock()
	if live {
		return fmt.Errorf("store: unstash %s: %w", fileName(k), ErrExists)
	}
	sp := d.stalePath(k, epoch)
	h, alloc, err := d.readHeaderFile(sp)
	if err != nil {
		return mapErr(k, "unstash", err)
	}
	if err := d.fs.Rename(sp, d.path(k)); err != nil {
		return mapErr(k, "unstash", err)
	}
	d.idxMu.Lock()
	d.index[k] = meta{size: h.size, epoch: h.epoch, allocated: alloc}
	d.idxMu.Unlock()
	d.stale.Add(-1)
	return nil
}

// ListStale lists stashed copies.
func (d *Disk) ListStale(ctx context.Context) ([]StaleInfo, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	ents, err := d.fs.ReadDir(d.staleDir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []StaleInfo
	for _, e := range ents {
		k, epoch, ok := parseStaleName(e.Name())
		if !ok {
			continue
		}
		h, _, err := d.readHeaderFile(filepath.Join(d.staleDir, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, StaleInfo{Key: k, Epoch: epoch, Size: h.size, ObjEpoch: h.epoch})
	}
	return out, nil
}

// ReadStale reads from a stale copy, verifying checksums.
func (d *Disk) ReadStale(ctx context.Context, k Key, epoch uint32, off uint32, p []byte) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	sp := d.stalePath(k, epoch)
	f, err := d.fs.OpenFile(sp, os.O_RDONLY, 0)
	if err != nil {
		return mapErr(k, "read stale", err)
	}
	defer f.Close()
	hb := make([]byte, hdrFieldsLen)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return fmt.Errorf("store: stale %s: %v: %w", fileName(k), err, ErrCorrupt)
	}
	hdr, err := parseHeader(hb)
	if err != nil {
		return err
	}
	sb := make([]byte, hdr.sumsLen())
	if _, err := f.ReadAt(sb, headerSize); err != nil {
		return fmt.Errorf("store: stale %s: %v: %w", fileName(k), err, ErrCorrupt)
	}
	h := &handle{key: k, f: f, hdr: hdr, sums: make([]uint32, 2*hdr.nblocks()), known: make([]uint64, (hdr.nblocks()+63)/64)}
	for i := range h.sums {
		h.sums[i] = binary.LittleEndian.Uint32(sb[4*i:])
	}
	if err := checkRange(hdr.size, off, len(p)); err != nil || len(p) == 0 {
		return err
	}
	bs := hdr.blockSize
	first, last := off/bs, (off+uint32(len(p))-1)/bs
	buf := make([]byte, (last-first+1)*bs)
	if err := d.readBlocks(h, first, last, buf, false); err != nil {
		return err
	}
	copy(p, buf[off-first*bs:])
	return nil
}

// PurgeStale deletes a stale copy.
func (d *Disk) PurgeStale(ctx context.Context, k Key, epoch uint32) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	sp := d.stalePath(k, epoch)
	var alloc uint64
	if fi, err := d.fs.Stat(sp); err == nil {
		alloc = vfs.Allocated(fi)
	}
	if err := d.fs.Remove(sp); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return mapErr(k, "purge", err)
	}
	d.used.Add(-int64(alloc))
	d.stale.Add(-1)
	return nil
}

// StaleCount is the number of stale copies held.
func (d *Disk) StaleCount() int64 { return d.stale.Load() }

// writeSparse writes data at off into a fresh (all-hole) file, skipping
// runs of aligned all-zero 4 KiB blocks so copies of thin objects (the
// inode's index, recovered objects) stay thin.
func writeSparse(f vfs.File, data []byte, off int64) error {
	const blk = 4096
	for len(data) > 0 {
		// Head up to the next block boundary of the file offset.
		n := len(data)
		if rem := off % blk; rem != 0 {
			n = min(n, int(blk-rem))
		} else {
			n = min(n, blk)
		}
		if n == blk && isZero(data[:n]) {
			data, off = data[n:], off+int64(n)
			continue
		}
		// Extend the run over following non-zero blocks.
		end := n
		for end+blk <= len(data) && !isZero(data[end:end+blk]) {
			end += blk
		}
		if end < len(data) && len(data)-end < blk {
			end = len(data)
		}
		if _, err := f.WriteAt(data[:end], off); err != nil {
			return err
		}
		data, off = data[end:], off+int64(end)
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
