package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/store/vfs"
	"golang.org/x/sys/unix"
)

// writeScratch holds a mutation's checksum pairs and the two partial
// blocks it may read-modify-write; pooled so writes do not allocate.
type writeScratch struct {
	pairs      []byte
	head, tail []byte
}

func (d *Disk) getScratch(nblocks int) *writeScratch {
	s := d.scratch.Get().(*writeScratch)
	if n := nblocks * pairLen; cap(s.pairs) < n {
		s.pairs = make([]byte, n)
	} else {
		s.pairs = s.pairs[:n]
	}
	if s.head == nil {
		s.head, s.tail = make([]byte, blockSize), make([]byte, blockSize)
	}
	return s
}

func (h *header) blockStart(b uint32) uint64 { return uint64(b) * uint64(h.bs) }

// blockLen is bs except for a short last block.
func (h *header) blockLen(b uint32) uint32 {
	return uint32(min(uint64(h.size)-h.blockStart(b), uint64(h.bs)))
}

func (h *header) blockEnd(b uint32) uint64 { return h.blockStart(b) + uint64(h.blockLen(b)) }

func pairAt(sums []byte, b uint32) (prev, cur uint32) {
	p := sums[int(b)*pairLen:]
	return binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])
}

func putPair(dst []byte, prev, cur uint32) {
	binary.LittleEndian.PutUint32(dst, prev)
	binary.LittleEndian.PutUint32(dst[4:], cur)
}

func (d *Disk) zeroCRCFor(n uint32) uint32 {
	if n == blockSize {
		return d.zeroCRC
	}
	return crc32c.Checksum(d.zeros[:n])
}

func (o *object) isKnown(b uint32) bool { return o.known[b/64]&(1<<(b%64)) != 0 }
func (o *object) setKnown(b uint32)     { o.known[b/64] |= 1 << (b % 64) }
func (o *object) clearKnown(b uint32)   { o.known[b/64] &^= 1 << (b % 64) }

// checkRange rejects [off, off+n) not within an object of size bytes; the
// arithmetic is in 64 bits so off+n cannot wrap.
func checkRange(k Key, size uint32, off uint32, n uint64) error {
	if uint64(off)+n > uint64(size) {
		return fmt.Errorf("store: %v: [%d, +%d) beyond size %d: %w", k, off, n, size, ErrOutOfRange)
	}
	return nil
}

// Create implements Store. The object is built in obj/<name>.tmp and
// renamed into place, so readers and crashes see the old object or the
// whole new one.
func (d *Disk) Create(ctx context.Context, k Key, size uint32, off uint32, data []byte, wo WriteOpts) error {
	if err := checkRange(k, size, off, uint64(len(data))); err != nil {
		return err
	}
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	if wo.Exclusive {
		exists := o.f != nil
		if !exists {
			if _, err := d.fs.Stat(d.objPath(k)); err == nil {
				exists = true
			} else if !isNotExist(err) {
				return ioError("stat", k, err)
			}
		}
		if exists {
			return fmt.Errorf("store: create %v: %w", k, ErrExists)
		}
	}
	return d.createLocked(o, size, off, data, wo)
}

