package volume

import (
	"context"
	"errors"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
)

// kickReclaim wakes the reclaimer soon after a delete or rollback.
func (m *Manager) kickReclaim() {
	select {
	case m.reclaim <- struct{}{}:
	default:
	}
}

// RunReclaimer sweeps deleted VDIs whenever kicked and every interval, while
// lead() reports that this node should (the Raft leader, so that one node
// does the work). It returns when ctx ends.
func (m *Manager) RunReclaimer(ctx context.Context, interval time.Duration, lead func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.reclaim:
		}
		if !lead() {
			continue
		}
		if _, err := m.Sweep(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("reclaim sweep incomplete", "err", err)
		}
	}
}

// Sweep frees the data objects of deleted VDIs that no live VDI of the same
// family refers to any more. A deleted VDI whose own objects are all gone
// loses its inode object too and is marked reclaimed. It returns the number
// of objects removed.
func (m *Manager) Sweep(ctx context.Context) (int, error) {
	type job struct {
		dead   cluster.VDI
		family []cluster.VDI
	}
	var jobs []job
	m.cfg.Meta.Read(func(s *cluster.State) {
		for _, v := range s.SortedVDIs() {
			if !v.Deleted || v.Reclaimed {
				continue
			}
			j := job{dead: *v}
			for _, f := range s.Family(v.VID) {
				if !f.Deleted {
					j.family = append(j.family, *f)
				}
			}
			jobs = append(jobs, j)
		}
	})
	removed := 0
	var errs []error
	indexes := map[uint32][]uint32{} // live indexes read in this sweep
	for _, j := range jobs {
		n, err := m.sweepOne(ctx, &j.dead, j.family, indexes)
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

func (m *Manager) sweepOne(ctx context.Context, dead *cluster.VDI, live []cluster.VDI, indexes map[uint32][]uint32) (int, error) {
	n := nrObjects(dead.Size, dead.ObjectSize())
	idx, err := m.readIndexRaw(ctx, dead, n)
	if errors.Is(err, proto.ResNoObj) {
		return 0, m.markReclaimed(ctx, dead)
	}
	if err != nil {
		return 0, err
	}
	removed, pending := 0, 0
	for i, owner := range idx {
		if owner != dead.VID {
			continue
		}
		referenced := false
		for k := range live {
			l := &live[k]
			li, ok := indexes[l.VID]
			if !ok {
				li, err = m.readIndexRaw(ctx, l, nrObjects(l.Size, l.ObjectSize()))
				if err != nil && !errors.Is(err, proto.ResNoObj) {
					return removed, err
				}
				indexes[l.VID] = li
			}
			if i < len(li) && li[i] == dead.VID {
				referenced = true
				break
			}
		}
		if referenced {
			pending++
			continue
		}
		if err := m.cfg.Objects.Remove(ctx, dataObject(dead, dead.VID, uint32(i))); err != nil {
			return removed, err
		}
		removed++
	}
	if pending > 0 {
		return removed, nil
	}
	if err := m.cfg.Objects.Remove(ctx, inodeObject(dead)); err != nil {
		return removed, err
	}
	return removed, m.markReclaimed(ctx, dead)
}

// readIndexRaw reads an index without rebuilding a missing inode.
func (m *Manager) readIndexRaw(ctx context.Context, v *cluster.VDI, n uint32) ([]uint32, error) {
	idx := make([]uint32, n)
	if n == 0 {
		return idx, nil
	}
	buf := make([]byte, 4*n)
	if err := m.cfg.Objects.Read(ctx, inodeObject(v), proto.InodeIndexOffset, buf); err != nil {
		return nil, err
	}
	proto.DecodeIndex(idx, buf)
	return idx, nil
}

func (m *Manager) markReclaimed(ctx context.Context, v *cluster.VDI) error {
	r, err := m.cfg.Meta.Propose(ctx, &cluster.Command{Op: cluster.CmdReclaimed, VID: v.VID})
	if err != nil {
		return err
	}
	return r.Err()
}
