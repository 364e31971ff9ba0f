package sheep

import (
	"context"
	"fmt"
	"github.com/gosheep/gosheep/api"
	"log/slog"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/target/native"
	"github.com/gosheep/gosheep/volume"
)

// handler serves sheepdog's protocol on port 7000: QEMU's and dog's public
// opcodes, dog's internal ones, the peer opcodes other nodes' gateways send,
// and gosheep's JSON extensions. It is the native front end: it uses the
// volume layer for VDI operations and the gateway for object I/O.
type handler struct {
	node  *cluster.Node
	vols  *volume.Manager
	gw    *gateway.Gateway
	store localStore
	// guard runs a store operation once the local copy of k is current
	// (recovery.Recoverer.Guard); nil runs it directly.
	guard func(ctx context.Context, k store.Key, op func() error) error
	log   *slog.Logger
	kill  func() // dog node kill
	// check serves api.VolCheck (it needs the daemon's placement and peers).
	check func(ctx context.Context, op *api.VolumeOp) (*cluster.Result, error)
	// vnodes is a member's virtual-node count on the current ring.
	vnodes func(id string) int
	// ready reports whether the node caught up with the cluster's metadata
	// since it started (before that its VDI table may be a partial replay).
	ready func() bool
	// recoveryStatus reports this node's recovery progress.
	recoveryStatus func() recovery.Status
	// everywhere waits until every member applied a Raft index.
	everywhere func(ctx context.Context, index uint64)
	// waitAborts waits for this node's PREEMPT AND ABORT aborts.
	waitAborts func(ctx context.Context) error
	// served is the epoch this node serves I/O in: its placement view's,
	// which Daemon.watch advances only after recovery has learned the
	// epoch. The FSM's epoch moves first, before the watchers run. nil:
	// the FSM's (tests without a daemon).
	served  func() uint32
	started time.Time
}

func rsp(req *proto.Request, res proto.Result) proto.Response {
	return req.Reply(res)
}

// errRsp answers with the result code err carries, logging unexpected ones.
func (h *handler) errRsp(req *proto.Request, err error) (proto.Response, []byte) {
	code := proto.ResultOf(err)
	if code == proto.ResEIO || code == proto.ResSystemError {
		h.log.Warn("request failed", "op", req.Opcode, "err", err)
	}
	return rsp(req, code), nil
}

// Handle dispatches one request.
func (h *handler) Handle(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	r, payload := h.dispatch(ctx, req, data)
	if r.Epoch == 0 {
		r.Epoch = h.epoch()
	}
	return r, payload
}

func (h *handler) epoch() uint32 {
	var e uint32
	h.node.FSM().Read(func(s *cluster.State) { e = s.Epoch() })
	return e
}

