package sheep

import (
	"context"
	"errors"

	"github.com/gosheep/gosheep/store"
)

// Objects of a deleted VDI whose reclaim has finished are garbage: nothing
// refers to them and VDI ids are never reused. The reclaimer removes the
// objects the VDI's index names, cluster-wide; what it cannot know about
// (the punched object of a discarded slot, a copy on a node that was away
// meanwhile) each node removes from its own store, whenever a VDI becomes
// reclaimed and once after it starts. Recovery already treats such objects
// as garbage, never as sources, so this only gives the space back sooner
// than the next epoch change would.

func (d *Daemon) kickGarbage() {
	select {
	case d.gcKick <- struct{}{}:
	default: // a collection is already due
	}
}

func (d *Daemon) collectGarbageLoop() {
	select {
	case <-d.replayed: // the VDI table is current
	case <-d.ctx.Done():
		return
	}
	for {
		n, err := d.collectGarbage(d.ctx)
		if err != nil && d.ctx.Err() == nil {
			d.log.Warn("garbage collection incomplete", "removed", n, "err", err)
		} else if n > 0 {
			d.log.Info("removed objects of reclaimed vdis", "objects", n)
		}
		select {
		case <-d.ctx.Done():
			return
		case <-d.gcKick:
		}
	}
}

// collectGarbage removes this node's copies and strips of objects whose
// VDI is deleted and reclaimed, and returns how many it removed.
func (d *Daemon) collectGarbage(ctx context.Context) (int, error) {
	objs, err := d.store.List(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range objs {
		if _, _, garbage := d.shape(o.Key.OID); !garbage {
			continue
		}
		if err := d.store.Remove(ctx, o.Key); err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, err
		}
		n++
	}
	return n, nil
}
