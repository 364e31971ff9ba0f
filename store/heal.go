package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/gosheep/gosheep/proto"
)

// Healer repairs rot in place: the seam a read repair, a scrub and a
// check use instead of replacing a whole copy.
type Healer interface {
	// Heal replaces each block of [off, off+len(data)) that fails its
	// checksum (rot: it matches neither the block's checksum nor the one
	// before it) with data's bytes, and returns how many blocks it
	// replaced. Blocks that verify are left as they are, whatever data
	// holds for them. off must start a block and the range must end on a
	// block boundary or at the object's end.
	//
	// This is what makes a repair safe beside writes. The caller read data
	// from another copy some time ago; a write that has reached this copy
	// since then left its blocks verifying, so Heal keeps them, where
	// replacing the copy would put back the bytes that write replaced. A
	// block still rotten has had no write since it rotted, so the other
	// copy's bytes are at least as new, and a write still on its way lands
	// on top of them afterwards.
	//
	// A copy whose file cannot be opened (a damaged header, a wrong
	// length) takes a heal from offset 0 whole: data is then taken to be
	// the whole object. No write can have reached such a copy (writes
	// fail to open it too), so nothing newer is lost.
	Heal(ctx context.Context, k Key, off uint32, data []byte, o WriteOpts) (int, error)
}

// Heal implements Healer.
func (d *Disk) Heal(ctx context.Context, k Key, off uint32, data []byte, wo WriteOpts) (int, error) {
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return 0, err
	}
	defer d.unlockWrite(o)
	if err := d.openLocked(o); err != nil {
		if !errors.Is(err, ErrCorrupt) || off != 0 || len(data) == 0 {
			return 0, err
		}
		if uint64(len(data)) > math.MaxUint32 {
			return 0, fmt.Errorf("store: heal of %s: %d bytes: %w", k, len(data), proto.ResInvalidParms)
		}
		if err := d.createLocked(o, uint32(len(data)), 0, data, wo); err != nil {
			return 0, err
		}
		return int(nblocks(uint32(len(data)), blockSize)), nil
	}
	h := &o.h
	if err := checkRange(k, h.size, off, uint64(len(data))); err != nil {
		return 0, err
	}
	end := uint64(off) + uint64(len(data))
	if off%h.bs != 0 || (end%uint64(h.bs) != 0 && end != uint64(h.size)) {
		return 0, fmt.Errorf("store: heal of %s at %d+%d: not whole blocks: %w", k, off, len(data), proto.ResInvalidParms)
	}
	if len(data) == 0 {
		return 0, nil
	}
	// Find the rotten blocks, then rewrite each run of them as a write
	// would (checksums first, then data), all under the object's lock.
	bp := d.blocks.Get().(*[]byte)
	defer d.blocks.Put(bp)
	healed := 0
	b0, b1 := off/h.bs, uint32((end-1)/uint64(h.bs))
	runStart := int64(-1)
	flush := func(stop uint32) error {
		if runStart < 0 {
			return nil
		}
		s, e := h.blockStart(uint32(runStart)), h.blockStart(stop)
		if stop > b1 {
			e = end
		}
		runStart = -1
		return d.mutateLocked(o, uint32(s), uint32(e-s), data[s-uint64(off):e-uint64(off)], wo)
	}
	for b := b0; b <= b1; b++ {
		if err := ctx.Err(); err != nil {
			return healed, err
		}
		blk := (*bp)[:h.blockLen(b)]
		var verr error
		if _, err := o.f.ReadAt(blk, int64(h.dataOff)+int64(h.blockStart(b))); err == io.EOF {
			verr = ErrCorrupt // cut short under the open file: rot too
		} else if err != nil {
			return healed, ioError("heal", k, err)
		} else {
			_, verr = verifyBlock(h, o.sums, b, blk, k, false, 0)
		}
		switch {
		case verr == nil:
			if err := flush(b); err != nil {
				return healed, err
			}
		case errors.Is(verr, ErrCorrupt):
			if runStart < 0 {
				runStart = int64(b)
			}
			healed++
		default:
			return healed, verr
		}
	}
	// (mutateLocked makes each run durable when wo.Sync asks.)
	if err := flush(b1 + 1); err != nil {
		return healed, err
	}
	return healed, nil
}

// Replacer replaces a copy whole, but only if it still holds what the
// caller saw: the seam `dog vdi check --repair` uses for copies that
// differ with sound checksums (a write torn by a crash), where Heal has
// no rotten block to go by.
type Replacer interface {
	// ReplaceIf replaces k with an object of len(data) bytes holding data,
	// if k's content still hashes (Hash) to want; otherwise it changes
	// nothing and fails with ErrChanged. The hash and the replacement are
	// one step under the object's lock, so a write that reached the copy
	// after the caller hashed it is never undone.
	ReplaceIf(ctx context.Context, k Key, want [20]byte, data []byte, o WriteOpts) error
}

// ErrChanged: the copy no longer holds what the caller saw (ReplaceIf);
// on the wire ResAgain.
var ErrChanged = proto.NewError(proto.ResAgain, "store: object changed since it was read")

// ReplaceIf implements Replacer.
func (d *Disk) ReplaceIf(ctx context.Context, k Key, want [20]byte, data []byte, wo WriteOpts) error {
	if len(data) == 0 || uint64(len(data)) > math.MaxUint32 {
		return fmt.Errorf("store: replace of %s with %d bytes: %w", k, len(data), proto.ResInvalidParms)
	}
	o, err := d.lockWrite(ctx, k)
	if err != nil {
		return err
	}
	defer d.unlockWrite(o)
	if err := d.openLocked(o); err != nil {
		return err
	}
	got, err := d.hashFile(ctx, o.f, &o.h, o.sums, k, false, 0)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("store: replace of %s: %w", k, ErrChanged)
	}
	return d.createLocked(o, uint32(len(data)), 0, data, wo)
}