// createLocked is Create's work, under o's lock, the range checked.
func (d *Disk) createLocked(o *object, size uint32, off uint32, data []byte, wo WriteOpts) error {
	k := o.key
	h := newHeader(k, size, wo.Epoch)
	nb := h.nblocks()
	end := uint64(off) + uint64(len(data))
	var b0, b1 uint32 // blocks the data touches, when there is data
	growth := uint64(h.dataOff)
	if len(data) > 0 {
		b0, b1 = off/h.bs, uint32((end-1)/uint64(h.bs))
		growth += uint64(b1-b0+1) * uint64(h.bs)
	}
	if err := d.admit(k, growth); err != nil {
		return err
	}

	meta := make([]byte, h.dataOff)
	encodeFixed(meta, &h)
	encodeRecord(meta[recordSlot(h.rec.seq):], h.rec)
	sums := meta[sumOff : sumOff+int(nb)*pairLen]
	sc := d.getScratch(0)
	defer d.scratch.Put(sc)
	for b := uint32(0); b < nb; b++ {
		bs, be := h.blockStart(b), h.blockEnd(b)
		var c uint32
		switch {
		case len(data) == 0 || be <= uint64(off) || bs >= end:
			c = d.zeroCRCFor(h.blockLen(b))
		case bs >= uint64(off) && be <= end:
			c = crc32c.Checksum(data[bs-uint64(off) : be-uint64(off)])
		default:
			blk := sc.head[:be-bs]
			clear(blk)
			lo, hi := max(bs, uint64(off)), min(be, end)
			copy(blk[lo-bs:hi-bs], data[lo-uint64(off):hi-uint64(off)])
			c = crc32c.Checksum(blk)
		}
		putPair(sums[int(b)*pairLen:], c, c)
	}

	path := d.objPath(k)
	tmp := path + tmpSuffix
	f, err := d.fs.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return ioError("create", k, err)
	}
	fail := func(op string, err error) error {
		f.Close()
		if rerr := d.fs.Remove(tmp); rerr != nil && !isNotExist(rerr) {
			d.log.Warn("store: removing temp file", "path", tmp, "err", rerr)
		}
		return ioError(op, k, err)
	}
	if _, err := f.WriteAt(meta, 0); err != nil {
		return fail("create", err)
	}
	if err := f.Truncate(h.fileSize()); err != nil {
		return fail("create", err)
	}
	if len(data) > 0 {
		// The rest of the touched blocks are holes, which read as the zeros
		// the checksums above assumed; all-zero blocks of data stay holes
		// too, so copies of thin objects (an inode's index, a recovered
		// object) stay thin.
		if err := writeSparse(f, data, int64(h.dataOff)+int64(off)); err != nil {
			return fail("create", err)
		}
	}
	if wo.Sync {
		if err := d.fsync(f); err != nil {
			return fail("fsync", err)
		}
	}
	info, err := f.Stat()
	if err != nil {
		return fail("stat", err)
	}
	existed, oldAlloc := o.f != nil, int64(0)
	if existed {
		d.restatLocked(o)
		oldAlloc = o.alloc
	} else {
		st, err := d.fs.Stat(path)
		switch {
		case err == nil:
			existed, oldAlloc = true, d.closedAlloc(k, st.Alloc)
		case !isNotExist(err):
			return fail("stat", err)
		}
	}
	d.nsMu.RLock()
	if err := d.fs.Rename(tmp, path); err != nil {
		d.nsMu.RUnlock()
		return fail("rename", err)
	}
	if o.f != nil {
		// The old file is unlinked; nothing to clean in it.
		d.unmap(o)
		if err := o.f.Close(); err != nil {
			d.log.Warn("store: closing replaced object", "key", k.String(), "err", err)
		}
	}
	o.f, o.h, o.sums, o.alloc = f, h, sums, info.Alloc
	o.known = make([]uint64, (nb+63)/64)
	if len(data) > 0 {
		for b := b0; b <= b1; b++ {
			o.setKnown(b)
		}
	}
	o.hdrDirty, o.trusted = false, true
	o.sawPrev.Store(false)
	d.addLRU(o)
	var dObjs int64
	if !existed {
		dObjs = 1
	}
	d.account(k, false, 0, info.Alloc-oldAlloc, dObjs)
	d.nsMu.RUnlock()
	d.mu.Lock()
	if _, ok := d.unsynced[k]; ok {
		d.unsynced[k] = -1 // open now; the old file's accounting is settled
	}
	d.mu.Unlock()
	if wo.Sync && !d.noSync {
		if err := d.fs.SyncDir(d.objDir); err != nil {
			d.markDirDirty(true, false)
			d.markUnsynced(o)
			return ioError("sync dir", k, err)
		}
		d.markSynced(o)
		return nil
	}
	d.markDirDirty(true, false)
	d.markUnsynced(o)
	return nil
}

// Write implements Store.
func (d *Disk) Write(ctx context.Context, k Key, off uint32, data []byte, wo WriteOpts) error {
	return d.mutate(ctx, k, off, uint64(len(data)), data, wo)
}

// Zero implements Store: whole blocks become holes, partial blocks are
// rewritten with zeros.
func (d *Disk) Zero(ctx context.Context, k Key, off, n uint32, wo WriteOpts) error {
	return d.mutate(ctx, k, off, uint64(n), nil, wo)
}

