package store

import (
	"cmp"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/store/vfs"
)

// Remove implements Store.
func (d *Disk) Remove(ctx context.Context, k Key) error {
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	path := d.objPath(k)
	var alloc int64
	if o.f != nil {
		if err := d.closeFileLocked(o, false); err != nil {
			d.log.Warn("store: closing removed object", "key", k.String(), "err", err)
		}
		alloc = o.alloc
	} else {
		st, err := d.fs.Stat(path)
		if isNotExist(err) {
			return nil
		}
		if err != nil {
			return ioError("remove", k, err)
		}
		alloc = d.closedAlloc(k, st.Alloc)
	}
	d.nsMu.RLock()
	err = d.fs.Remove(path)
	if err == nil {
		d.account(k, false, 0, -alloc, -1)
	}
	d.nsMu.RUnlock()
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return ioError("remove", k, err)
	}
	d.markSynced(o) // nothing left to fsync but the directory
	d.markDirDirty(true, false)
	return nil
}

// Stat implements Store.
func (d *Disk) Stat(ctx context.Context, k Key) (ObjInfo, error) {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return ObjInfo{}, err
	}
	defer unpin()
	return ObjInfo{Key: k, Size: o.h.size, Epoch: o.h.rec.epoch, Dirty: o.hdrDirty}, nil
}

// List implements Store: every valid object name in obj/, sorted by key.
// Temp files are skipped; junk names and unreadable headers are logged and
// skipped (a later Create of that key replaces the bad file).
func (d *Disk) List(ctx context.Context) ([]ObjInfo, error) {
	if err := d.begin(ctx); err != nil {
		return nil, err
	}
	defer d.exit()
	names, err := d.fs.ReadDir(d.objDir)
	if err != nil {
		return nil, fmt.Errorf("store: list: %w", err)
	}
	out := make([]ObjInfo, 0, len(names))
	for _, n := range names {
		if strings.HasSuffix(n, tmpSuffix) {
			continue
		}
		k, ok := parseName(n)
		if !ok {
			d.log.Warn("store: ignoring junk file", "path", d.objDir+"/"+n)
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		info, err := d.statForList(k)
		switch {
		case err == nil:
			out = append(out, info)
		case errors.Is(err, ErrNotFound): // removed meanwhile
		case errors.Is(err, ErrCorrupt):
			d.log.Warn("store: listing skips bad object", "key", k.String(), "err", err)
		default:
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b ObjInfo) int { return cmpKey(a.Key, b.Key) })
	return out, nil
}

func cmpKey(a, b Key) int {
	if c := cmp.Compare(a.OID, b.OID); c != 0 {
		return c
	}
	if a.EC != b.EC {
		if a.EC {
			return 1
		}
		return -1
	}
	return cmp.Compare(a.ECIndex, b.ECIndex)
}

// statForList describes k from the cache if it is open, else from its
// header alone, without loading it into the cache.
func (d *Disk) statForList(k Key) (ObjInfo, error) {
	o := d.acquire(k)
	defer d.release(o)
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.f != nil {
		return ObjInfo{Key: k, Size: o.h.size, Epoch: o.h.rec.epoch, Dirty: o.hdrDirty}, nil
	}
	h, err := d.readHeader(d.objPath(k), k, false, 0)
	if err != nil {
		return ObjInfo{}, err
	}
	return ObjInfo{Key: k, Size: h.size, Epoch: h.rec.epoch, Dirty: h.rec.flags&recDirty != 0}, nil
}

// readHeader parses a file's header without loading its checksums.
func (d *Disk) readHeader(path string, k Key, stale bool, epoch uint32) (header, error) {
	f, err := d.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		if isNotExist(err) {
			return header{}, fmt.Errorf("store: %v: %w", k, ErrNotFound)
		}
		return header{}, ioError("open", k, err)
	}
	defer f.Close()
	var b [recordOff + 2*recordLen]byte
	if _, err := f.ReadAt(b[:], 0); err != nil && err != io.EOF {
		return header{}, ioError("read header", k, err)
	}
	h, err := parseHeader(b[:])
	if err == nil && h.key != k {
		err = fmt.Errorf("header names object %v", h.key)
	}
	if err != nil {
		return header{}, &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Reason: "bad header: " + err.Error()}
	}
	return h, nil
}

// Hash implements Store.
func (d *Disk) Hash(ctx context.Context, k Key) ([20]byte, error) {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return [20]byte{}, err
	}
	defer unpin()
	return d.hashFile(ctx, o.f, &o.h, o.sums, k, false, 0)
}

// SumsHash implements Store: the SHA-1 of the size, the block size and
// every block's current checksum. Each checksum is its block's content's
// (holes included: a hole's is that of zeros), so copies of the same
// content agree without reading it.
func (d *Disk) SumsHash(ctx context.Context, k Key) ([20]byte, error) {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return [20]byte{}, err
	}
	defer unpin()
	h := &o.h
	nb := h.nblocks()
	b := make([]byte, 0, 8+4*int(nb))
	b = binary.LittleEndian.AppendUint32(b, h.size)
	b = binary.LittleEndian.AppendUint32(b, h.bs)
	for i := range nb {
		_, cur := pairAt(o.sums, i)
		b = binary.LittleEndian.AppendUint32(b, cur)
	}
	return sha1.Sum(b), nil
}

