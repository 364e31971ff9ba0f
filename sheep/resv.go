package sheep

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
)

// resvSyncTimeout bounds how long a reservation change waits for another
// node to enforce it. A node that does not answer in time is cut off from
// the leader (it stops serving I/O once its lease runs out) or far behind.
const resvSyncTimeout = 5 * time.Second

// clusterResv orders SCSI reservation changes through Raft, so every
// node's iSCSI target enforces the same reservations (multipath across
// nodes), and they survive restarts.
type clusterResv struct {
	d *Daemon
}

// Do commits op, then waits until every other member has applied it (and
// installed it in its targets) before the requester hears the outcome:
// an initiator that reserved through one node and then writes through
// another must meet its reservation there.
func (r clusterResv) Do(ctx context.Context, vid uint32, op resv.Op) (*resv.State, resv.Outcome, error) {
	res, err := r.d.node.Propose(ctx, &cluster.Command{Op: cluster.CmdResv, VID: vid, Resv: &op})
	if err != nil {
		return nil, resv.Outcome{}, err
	}
	if err := res.Err(); err != nil {
		return nil, resv.Outcome{}, err
	}
	if res.Resv == nil || res.Outcome == nil {
		return nil, resv.Outcome{}, fmt.Errorf("reservation change committed without a state: %w", proto.ResSystemError)
	}
	r.d.syncMembers(ctx, res.Index)
	return res.Resv, *res.Outcome, nil
}

// syncMembers asks every other member of the current epoch to answer once
// it has applied index, in parallel, each for at most resvSyncTimeout.
func (d *Daemon) syncMembers(ctx context.Context, index uint64) {
	var members []cluster.Member
	d.node.FSM().Read(func(s *cluster.State) {
		if cur := s.Current(); cur != nil {
			members = append(members, cur.Members...)
		}
	})
	var wg sync.WaitGroup
	for _, m := range members {
		if m.ID == d.node.ID() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, resvSyncTimeout)
			defer cancel()
			err := d.waitApplied(ctx, m.Addr.String(), index)
			if err != nil {
				d.log.Warn("reservation change: member did not confirm it", "node", m.ID, "index", index, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (d *Daemon) waitApplied(ctx context.Context, addr string, index uint64) error {
	c, err := d.pool.Get(ctx, addr)
	if err != nil {
		return err
	}
	var r cluster.Result
	return c.Meta(ctx, proto.OpMeta, api.MetaRequest{WaitApplied: index}, &r)
}

// installResv gives this node's targets of vid the reservations the FSM
// holds for it (the state is installed once: see scsi.LU.Install).
func (d *Daemon) installResv(cur *cluster.State, vid uint32) {
	if d.fe.iscsi == nil || cur == nil {
		return
	}
	d.fe.iscsi.InstallResv(vid, cur.Resv[vid])
}