func (h *handler) dispatch(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	if gate := h.gateWait(ctx, req.Opcode); gate != proto.ResSuccess {
		return rsp(req, gate), nil
	}
	switch req.Opcode {
	case proto.OpReadObj:
		return h.readObj(ctx, req)
	case proto.OpWriteObj:
		return h.writeObj(ctx, req, data)
	case proto.OpCreateAndWriteObj:
		return h.createObj(ctx, req, data)
	case proto.OpRemoveObj:
		return h.removeObj(ctx, req)
	case proto.OpDiscardObj:
		return h.discardObj(ctx, req)
	case proto.OpNewVDI:
		return h.newVDI(ctx, req, data)
	case proto.OpLockVDI:
		return h.lookupVDI(ctx, req, data, true)
	case proto.OpGetVDIInfo:
		return h.lookupVDI(ctx, req, data, false)
	case proto.OpReleaseVDI:
		return h.releaseVDI(ctx, req, data)
	case proto.OpReadVDIs:
		return h.readVDIs(req)
	case proto.OpFlushVDI:
		if err := h.gw.Flush(ctx); err != nil {
			return h.errRsp(req, err)
		}
		return rsp(req, proto.ResSuccess), nil
	case proto.OpDelVDI:
		return h.delVDI(ctx, req, data)
	case proto.OpGetClusterDefault:
		return h.clusterDefault(req)

	case proto.OpGetNodeList:
		return h.nodeList(req)
	case proto.OpMakeFS:
		return h.makeFS(ctx, req)
	case proto.OpShutdown:
		return h.propose(ctx, req, &cluster.Command{Op: cluster.CmdShutdown})
	case proto.OpEnableRecover:
		return h.propose(ctx, req, &cluster.Command{Op: cluster.CmdRecovery, Enable: true})
	case proto.OpDisableRecover:
		return h.propose(ctx, req, &cluster.Command{Op: cluster.CmdRecovery, Enable: false})
	case proto.OpStatSheep:
		return h.statSheep(req)
	case proto.OpKillNode:
		if h.kill != nil {
			// Answer first, then go.
			time.AfterFunc(500*time.Millisecond, h.kill)
		}
		return rsp(req, proto.ResSuccess), nil
	case proto.OpGetHash:
		return h.getHash(ctx, req)
	case proto.OpGetSumsHash:
		return h.getSumsHash(ctx, req)
	case proto.OpExist:
		return h.exist(ctx, req)
	case proto.OpGetObjList:
		return h.objList(ctx, req)

	case proto.OpCreateAndWritePeer, proto.OpWritePeer, proto.OpWritePeerSums, proto.OpReadPeer, proto.OpReadPeerSums, proto.OpRemovePeer,
		proto.OpHealPeer, proto.OpReplacePeer:
		return h.peerIO(ctx, req, data)
	case proto.OpSyncPeer:
		if err := h.store.Sync(ctx); err != nil {
			return h.errRsp(req, err)
		}
		return rsp(req, proto.ResSuccess), nil
	case proto.OpECWrite:
		return h.ecWrite(ctx, req, data)
	case proto.OpZeroPeer:
		return h.zeroPeer(ctx, req)
	case proto.OpListObjs:
		return h.listObjs(ctx, req)
	case proto.OpMeta:
		return h.meta(ctx, req, data)
	case proto.OpClusterState:
		return h.clusterState(ctx, req)
	case proto.OpNodeInfo:
		return h.nodeInfo(ctx, req)
	case proto.OpObjInfo:
		return h.objInfo(ctx, req, data)
	}
	return rsp(req, proto.ResInvalidParms), nil
}

// forceOps work before format and while the cluster waits (sheep's "force" ops).
var forceOps = map[proto.Opcode]bool{
	proto.OpReadVDIs: true, proto.OpGetNodeList: true, proto.OpStatCluster: true, proto.OpMakeFS: true,
	proto.OpShutdown: true, proto.OpClusterInfo: true, proto.OpGetClusterDefault: true,
	proto.OpForceRecover: true, proto.OpMeta: true, proto.OpClusterState: true, proto.OpNodeInfo: true,
	proto.OpStatSheep: true, proto.OpKillNode: true, proto.OpSyncPeer: true,
	proto.OpListObjs: true, proto.OpObjInfo: true, proto.OpGetObjList: true,
}

// gate applies the cluster-state rules: unformatted clusters and shut down
// ones refuse I/O, and a node cut off from the metadata quorum stops
// serving I/O (fencing) so a partitioned minority cannot diverge.
func (h *handler) gate(op proto.Opcode) proto.Result {
	if forceOps[op] {
		return proto.ResSuccess
	}
	var status string
	var formatted bool
	h.node.FSM().Read(func(s *cluster.State) { status, formatted = s.Status, s.Format != nil })
	switch {
	case !formatted:
		return proto.ResWaitForFormat
	case status == cluster.StatusShutdown:
		return proto.ResWaitForJoin
	case !h.node.Healthy():
		return proto.ResHalt
	case h.ready != nil && !h.ready():
		return proto.ResStartup
	}
	return proto.ResSuccess
}

// startupWait is how long a request waits for a node that is finishing
// its start (replaying the log, reconciling the store with a format that
// just committed) before it is told STARTUP: that takes moments, and a
// client that just formatted should not see the error.
const startupWait = 5 * time.Second

func (h *handler) gateWait(ctx context.Context, op proto.Opcode) proto.Result {
	g := h.gate(op)
	if g != proto.ResStartup {
		return g
	}
	deadline := time.Now().Add(startupWait)
	for g == proto.ResStartup && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return g
		case <-time.After(10 * time.Millisecond):
		}
		g = h.gate(op)
	}
	return g
}

func (h *handler) propose(ctx context.Context, req *proto.Request, c *cluster.Command) (proto.Response, []byte) {
	r, err := h.node.Propose(ctx, c)
	if err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, r.Code), nil
}

// meta serves a forwarded metadata command on the leader, or a dog command
// (JSON in, JSON out) on any node.
func (h *handler) meta(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	var m api.MetaRequest
	if err := native.DecodeJSON(data, &m); err != nil {
		return h.errRsp(req, err)
	}
	out, err := h.serveMeta(ctx, &m)
	if err != nil {
		return h.errRsp(req, err)
	}
	return native.ReplyJSON(ctx, req, out)
}

