package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/gosheep/gosheep/store/vfs"
)

// Stash implements Stasher. The object is fsynced first if it has unsynced
// mutations (unless NoSync), so the stale copy is as durable as the live
// one was meant to be, then renamed; an existing stale copy of the same
// epoch is replaced.
func (d *Disk) Stash(ctx context.Context, k Key, epoch uint32) error {
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	path, dst := d.objPath(k), d.stalePath(k, epoch)
	if d.isUnsynced(k) {
		// A corrupt object is stashed as is; there is nothing to make durable.
		if err := d.openLocked(o); err != nil && !errors.Is(err, ErrCorrupt) {
			return err
		}
		if o.f != nil {
			if err := d.fsync(o.f); err != nil {
				return ioError("fsync", k, err)
			}
		}
	}
	var alloc int64
	if o.f != nil {
		if err := d.closeFileLocked(o, true); err != nil {
			d.log.Warn("store: closing stashed object", "key", k.String(), "err", err)
		}
		alloc = o.alloc
	} else if st, err := d.fs.Stat(path); err != nil {
		if isNotExist(err) {
			return fmt.Errorf("store: stash %v: %w", k, ErrNotFound)
		}
		return ioError("stash", k, err)
	} else {
		alloc = d.closedAlloc(k, st.Alloc)
	}
	var replaced int64
	if st, err := d.fs.Stat(dst); err == nil {
		replaced = st.Alloc
	} else if !isNotExist(err) {
		return ioError("stash", k, err)
	}
	d.nsMu.RLock()
	err = d.fs.Rename(path, dst)
	if err == nil {
		// The file moves from obj/ to stale/ (which matters to a rescan in
		// progress) and replaces any stale copy of the same epoch.
		d.account(k, false, 0, -alloc, -1)
		d.account(k, true, epoch, alloc-replaced, 0)
	}
	d.nsMu.RUnlock()
	if err != nil {
		if isNotExist(err) {
			return fmt.Errorf("store: stash %v: %w", k, ErrNotFound)
		}
		return ioError("stash", k, err)
	}
	d.markSynced(o)
	d.markDirDirty(true, true)
	return nil
}

func (d *Disk) isUnsynced(k Key) bool {
	d.mu.Lock()
	_, ok := d.unsynced[k]
	d.mu.Unlock()
	return ok
}

// Unstash implements Stasher.
func (d *Disk) Unstash(ctx context.Context, k Key, epoch uint32) error {
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	path, src := d.objPath(k), d.stalePath(k, epoch)
	if o.f != nil {
		return fmt.Errorf("store: unstash %v.%d: %w", k, epoch, ErrExists)
	}
	if _, err := d.fs.Stat(path); err == nil {
		return fmt.Errorf("store: unstash %v.%d: %w", k, epoch, ErrExists)
	} else if !isNotExist(err) {
		return ioError("unstash", k, err)
	}
	st, err := d.fs.Stat(src)
	if err != nil {
		if isNotExist(err) {
			return fmt.Errorf("store: unstash %v.%d: %w", k, epoch, ErrNotFound)
		}
		return ioError("unstash", k, err)
	}
	// We hold k's lock and the directory lock, so nothing can create the
	// live name between the check and the rename.
	d.nsMu.RLock()
	err = d.fs.Rename(src, path)
	if err == nil {
		d.account(k, true, epoch, -st.Alloc, 0)
		d.account(k, false, 0, st.Alloc, 1)
	}
	d.nsMu.RUnlock()
	if err != nil {
		if isNotExist(err) {
			return fmt.Errorf("store: unstash %v.%d: %w", k, epoch, ErrNotFound)
		}
		return ioError("unstash", k, err)
	}
	d.markDirDirty(true, true)
	return nil
}