// mutate is Write (data) and Zero (nil data) of n bytes at off: the
// object opened and locked, the range checked, then mutateLocked.
func (d *Disk) mutate(ctx context.Context, k Key, off uint32, n uint64, data []byte, wo WriteOpts) error {
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	if err := d.openLocked(o); err != nil {
		return err
	}
	if err := checkRange(k, o.h.size, off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return d.mutateLocked(o, off, uint32(n), data, wo)
}

// mutateLocked writes data (or zeros, if data is nil) to [off, off+n) of
// an open object, n > 0 and in range. The order is what makes it crash
// safe: (1) the header record marks the object dirty, (2) every touched
// block's checksum pair becomes {prev: what it holds, cur: what it will
// hold}, (3) the data. A block then always matches prev or cur.
func (d *Disk) mutateLocked(o *object, off, n uint32, data []byte, wo WriteOpts) error {
	h := &o.h
	bs := h.bs
	zero := data == nil
	end := uint64(off) + uint64(n)
	b0, b1 := off/bs, uint32((end-1)/uint64(bs))
	headPartial := off%bs != 0 || end < h.blockEnd(b0)
	tailPartial := b1 != b0 && end < h.blockEnd(b1)
	f0, f1 := b0, b1+1 // whole blocks [f0, f1)
	if headPartial {
		f0++
	}
	if tailPartial {
		f1--
	}

	// Blocks we write may be holes and need space; punched ones do not.
	var growth uint64
	for b := b0; b <= b1; b++ {
		if !(zero && b >= f0 && b < f1) && !o.isKnown(b) {
			growth += uint64(bs)
		}
	}
	if err := d.admit(o.key, growth); err != nil {
		return err
	}
	if err := d.prepareLocked(o, wo.Epoch); err != nil {
		return err
	}

	sc := d.getScratch(int(b1 - b0 + 1))
	defer d.scratch.Put(sc)
	pairs := sc.pairs
	if headPartial {
		if err := d.rmwLocked(o, b0, off, end, data, sc.head, pairs); err != nil {
			return err
		}
	}
	if tailPartial {
		if err := d.rmwLocked(o, b1, off, end, data, sc.tail, pairs[int(b1-b0)*pairLen:]); err != nil {
			return err
		}
	}
	given := wo.Sums
	if off%SumBlock != 0 || h.bs != SumBlock {
		given = nil
	}
	for b := f0; b < f1; b++ {
		// trusted: the block holds what cur says (prepareLocked ensured it).
		_, cur := pairAt(o.sums, b)
		var c uint32
		s := h.blockStart(b) - uint64(off)
		switch i := s / SumBlock; {
		case zero:
			c = d.zeroCRCFor(h.blockLen(b))
		case i < uint64(len(given)) && h.blockLen(b) == SumBlock:
			c = given[i]
		default:
			c = crc32c.Checksum(data[s : s+uint64(h.blockLen(b))])
		}
		putPair(pairs[int(b-b0)*pairLen:], cur, c)
	}

	f := o.f
	if _, err := f.WriteAt(pairs, int64(sumOff)+int64(b0)*pairLen); err != nil {
		d.invalidate(o)
		return ioError("write checksums", o.key, err)
	}
	if err := d.writeDataLocked(o, sc, off, end, data, b0, b1, f0, f1, headPartial, tailPartial); err != nil {
		// Blocks hold old or new data, both covered by the pairs on disk;
		// reopening (and scrubbing) resynchronises our view.
		d.invalidate(o)
		return err
	}
	copy(o.sums[int(b0)*pairLen:], pairs)

	for b := b0; b <= b1; b++ {
		if zero && b >= f0 && b < f1 {
			o.clearKnown(b)
		} else {
			o.setKnown(b)
		}
	}
	if growth > 0 || (zero && f0 < f1) {
		d.restatLocked(o)
	}
	d.markUnsynced(o)
	if wo.Sync && !d.noSync {
		if err := f.Sync(); err != nil {
			return ioError("fsync", o.key, err)
		}
		d.markSynced(o)
		d.restatLocked(o) // writeback may have allocated metadata
	}
	return nil
}

func (d *Disk) writeDataLocked(o *object, sc *writeScratch, off uint32, end uint64, data []byte,
	b0, b1, f0, f1 uint32, headPartial, tailPartial bool) error {
	h := &o.h
	base := int64(h.dataOff)
	if headPartial {
		if _, err := o.f.WriteAt(sc.head[:h.blockLen(b0)], base+int64(h.blockStart(b0))); err != nil {
			return ioError("write", o.key, err)
		}
	}
	if f0 < f1 {
		s, e := h.blockStart(f0), h.blockEnd(f1-1)
		if data == nil {
			if err := d.punchLocked(o, s, e); err != nil {
				return err
			}
		} else if err := d.writeData(o.f, data[s-uint64(off):e-uint64(off)], base+int64(s)); err != nil {
			return ioError("write", o.key, err)
		}
	}
	if tailPartial {
		if _, err := o.f.WriteAt(sc.tail[:h.blockLen(b1)], base+int64(h.blockStart(b1))); err != nil {
			return ioError("write", o.key, err)
		}
	}
	return nil
}

// restatLocked accounts the open file's allocation as it is now.
func (d *Disk) restatLocked(o *object) {
	if info, err := o.f.Stat(); err == nil {
		d.account(o.key, false, 0, info.Alloc-o.alloc, 0)
		o.alloc = info.Alloc
	}
}

// punchLocked makes logical [s, e) a hole, or writes zeros where the file
// system cannot punch.
func (d *Disk) punchLocked(o *object, s, e uint64) error {
	base := int64(o.h.dataOff)
	err := o.f.PunchHole(base+int64(s), int64(e-s))
	if !errors.Is(err, errors.ErrUnsupported) {
		if err != nil {
			return ioError("punch", o.key, err)
		}
		return nil
	}
	if err := d.admit(o.key, e-s); err != nil {
		return err
	}
	for p := s; p < e; {
		n := min(e-p, uint64(len(d.zeros)))
		if _, err := o.f.WriteAt(d.zeros[:n], base+int64(p)); err != nil {
			return ioError("write zeros", o.key, err)
		}
		p += n
	}
	return nil
}

// rmwLocked reads block b, checks it, applies the part of [off, end) that
// falls in it (data, or zeros if data is nil) in buf, and puts the block's
// new checksum pair in pair. prev is the checksum of what the block holds,
// read from disk, so it is exact even when the object is not trusted.
func (d *Disk) rmwLocked(o *object, b uint32, off uint32, end uint64, data []byte, buf, pair []byte) error {
	h := &o.h
	bs, be := h.blockStart(b), h.blockEnd(b)
	blk := buf[:be-bs]
	if _, err := o.f.ReadAt(blk, int64(h.dataOff)+int64(bs)); err != nil {
		if err == io.EOF {
			return &CorruptError{Key: o.key, Reason: "file truncated"}
		}
		return ioError("read", o.key, err)
	}
	c := crc32c.Checksum(blk)
	prev, cur := pairAt(o.sums, b)
	if c != cur && c != prev {
		return &CorruptError{Key: o.key, Offsets: []uint64{bs}, Count: 1}
	}
	lo, hi := max(bs, uint64(off)), min(be, end)
	if data == nil {
		clear(blk[lo-bs : hi-bs])
	} else {
		copy(blk[lo-bs:hi-bs], data[lo-uint64(off):hi-uint64(off)])
	}
	putPair(pair, c, crc32c.Checksum(blk))
	return nil
}

// prepareLocked readies an open object for a mutation: restore trust in
// the checksums if a crash (or a failed write) may have left blocks
// matching only prev, then persist the dirty flag and the epoch.
func (d *Disk) prepareLocked(o *object, epoch uint32) error {
	if o.sawPrev.Load() {
		o.trusted = false
	}
	if !o.trusted {
		if err := d.scrubLocked(o); err != nil {
			return err
		}
	}
	if !o.hdrDirty || epoch > o.h.rec.epoch {
		r := record{seq: o.h.rec.seq + 1, epoch: max(o.h.rec.epoch, epoch), flags: recDirty}
		if err := d.writeRecord(o.f, r); err != nil {
			d.invalidate(o)
			return ioError("write header", o.key, err)
		}
		o.h.rec, o.hdrDirty = r, true
	}
	return nil
}

// scrubLocked reads the whole object and, for every block whose data
// matches only its prev checksum (a write torn by a crash), makes cur equal
// prev. Afterwards the object is trusted again. Rotten blocks (matching
// neither) are left alone: reads keep reporting them.
func (d *Disk) scrubLocked(o *object) error {
	h := &o.h
	const chunkBlocks = 64
	buf := make([]byte, chunkBlocks*int(h.bs))
	changed := false
	nb := h.nblocks()
	for b := uint32(0); b < nb; {
		cnt := min(chunkBlocks, nb-b)
		s, e := h.blockStart(b), h.blockEnd(b+cnt-1)
		chunk := buf[:e-s]
		if _, err := o.f.ReadAt(chunk, int64(h.dataOff)+int64(s)); err != nil {
			return ioError("scrub", o.key, err)
		}
		for i := uint32(0); i < cnt; i++ {
			bb := b + i
			bs := h.blockStart(bb) - s
			c := crc32c.Checksum(chunk[bs : bs+uint64(h.blockLen(bb))])
			prev, cur := pairAt(o.sums, bb)
			if c != cur && c == prev {
				putPair(o.sums[int(bb)*pairLen:], prev, prev)
				changed = true
			}
		}
		b += cnt
	}
	if changed {
		if _, err := o.f.WriteAt(o.sums, sumOff); err != nil {
			d.invalidate(o)
			return ioError("scrub", o.key, err)
		}
		d.markUnsynced(o)
	}
	o.trusted = true
	o.sawPrev.Store(false)
	return nil
}

// invalidate drops o's open file after a failed mutation without clearing
// the on-disk dirty flag, so the next open re-reads the checksums and
// scrubs before trusting them.
func (d *Disk) invalidate(o *object) {
	if err := d.closeFileLocked(o, false); err != nil {
		d.log.Warn("store: closing object after failure", "key", o.key.String(), "err", err)
	}
}

// Read implements Store.
func (d *Disk) Read(ctx context.Context, k Key, off uint32, p []byte) error {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return err
	}
	defer unpin()
	if err := checkRange(k, o.h.size, off, uint64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	sawPrev, err := d.readVerify(o.f, &o.h, o.sums, off, p, o.key, false, 0)
	if sawPrev {
		o.sawPrev.Store(true)
	}
	return err
}

// readVerify reads [off, off+len(p)) into p and checks every block it
// touches. Whole blocks are read straight into p; partial ones through a
// pooled block buffer. sawPrev reports a block matching only its prev
// checksum (the remnant of a write a crash interrupted).
func (d *Disk) readVerify(f vfs.File, h *header, sums []byte, off uint32, p []byte,
	k Key, stale bool, epoch uint32) (sawPrev bool, err error) {
	bs := uint64(h.bs)
	end := uint64(off) + uint64(len(p))
	verify := func(b uint32, blk []byte) error {
		prev, err := verifyBlock(h, sums, b, blk, k, stale, epoch)
		sawPrev = sawPrev || prev
		return err
	}
	readErr := func(err error) error {
		if err == io.EOF {
			return &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Reason: "file truncated"}
		}
		return ioError("read", k, err)
	}
	base := int64(h.dataOff)
	for pos := uint64(off); pos < end; {
		b := uint32(pos / bs)
		bstart, bend := h.blockStart(b), h.blockEnd(b)
		if pos == bstart && bend <= end {
			// A run of whole blocks: one read into p, then verify in place.
			runEnd := end - end%bs
			if end == uint64(h.size) {
				runEnd = end
			}
			dst := p[pos-uint64(off) : runEnd-uint64(off)]
			if _, err := f.ReadAt(dst, base+int64(pos)); err != nil {
				return sawPrev, readErr(err)
			}
			prev, err := verifyRun(h, sums, uint32(pos/bs), dst, k, stale, epoch)
			sawPrev = sawPrev || prev
			if err != nil {
				return sawPrev, err
			}
			pos = runEnd
			continue
		}
		bp := d.blocks.Get().(*[]byte)
		blk := (*bp)[:bend-bstart]
		if _, err := f.ReadAt(blk, base+int64(bstart)); err != nil {
			d.blocks.Put(bp)
			return sawPrev, readErr(err)
		}
		if err := verify(b, blk); err != nil {
			d.blocks.Put(bp)
			return sawPrev, err
		}
		stop := min(bend, end)
		copy(p[pos-uint64(off):stop-uint64(off)], blk[pos-bstart:stop-bstart])
		d.blocks.Put(bp)
		pos = stop
	}
	return sawPrev, nil
}