func (h *handler) serveMeta(ctx context.Context, m *api.MetaRequest) (*cluster.Result, error) {
	switch {
	case m.Forward != nil:
		return h.node.ApplyAsLeader(ctx, m.Forward)
	case m.Propose != nil:
		r, err := h.node.Propose(ctx, m.Propose)
		if err == nil && m.Propose.Op == cluster.CmdResv && h.everywhere != nil {
			// dog vdi reservation clear: in force on every node when dog
			// returns, as a PERSISTENT RESERVE OUT is.
			h.everywhere(ctx, r.Index)
		}
		return r, err
	case m.Volume != nil:
		return h.volumeOp(ctx, m.Volume)
	case m.WaitApplied != 0:
		// Bounded: the asker gives up after everywhereTimeout anyway, and
		// an index that never comes must not hold a handler forever.
		ctx, cancel := context.WithTimeout(ctx, 2*everywhereTimeout)
		defer cancel()
		if !h.node.FSM().WaitWatched(m.WaitApplied, ctx.Done()) {
			return nil, fmt.Errorf("index %d not applied here: %w: %w", m.WaitApplied, ctx.Err(), proto.ResAgain)
		}
		// A PREEMPT AND ABORT is in force once the commands it aborts here
		// have ended.
		if h.waitAborts != nil {
			if err := h.waitAborts(ctx); err != nil {
				return nil, fmt.Errorf("aborts of index %d still running: %w: %w", m.WaitApplied, err, proto.ResAgain)
			}
		}
		return &cluster.Result{Index: m.WaitApplied}, nil
	}
	return nil, fmt.Errorf("empty meta request: %w", proto.ResInvalidParms)
}

func (h *handler) volumeOp(ctx context.Context, op *api.VolumeOp) (*cluster.Result, error) {
	var (
		v   *cluster.VDI
		err error
	)
	switch op.Op {
	case api.VolCreate:
		o := volume.CreateOpts{Name: op.Name, Size: op.Size, BlockSizeShift: op.BSS}
		if op.Redundancy != "" {
			if o.Redundancy, err = proto.ParseRedundancy(op.Redundancy); err != nil {
				return nil, err
			}
		}
		v, err = h.vols.Create(ctx, o)
	case api.VolSnapshot:
		v, err = h.vols.Snapshot(ctx, op.Name, op.Tag)
	case api.VolClone:
		v, err = h.vols.Clone(ctx, op.Name, op.Tag, op.SnapID, op.Dest, op.Size)
	case api.VolRollback:
		v, err = h.vols.Rollback(ctx, op.Name, op.Tag, op.SnapID)
	case api.VolResize:
		v, err = h.vols.Resize(ctx, op.Name, op.Size)
	case api.VolDelete:
		err = h.vols.Delete(ctx, op.Name, op.Tag, op.SnapID)
	case api.VolCheck:
		if h.check == nil {
			return nil, fmt.Errorf("check is not available: %w", proto.ResNoSupport)
		}
		return h.check(ctx, op)
	default:
		return nil, fmt.Errorf("unknown volume op %q: %w", op.Op, proto.ResInvalidParms)
	}
	if err != nil {
		return &cluster.Result{Code: proto.ResultOf(err), Message: err.Error()}, nil
	}
	r := &cluster.Result{}
	if v != nil {
		r.VID = v.VID
	}
	return r, nil
}

// objectOf describes the object an oid names, from the VDI table.
func (h *handler) objectOf(oid proto.OID) (gateway.Object, *cluster.VDI, error) {
	v, ok := h.vols.VDI(oid.VID())
	if !ok {
		return gateway.Object{}, nil, fmt.Errorf("no vdi %#x for object %s: %w", oid.VID(), oid, proto.ResNoVDI)
	}
	switch {
	case oid.IsInode():
		return gateway.Object{OID: oid, Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: proto.InodeSize}, v, nil
	case oid.IsVMState():
		return gateway.Object{OID: oid, Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: v.ObjectSize()}, v, nil
	case oid.IsData():
		return gateway.Object{OID: oid, Red: v.Redundancy(), Size: v.ObjectSize()}, v, nil
	}
	return gateway.Object{}, v, fmt.Errorf("object %s: unsupported object type: %w", oid, proto.ResNoSupport)
}

// localStore is the node's store with its stale-copy side.
type localStore interface {
	store.Store
	store.Stasher
}