// PurgeStale implements Stasher.
func (d *Disk) PurgeStale(ctx context.Context, k Key, epoch uint32) error {
	// k's lock orders this against a Stash replacing the same stale name,
	// which keeps the space accounting exact.
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	p := d.stalePath(k, epoch)
	st, err := d.fs.Stat(p)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return ioError("purge", k, err)
	}
	d.nsMu.RLock()
	err = d.fs.Remove(p)
	if err == nil {
		d.account(k, true, epoch, -st.Alloc, 0)
	}
	d.nsMu.RUnlock()
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return ioError("purge", k, err)
	}
	d.markDirDirty(false, true)
	return nil
}

// ListStale implements Stasher, sorted by key then epoch. Junk names and
// stale copies with bad headers are logged and skipped.
func (d *Disk) ListStale(ctx context.Context) ([]StaleInfo, error) {
	if err := d.begin(ctx); err != nil {
		return nil, err
	}
	defer d.exit()
	names, err := d.fs.ReadDir(d.staleDir)
	if err != nil {
		return nil, fmt.Errorf("store: list stale: %w", err)
	}
	out := make([]StaleInfo, 0, len(names))
	for _, n := range names {
		k, epoch, ok := parseStaleName(n)
		if !ok {
			d.log.Warn("store: ignoring junk file", "path", filepath.Join(d.staleDir, n))
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := d.readHeader(filepath.Join(d.staleDir, n), k, true, epoch)
		switch {
		case err == nil:
			out = append(out, StaleInfo{Key: k, Epoch: epoch, Size: h.size, ObjEpoch: h.rec.epoch})
		case errors.Is(err, ErrNotFound):
		case errors.Is(err, ErrCorrupt):
			d.log.Warn("store: listing skips bad stale copy", "key", k.String(), "epoch", epoch, "err", err)
		default:
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b StaleInfo) int {
		if c := cmpKey(a.Key, b.Key); c != 0 {
			return c
		}
		return int(int64(a.Epoch) - int64(b.Epoch))
	})
	return out, nil
}

// openStale opens and validates a stale copy; stale copies are read rarely
// (recovery) and are not cached.
func (d *Disk) openStale(k Key, epoch uint32) (vfs.File, header, []byte, error) {
	f, err := d.fs.OpenFile(d.stalePath(k, epoch), os.O_RDONLY, 0)
	if err != nil {
		if isNotExist(err) {
			return nil, header{}, nil, fmt.Errorf("store: stale %v.%d: %w", k, epoch, ErrNotFound)
		}
		return nil, header{}, nil, ioError("open stale", k, err)
	}
	h, sums, _, err := d.load(f, k, true, epoch)
	if err != nil {
		f.Close()
		return nil, header{}, nil, err
	}
	return f, h, sums, nil
}

// ReadStale implements Stasher.
func (d *Disk) ReadStale(ctx context.Context, k Key, epoch uint32, off uint32, p []byte) error {
	if err := d.begin(ctx); err != nil {
		return err
	}
	defer d.exit()
	f, h, sums, err := d.openStale(k, epoch)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := checkRange(k, h.size, off, uint64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	_, err = d.readVerify(f, &h, sums, off, p, k, true, epoch)
	return err
}

// HashStale implements Stasher.
func (d *Disk) HashStale(ctx context.Context, k Key, epoch uint32) ([20]byte, error) {
	if err := d.begin(ctx); err != nil {
		return [20]byte{}, err
	}
	defer d.exit()
	f, h, sums, err := d.openStale(k, epoch)
	if err != nil {
		return [20]byte{}, err
	}
	defer f.Close()
	return d.hashFile(ctx, f, &h, sums, k, true, epoch)
}

// StaleCount is the number of stale copies held (for metrics).
func (d *Disk) StaleCount() int64 {
	names, err := d.fs.ReadDir(d.staleDir)
	if err != nil {
		return 0
	}
	n := int64(0)
	for _, name := range names {
		if _, _, ok := parseStaleName(name); ok {
			n++
		}
	}
	return n
}
