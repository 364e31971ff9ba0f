package sheep

import (
	"context"
	"errors"
	"time"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/store"
)

// scrub verifies every local object's block checksums at a bounded rate,
// pass after pass, and repairs the copies it finds corrupt from other
// nodes. Bit rot is then found and fixed before a read needs the copy.
func (d *Daemon) scrub(ctx context.Context, rate uint64, every time.Duration) {
	for {
		if !sleepCtx(ctx, every) {
			return
		}
		objs, err := d.store.List(ctx)
		if err != nil {
			continue
		}
		start := time.Now()
		var done uint64
		for _, o := range objs {
			if ctx.Err() != nil {
				return
			}
			err := d.store.Verify(ctx, o.Key)
			done += uint64(o.Size)
			switch {
			case errors.Is(err, store.ErrCorrupt):
				d.metrics.ChecksumError()
				d.log.Warn("scrub: corrupt copy", "oid", o.Key.OID, "strip", o.Key.ECIndex, "err", err)
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				rerr := d.repairCopy(rctx, o.Key)
				cancel()
				if rerr != nil {
					d.metrics.ScrubFinding("unrepairable")
					d.log.Error("scrub: cannot repair copy", "oid", o.Key.OID, "err", rerr)
				} else {
					d.metrics.ScrubFinding("repaired")
					d.log.Info("scrub: repaired copy", "oid", o.Key.OID, "strip", o.Key.ECIndex)
				}
			case err != nil && !errors.Is(err, store.ErrNotFound):
				d.log.Warn("scrub: verify failed", "oid", o.Key.OID, "err", err)
			}
			// Stay under the rate.
			if rate > 0 {
				due := time.Duration(float64(done) / float64(rate) * float64(time.Second))
				if wait := due - time.Since(start); wait > 0 && !sleepCtx(ctx, wait) {
					return
				}
			}
		}
	}
}

// repairCopy rebuilds a corrupt local copy: an erasure-coded strip through
// the object's primary, under the lock its writes take (a strip rebuilt
// beside a concurrent write could miss it); a replica from another copy.
func (d *Daemon) repairCopy(ctx context.Context, k store.Key) error {
	if k.EC {
		if s, ok, _ := d.shape(k.OID); ok && s.Red.IsEC() {
			return d.gw.RepairEC(ctx, gateway.Object{OID: k.OID, Red: s.Red, Size: s.Size})
		}
	}
	return d.rec.RepairLocal(ctx, k)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
