package sheep

import (
	"context"
	"fmt"
	"github.com/gosheep/gosheep/api"
	"time"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
	"github.com/gosheep/gosheep/store"
)

// recoveryRemote reaches other nodes' stores for recovery.
type recoveryRemote struct{ pool *client.Pool }

func (r recoveryRemote) List(ctx context.Context, addr string) ([]recovery.Entry, error) {
	c, err := r.pool.Get(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", addr, err, proto.ResNetworkError)
	}
	var out []recovery.Entry
	if err := c.Meta(ctx, proto.OpListObjs, struct{}{}, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func (r recoveryRemote) Stat(ctx context.Context, addr string, oid proto.OID) ([]recovery.Entry, error) {
	c, err := r.pool.Get(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", addr, err, proto.ResNetworkError)
	}
	var out []recovery.Entry
	if err := c.Meta(ctx, proto.OpObjInfo, api.ObjInfoRequest{OID: oid}, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func (r recoveryRemote) Read(ctx context.Context, addr string, e recovery.Entry, off uint32, p []byte) error {
	c, err := r.pool.Get(ctx, addr)
	if err != nil {
		return fmt.Errorf("%s: %v: %w", addr, err, proto.ResNetworkError)
	}
	req := peerReq(proto.OpReadPeer, 0, e.Key, off, false)
	req.Flags |= proto.FlagRecovery
	a := req.Obj()
	a.TgtEpoch = e.Stale
	req.SetObj(a)
	req.DataLength = uint32(len(p))
	_, got, err := c.Do(ctx, req, nil, p)
	if err != nil {
		return err
	}
	if len(got) != len(p) {
		return fmt.Errorf("%s: short recovery read %d of %d: %w", addr, len(got), len(p), proto.ResEIO)
	}
	if len(p) > 0 && &got[0] != &p[0] {
		copy(p, got)
	}
	return nil
}

// shape describes an object from the VDI table for recovery.
func (d *Daemon) shape(oid proto.OID) (recovery.Shape, bool, bool) {
	v, ok := d.vols.VDI(oid.VID())
	if !ok {
		return recovery.Shape{}, false, false
	}
	if v.Deleted && v.Reclaimed {
		return recovery.Shape{}, false, true
	}
	switch {
	case oid.IsInode():
		return recovery.Shape{Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: proto.InodeSize}, true, false
	case oid.IsVMState():
		return recovery.Shape{Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: v.ObjectSize()}, true, false
	case oid.IsData():
		return recovery.Shape{Red: v.Redundancy(), Size: v.ObjectSize()}, true, false
	}
	return recovery.Shape{}, false, false
}

func (d *Daemon) newRecoverer() *recovery.Recoverer {
	codecs := d.codecs
	return recovery.New(recovery.Config{
		Self:   d.node.ID(),
		Local:  d.store,
		Remote: recoveryRemote{pool: d.pool},
		Shape:  d.shape,
		Codec: func(data, parity int) (recovery.Codec, error) {
			return codecs.Get(data, parity)
		},
		Done: func(ctx context.Context, e uint32) error {
			r, err := d.node.Propose(ctx, &cluster.Command{Op: cluster.CmdRecoveryDone, Epoch: e, NodeID: d.node.ID()})
			if err != nil {
				return err
			}
			return r.Err()
		},
		Throttle: func() (uint64, int) {
			var t cluster.Throttle
			d.node.FSM().Read(func(s *cluster.State) { t = s.Throttle })
			w := t.Concurrency
			if w <= 0 {
				w = 4
			}
			return t.MaxRate, w
		},
		Disabled: func() bool {
			var off bool
			d.node.FSM().Read(func(s *cluster.State) { off = s.RecoveryDisabled })
			return off
		},
		StateDir: d.cfg.Dir,
		Logger:   d.log,
		Observe: func(n int, err error) {
			if d.metrics != nil {
				if err != nil {
					d.metrics.RecoveryObject("failed")
				} else {
					d.metrics.RecoveryObject("done")
					d.metrics.RecoveryBytes(int64(n))
				}
			}
		},
	})
}

// startRecovery begins recovery of the current epoch.
func (d *Daemon) startRecovery(s *cluster.State) {
	c := s.Current()
	if c == nil || d.rec == nil {
		return
	}
	r, ok := d.views.Ring(c.Epoch)
	if !ok {
		return
	}
	ms := make([]placement.Node, len(c.Members))
	member := false
	for i, m := range c.Members {
		ms[i] = placement.Node{ID: m.ID, Addr: m.Addr, Zone: m.Zone, Weight: m.Space}
		member = member || m.ID == d.node.ID()
	}
	if !member {
		// Not in this epoch (we are joining, or were away): the epoch that
		// adds us will recover. Acting now would stash copies that are
		// still ours to keep.
		return
	}
	d.rec.Start(&recovery.Epoch{Epoch: c.Epoch, Ring: r, Members: ms})
}

// maybePurge deletes stale copies once every member finished the epoch.
func (d *Daemon) maybePurge(s *cluster.State) {
	c := s.Current()
	if c == nil || d.rec == nil {
		return
	}
	if !recoveredAll(s, c) {
		return
	}
	e := c.Epoch
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
		defer cancel()
		n, err := d.rec.PurgeThrough(ctx, e)
		if err != nil {
			d.log.Warn("purging stale copies failed", "epoch", e, "err", err)
		} else if n > 0 {
			d.log.Info("purged stale copies", "epoch", e, "count", n)
		}
	}()
}

// entryOf is a live-copy entry for a key (recovery reads of live copies).
func entryOf(k store.Key) recovery.Entry { return recovery.Entry{Key: k} }