// chunkLen is how much Hash, Verify and stale reads handle per read.
const chunkLen = 256 << 10

func (d *Disk) hashFile(ctx context.Context, f vfs.File, h *header, sums []byte, k Key, stale bool, epoch uint32) ([20]byte, error) {
	sum := sha1.New()
	buf := make([]byte, min(chunkLen, int(h.size)))
	for off := uint64(0); off < uint64(h.size); {
		if err := ctx.Err(); err != nil {
			return [20]byte{}, err
		}
		n := min(uint64(len(buf)), uint64(h.size)-off)
		if _, err := d.readVerify(f, h, sums, uint32(off), buf[:n], k, stale, epoch); err != nil {
			return [20]byte{}, err
		}
		sum.Write(buf[:n])
		off += n
	}
	var out [20]byte
	sum.Sum(out[:0])
	return out, nil
}

// Verify implements Store. A failure lists the bad blocks in a
// *CorruptError.
func (d *Disk) Verify(ctx context.Context, k Key) error {
	o, unpin, err := d.pinRead(ctx, k)
	if err != nil {
		return err
	}
	defer unpin()
	sawPrev, err := d.verifyFile(ctx, o.f, &o.h, o.sums, k, false, 0)
	if sawPrev {
		o.sawPrev.Store(true)
	}
	return err
}

func (d *Disk) verifyFile(ctx context.Context, f vfs.File, h *header, sums []byte, k Key, stale bool, epoch uint32) (bool, error) {
	var bad []uint64
	count, sawPrev := 0, false
	bs := uint64(h.bs)
	buf := make([]byte, min(chunkLen, int(h.size)))
	for off := uint64(0); off < uint64(h.size); {
		if err := ctx.Err(); err != nil {
			return sawPrev, err
		}
		n := min(uint64(len(buf)), uint64(h.size)-off)
		chunk := buf[:n]
		if _, err := f.ReadAt(chunk, int64(h.dataOff)+int64(off)); err != nil {
			if err == io.EOF {
				return sawPrev, &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Reason: "file truncated"}
			}
			return sawPrev, ioError("verify", k, err)
		}
		for q := uint64(0); q < n; q += bs {
			b := uint32((off + q) / bs)
			c := crc32c.Checksum(chunk[q:min(q+bs, n)])
			prev, cur := pairAt(sums, b)
			switch c {
			case cur:
			case prev:
				sawPrev = true
			default:
				if len(bad) < maxReported {
					bad = append(bad, off+q)
				}
				count++
			}
		}
		off += n
	}
	if count > 0 {
		return sawPrev, &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Offsets: bad, Count: count}
	}
	return sawPrev, nil
}

// Sync implements Store: fsync every object mutated since the last Sync
// (including ones since evicted from the open-file cache), then the
// directories whose entries changed. Failures are returned, never dropped;
// an object whose fsync failed stays on the list.
func (d *Disk) Sync(ctx context.Context) error {
	if err := d.begin(ctx); err != nil {
		return err
	}
	defer d.exit()
	return d.syncAll(ctx)
}

// syncParallel bounds concurrent fsyncs: enough to keep a device queue
// busy without a goroutine per object.
const syncParallel = 4

func (d *Disk) syncAll(ctx context.Context) error {
	if d.noSync {
		return nil
	}
	d.mu.Lock()
	keys := make([]Key, 0, len(d.unsynced))
	for k := range d.unsynced {
		keys = append(keys, k)
	}
	objDirty, stDirty := d.objDirty, d.stDirty
	d.objDirty, d.stDirty = false, false
	d.mu.Unlock()

	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		next = make(chan Key)
	)
	for range min(syncParallel, len(keys)) {
		wg.Go(func() {
			for k := range next {
				if err := d.syncObject(ctx, k); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
	// Directories after files: a new name must not become durable before
	// the data it names.
	if objDirty {
		if err := d.fs.SyncDir(d.objDir); err != nil {
			d.markDirDirty(true, false)
			errs = append(errs, fmt.Errorf("store: sync %s: %w", d.objDir, err))
		}
	}
	if stDirty {
		if err := d.fs.SyncDir(d.staleDir); err != nil {
			d.markDirDirty(false, true)
			errs = append(errs, fmt.Errorf("store: sync %s: %w", d.staleDir, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Disk) syncObject(ctx context.Context, k Key) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := d.acquire(k)
	defer d.release(o)
	excl, err := d.lockRead(o)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			d.markSynced(o) // removed; the directory sync covers it
			return nil
		}
		if errors.Is(err, ErrCorrupt) {
			d.markSynced(o) // cannot be opened; report once, then forget
		}
		return err
	}
	if err := o.f.Sync(); err != nil {
		unlockRead(o, excl)
		return ioError("fsync", k, err)
	}
	// Marked under the same lock as the fsync: a write that slips in after
	// we let go marks the object again.
	d.markSynced(o)
	unlockRead(o, excl)
	// Writeback just allocated what it needed; account it.
	o.mu.Lock()
	if o.f != nil {
		d.restatLocked(o)
	}
	o.mu.Unlock()
	return nil
}
