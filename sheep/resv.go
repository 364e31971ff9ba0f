package sheep

import (
	"context"
	"fmt"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
)

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

// installResv gives this node's targets of vid the reservations the FSM
// holds for it (the state is installed once: see scsi.LU.Install).
func (d *Daemon) installResv(cur *cluster.State, vid uint32) {
	if d.fe.iscsi == nil || cur == nil {
		return
	}
	d.fe.iscsi.InstallResv(vid, cur.Resv[vid])
}
