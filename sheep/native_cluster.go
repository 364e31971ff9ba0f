package sheep

import (
	"context"
	"encoding/binary"
	"github.com/gosheep/gosheep/api"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/target/native"
)

// toProtoNode renders an epoch member as sheepdog's struct sd_node.
func toProtoNode(m cluster.Member, vnodes uint16) proto.Node {
	return proto.Node{Addr: m.Addr.Addr(), Port: m.Addr.Port(), Vnodes: vnodes, Zone: m.Zone, Space: m.Space}
}

func (h *handler) nodeList(req *proto.Request) (proto.Response, []byte) {
	var ms []cluster.Member
	h.node.FSM().Read(func(s *cluster.State) {
		if c := s.Current(); c != nil {
			ms = append(ms, c.Members...)
		}
	})
	if len(ms) == 0 {
		// Before format: this node alone, as sheep answers.
		ms = []cluster.Member{h.node.Self()}
	}
	nodes := make([]proto.Node, len(ms))
	for i, m := range ms {
		vn := uint16(proto.DefaultVnodes)
		if h.vnodes != nil {
			vn = uint16(min(h.vnodes(m.ID), 0xffff))
		}
		nodes[i] = toProtoNode(m, vn)
	}
	b := proto.MarshalNodes(nodes)
	if uint32(len(b)) > req.DataLength {
		return rsp(req, proto.ResBufferSmall), nil
	}
	r := rsp(req, proto.ResSuccess)
	r.SetNode(proto.NodeRsp{NrNodes: uint32(len(nodes))})
	return r, b
}

// makeFS formats the cluster with every live member in the first epoch.
func (h *handler) makeFS(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	a := req.Cluster()
	f := &cluster.Format{Copies: a.Copies, CopyPolicy: a.CopyPolicy, BlockSizeShift: a.BlockSizeShift, Flags: a.Flags, Ctime: a.Ctime}
	if f.Copies == 0 {
		f.Copies = proto.DefaultCopies
	}
	if f.BlockSizeShift == 0 {
		f.BlockSizeShift = proto.DefaultBSS
	}
	var members []cluster.Member
	for _, m := range h.node.Members() {
		if m.Status == "alive" {
			members = append(members, m.Member)
		}
	}
	return h.propose(ctx, req, &cluster.Command{Op: cluster.CmdFormat, Format: f, Members: members, MetaVersion: h.node.AliveMetaVersion()})
}

func (h *handler) statSheep(req *proto.Request) (proto.Response, []byte) {
	u, err := h.store.Usage()
	if err != nil {
		return h.errRsp(req, err)
	}
	r := rsp(req, proto.ResSuccess)
	r.SetNode(proto.NodeRsp{StoreSize: u.Capacity, StoreFree: u.Free})
	return r, nil
}

func (h *handler) getHash(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	return h.digest(ctx, req, h.store.Hash)
}

// getSumsHash answers GET_SUMS_HASH: the fingerprint of the copy's block
// checksums (store.SumsHash), in GET_HASH's response field.
func (h *handler) getSumsHash(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	return h.digest(ctx, req, h.store.SumsHash)
}

func (h *handler) digest(ctx context.Context, req *proto.Request, of func(context.Context, store.Key) ([20]byte, error)) (proto.Response, []byte) {
	// Guarded, as sheepdog's GET_HASH is a peer request that waits for the
	// object's recovery: a check never compares an outdated copy.
	k := peerKeyOf(req.Obj())
	var d [20]byte
	err := h.guarded(ctx, k, func() (err error) {
		d, err = of(ctx, k)
		return err
	})
	if err != nil {
		return h.errRsp(req, err)
	}
	r := rsp(req, proto.ResSuccess)
	r.SetHash(d)
	return r, nil
}

func (h *handler) exist(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	if _, err := h.store.Stat(ctx, peerKeyOf(req.Obj())); err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}

// objList is sheepdog's GET_OBJ_LIST: the oids held here, as u64s.
func (h *handler) objList(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	objs, err := h.store.List(ctx)
	if err != nil {
		return h.errRsp(req, err)
	}
	seen := map[proto.OID]bool{}
	var b []byte
	for _, o := range objs {
		if seen[o.Key.OID] {
			continue
		}
		seen[o.Key.OID] = true
		b = binary.LittleEndian.AppendUint64(b, uint64(o.Key.OID))
	}
	if uint32(len(b)) > req.DataLength {
		return rsp(req, proto.ResBufferSmall), nil
	}
	return rsp(req, proto.ResSuccess), b
}

// listObjs answers LIST_OBJS: every copy here, live and stale, for recovery.
func (h *handler) listObjs(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	out, err := h.entries(ctx, func(proto.OID) bool { return true })
	if err != nil {
		return h.errRsp(req, err)
	}
	return h.jsonRsp(ctx, req, out)
}

// entries lists local copies (live and stale) of the oids keep accepts.
func (h *handler) entries(ctx context.Context, keep func(proto.OID) bool) ([]recovery.Entry, error) {
	objs, err := h.store.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]recovery.Entry, 0, len(objs))
	for _, o := range objs {
		if keep(o.Key.OID) {
			out = append(out, recovery.Entry{Key: o.Key, Size: o.Size, Epoch: o.Epoch})
		}
	}
	stale, err := h.store.ListStale(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range stale {
		if keep(st.Key.OID) {
			out = append(out, recovery.Entry{Key: st.Key, Size: st.Size, Epoch: st.ObjEpoch, Stale: st.Epoch})
		}
	}
	return out, nil
}

func (h *handler) jsonRsp(ctx context.Context, req *proto.Request, v any) (proto.Response, []byte) {
	return native.ReplyJSON(ctx, req, v)
}

func (h *handler) clusterState(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	leader, _, _ := h.node.Leader()
	st := h.node.FSM().State()
	// CHAP secrets stay inside the cluster: dog learns only that one is set.
	for _, v := range st.VDIs {
		if v.CHAP != nil {
			v.CHAP.Secret = redacted
			if v.CHAP.MutualSecret != "" {
				v.CHAP.MutualSecret = redacted
			}
		}
	}
	return h.jsonRsp(ctx, req, api.ClusterState{State: st, Members: h.node.Members(), Leader: leader, Self: h.node.ID()})
}

func (h *handler) nodeInfo(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	u, _ := h.store.Usage()
	self := h.node.Self()
	return h.jsonRsp(ctx, req, api.NodeInfo{
		ID: self.ID, Addr: self.Addr.String(), Zone: self.Zone, Usage: u, Epoch: h.epoch(),
		Leader: h.node.IsLeader(), Healthy: h.node.Healthy() && (h.ready == nil || h.ready()), Uptime: time.Since(h.started).Seconds(),
		Recovery: h.recoveryStatus(),
	})
}

// objInfo answers OBJ_INFO: the copies (live and stale, any strip) of an oid here.
func (h *handler) objInfo(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	var q api.ObjInfoRequest
	if err := native.DecodeJSON(data, &q); err != nil {
		return h.errRsp(req, err)
	}
	out, err := h.entries(ctx, func(o proto.OID) bool { return o == q.OID })
	if err != nil {
		return h.errRsp(req, err)
	}
	return h.jsonRsp(ctx, req, out)
}

// redacted replaces secrets in documents sent to clients.
const redacted = "(set)"