// verifyBlock checks block b's data against its checksum pair: matching
// only prev (the remnant of a write a crash interrupted) is reported, not
// an error.
func verifyBlock(h *header, sums []byte, b uint32, blk []byte, k Key, stale bool, epoch uint32) (matchedPrev bool, err error) {
	c := crc32c.Checksum(blk)
	prev, cur := pairAt(sums, b)
	if c == cur {
		return false, nil
	}
	if c == prev {
		return true, nil
	}
	return false, &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Offsets: []uint64{h.blockStart(b)}, Count: 1}
}

// verifyRun checks the whole blocks held in run, the first of them block
// b0 (verifyBlock for each).
func verifyRun(h *header, sums []byte, b0 uint32, run []byte, k Key, stale bool, epoch uint32) (sawPrev bool, err error) {
	for s, b := uint64(0), b0; s < uint64(len(run)); b++ {
		l := uint64(h.blockLen(b))
		prev, err := verifyBlock(h, sums, b, run[s:s+l], k, stale, epoch)
		if err != nil {
			return sawPrev, err
		}
		sawPrev = sawPrev || prev
		s += l
	}
	return sawPrev, nil
}

// pieceSize bounds one data write. The page cache sizes a new folio by
// the write that creates it: one 4 MiB write (a create, a recovered copy)
// leaves folios of up to 2 MiB, and every later 4 KiB write into one
// walks all its buffer heads (ext4, Linux 6.18: ~9 us against ~1.5 us per
// 4 KiB write, measured). The walk is linear in the folio: with 128 KiB
// pieces it was still 8 % of a 3-copy 4 KiB write's CPU; 32 KiB cut that
// CPU per write by ~20 % and cost 1 MiB writes ~3 %; 16 KiB gained nothing
// more (3 nodes, iSCSI, interleaved runs).
const pieceSize = 32 << 10

