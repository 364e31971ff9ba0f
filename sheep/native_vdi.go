package sheep

import (
	"context"
	"errors"
	"fmt"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/volume"
)

func (h *handler) vdiRsp(req *proto.Request, v *cluster.VDI) proto.Response {
	r := rsp(req, proto.ResSuccess)
	r.SetVDI(proto.VDIRsp{VDIID: v.VID, Copies: v.Copies, BlockSizeShift: v.BlockSizeShift})
	return r
}

// newVDI serves QEMU's and dog's NEW_VDI: create, clone (base = a
// snapshot), or snapshot (snapid != 0, base = the working VDI, tag taken
// from the base inode header the client wrote just before).
func (h *handler) newVDI(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	if len(data) != proto.NameLen {
		return rsp(req, proto.ResInvalidParms), nil
	}
	name, _, err := proto.ParseNameTag(data)
	if err != nil || name == "" {
		return rsp(req, proto.ResInvalidParms), nil
	}
	a := req.VDI()
	var v *cluster.VDI
	switch {
	case a.SnapID != 0:
		base, ok := h.vols.VDI(a.BaseVDIID)
		if !ok || base.Deleted || base.Name != name {
			return rsp(req, proto.ResNoBaseVDI), nil
		}
		tag := ""
		if ino, err := h.readInodeHeader(ctx, base); err == nil {
			tag = ino.Tag
		}
		v, err = h.proposeVDI(ctx, &cluster.Command{Op: cluster.CmdCreateVDI, Name: name, Tag: tag, Snapshot: true, BaseVID: base.VID})
	case a.BaseVDIID != 0:
		v, err = h.proposeVDI(ctx, &cluster.Command{Op: cluster.CmdCreateVDI, Name: name, BaseVID: a.BaseVDIID, Size: a.VDISize})
	default:
		c := &cluster.Command{Op: cluster.CmdCreateVDI, Name: name, Size: a.VDISize, BlockSizeShift: a.BlockSizeShift}
		if a.Copies != 0 {
			c.Copies, c.CopyPolicy = a.Copies, a.CopyPolicy
		}
		if a.StorePolicy != 0 {
			return h.errRsp(req, fmt.Errorf("hyper volumes (store_policy 1) are not supported: %w", proto.ResNoSupport))
		}
		v, err = h.proposeVDI(ctx, c)
	}
	if err != nil {
		return h.errRsp(req, err)
	}
	return h.vdiRsp(req, v), nil
}

func (h *handler) proposeVDI(ctx context.Context, c *cluster.Command) (*cluster.VDI, error) {
	return h.vols.Propose(ctx, c)
}

func (h *handler) readInodeHeader(ctx context.Context, v *cluster.VDI) (*proto.Inode, error) {
	o, _, err := h.objectOf(proto.InodeOID(v.VID))
	if err != nil {
		return nil, err
	}
	buf := make([]byte, proto.InodeHeaderSize)
	if err := h.gw.Read(ctx, o, 0, buf); err != nil {
		return nil, err
	}
	ino := &proto.Inode{}
	return ino, ino.UnmarshalHeader(buf)
}

// lookupVDI serves GET_VDI_INFO and LOCK_VDI (which locks only when the
// cluster was formatted with locking, as in sheepdog).
func (h *handler) lookupVDI(ctx context.Context, req *proto.Request, data []byte, lock bool) (proto.Response, []byte) {
	name, tag, err := proto.ParseNameTag(data)
	if err != nil {
		return rsp(req, proto.ResInvalidParms), nil
	}
	a := req.VDI()
	v, err := h.vols.LookupSync(ctx, name, tag, a.SnapID)
	if err != nil {
		return h.errRsp(req, err)
	}
	if lock && h.useLocks() {
		r, err := h.node.Propose(ctx, &cluster.Command{Op: cluster.CmdLock, VID: v.VID, Owner: owner(ctx), LockType: a.Type})
		if err != nil {
			return h.errRsp(req, err)
		}
		if r.Code != proto.ResSuccess {
			return rsp(req, r.Code), nil
		}
	}
	return h.vdiRsp(req, v), nil
}

func (h *handler) useLocks() bool {
	var on bool
	h.node.FSM().Read(func(s *cluster.State) {
		on = s.Format != nil && s.Format.Flags&proto.ClusterFlagUseLock != 0
	})
	return on
}

// owner names the client a lock belongs to.
func owner(ctx context.Context) string {
	if p, ok := ctx.Value(peerKey{}).(string); ok {
		return p
	}
	return "unknown"
}

type peerKey struct{}

func (h *handler) releaseVDI(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	if !h.useLocks() {
		return rsp(req, proto.ResSuccess), nil
	}
	vid := req.VDI().BaseVDIID
	r, err := h.node.Propose(ctx, &cluster.Command{Op: cluster.CmdUnlock, VID: vid})
	if err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, r.Code), nil
}

func (h *handler) readVDIs(req *proto.Request) (proto.Response, []byte) {
	if req.DataLength != proto.VDIBitmapSize {
		return rsp(req, proto.ResInvalidParms), nil
	}
	var bm proto.VDIBitmap
	h.node.FSM().Read(func(s *cluster.State) { bm = s.Bitmap() })
	return rsp(req, proto.ResSuccess), bm
}

func (h *handler) delVDI(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	name, tag, err := proto.ParseNameTag(data)
	if err != nil {
		return rsp(req, proto.ResInvalidParms), nil
	}
	if err := h.vols.Delete(ctx, name, tag, req.VDI().SnapID); err != nil {
		if errors.Is(err, volume.ErrNoVolume) {
			return rsp(req, proto.ResNoVDI), nil
		}
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}

func (h *handler) clusterDefault(req *proto.Request) (proto.Response, []byte) {
	var f *cluster.Format
	h.node.FSM().Read(func(s *cluster.State) {
		if s.Format != nil {
			c := *s.Format
			f = &c
		}
	})
	if f == nil {
		return rsp(req, proto.ResWaitForFormat), nil
	}
	r := rsp(req, proto.ResSuccess)
	r.SetClusterDefault(proto.ClusterDefault{Copies: f.Copies, CopyPolicy: f.CopyPolicy, BlockSizeShift: f.BlockSizeShift})
	return r, nil
}