// writeData writes data at off: in one write when every page of the range
// is in the page cache already (no folio is created, so pieces would only
// cost syscalls: 32 for a 1 MiB write, ~4 % of its CPU on one node), in
// pieces otherwise.
func (d *Disk) writeData(f vfs.File, data []byte, off int64) error {
	if len(data) > pieceSize && !d.noCachestat.Load() {
		switch ok, err := resident(f, off, int64(len(data))); {
		case err != nil:
			d.noCachestat.Store(true) // an old kernel: pieces from now on
		case ok:
			_, err := f.WriteAt(data, off)
			return err
		}
	}
	return writePieces(f, data, off)
}

// withFD runs fn with f's descriptor. ran is false for a file without
// one (a test's fault-injecting file); err is the descriptor's
// (closed under us).
func withFD(f vfs.File, fn func(fd uintptr)) (ran bool, err error) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, nil
	}
	return true, rc.Control(fn)
}

// resident reports whether every page of f's range [off, off+n) is in the
// page cache (cachestat(2), Linux 6.5). A file without a descriptor (a
// test's fault-injecting one) reports false.
func resident(f vfs.File, off, n int64) (bool, error) {
	var cs unix.Cachestat_t
	var serr error
	if ran, err := withFD(f, func(fd uintptr) {
		serr = unix.Cachestat(uint(fd), &unix.CachestatRange{Off: uint64(off), Len: uint64(n)}, &cs, 0)
	}); !ran || err != nil {
		return false, nil
	}
	if serr != nil {
		return false, serr
	}
	ps := int64(os.Getpagesize())
	pages := (off+n-1)/ps - off/ps + 1
	return cs.Cache == uint64(pages), nil
}

// writePieces writes data at off in writes that do not cross a pieceSize
// boundary of the file.
func writePieces(f vfs.File, data []byte, off int64) error {
	for len(data) > 0 {
		n := min(len(data), int(pieceSize-off%pieceSize))
		if _, err := f.WriteAt(data[:n], off); err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// writeSparse writes data at off into a fresh (all-hole) file, skipping
// aligned all-zero 4 KiB blocks.
func writeSparse(f vfs.File, data []byte, off int64) error {
	const blk = 4096
	for len(data) > 0 {
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
		end := n
		for end+blk <= len(data) && !isZero(data[end:end+blk]) {
			end += blk
		}
		if end < len(data) && len(data)-end < blk {
			end = len(data)
		}
		if err := writePieces(f, data[:end], off); err != nil {
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
