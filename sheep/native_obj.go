package sheep

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/target/native"
	"github.com/gosheep/gosheep/volume"
)

// objRange checks a client's object range and QEMU's u64 offset high half.
func objRange(req *proto.Request, o gateway.Object, n uint32) error {
	a := req.Obj()
	if req.OffsetHigh() != 0 || uint64(a.Offset)+uint64(n) > uint64(o.Size) {
		return fmt.Errorf("range %d+%d outside object %s of %d bytes: %w", a.Offset, n, proto.OID(a.OID), o.Size, proto.ResInvalidParms)
	}
	return nil
}

func (h *handler) readObj(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	a := req.Obj()
	o, v, err := h.objectOf(proto.OID(a.OID))
	if err != nil {
		return h.errRsp(req, err)
	}
	n := req.DataLength
	if uint64(a.Offset) >= uint64(o.Size) {
		n = 0
	} else {
		n = min(n, o.Size-a.Offset)
	}
	if err := objRange(req, o, n); err != nil {
		return h.errRsp(req, err)
	}
	if !o.OID.IsInode() && n >= volume.LendMin {
		// Served from this node's copy by sendfile when it has a good one;
		// anything else is read below, from any copy, with repair.
		if raw, err := h.gw.ReadPinned(ctx, o, a.Offset, n); err == nil {
			if native.AfterReply(ctx, raw.Release) && native.ReplyTail(ctx, raw.Src, raw.Off, raw.N) {
				return h.objRsp(req, v), nil
			}
			raw.Release()
		}
	}
	buf := native.Alloc(ctx, int(n))
	if o.OID.IsInode() && v.Deleted {
		// A deleted VDI reads as a tombstone: empty name, its vid, no data.
		ino := proto.Inode{VDIID: v.VID, SnapID: v.SnapID, NrCopies: v.Copies, CopyPolicy: v.CopyPolicy, BlockSizeShift: v.BlockSizeShift}
		clear(buf)
		copy(buf, ino.MarshalHeader()[min(int(a.Offset), proto.InodeHeaderSize):])
		return h.objRsp(req, v), buf
	}
	err = h.gw.Read(ctx, o, a.Offset, buf)
	if errors.Is(err, proto.ResNoObj) && o.OID.IsInode() {
		// Committed but not materialised (its creator died): rebuild it
		// from the table and the parent's inode, then serve it.
		if merr := h.vols.Materialize(ctx, &cluster.Result{Changed: []uint32{v.VID}}); merr == nil {
			err = h.gw.Read(ctx, o, a.Offset, buf)
		}
	}
	if err != nil {
		return h.errRsp(req, err)
	}
	if o.OID.IsInode() {
		patchHeader(buf, a.Offset, v)
	}
	return h.objRsp(req, v), buf
}

// patchHeader overlays the table's view of an inode header on bytes read
// from the inode object at off: the table is authoritative for the fields
// it owns (a node that died between a commit and rewriting the header
// leaves the object behind), while QEMU's own fields (vm_state_size,
// vm_clock_nsec) come from the object.
func patchHeader(buf []byte, off uint32, v *cluster.VDI) {
	if off >= proto.InodeHeaderSize || len(buf) == 0 {
		return
	}
	hdr := make([]byte, proto.InodeHeaderSize)
	copy(hdr[off:], buf)
	var ino proto.Inode
	if err := ino.UnmarshalHeader(hdr); err != nil {
		return
	}
	t := v.Inode()
	t.VMClockNsec, t.VMStateSize, t.BtreeCounter = ino.VMClockNsec, ino.VMStateSize, ino.BtreeCounter
	fixed := t.MarshalHeader()
	copy(buf, fixed[off:])
}

func (h *handler) objRsp(req *proto.Request, v *cluster.VDI) proto.Response {
	r := rsp(req, proto.ResSuccess)
	r.SetObj(proto.ObjRsp{Copies: v.Copies, CopyPolicy: v.CopyPolicy})
	return r
}

// writable refuses writes to data objects of snapshots (QEMU then reloads
// the inode and copies on write into the new working VDI).
func writable(oid proto.OID, v *cluster.VDI) error {
	if v.Deleted {
		return fmt.Errorf("vdi %#x is deleted: %w", v.VID, proto.ResNoVDI)
	}
	if oid.IsData() && v.IsSnapshot() {
		return fmt.Errorf("vdi %#x is a snapshot: %w", v.VID, proto.ResReadonly)
	}
	return nil
}

// mutable resolves the object a client write or create addresses and
// checks the range and that the VDI accepts writes.
func (h *handler) mutable(req *proto.Request, data []byte) (gateway.Object, *cluster.VDI, error) {
	oid := proto.OID(req.Obj().OID)
	o, v, err := h.objectOf(oid)
	if err == nil {
		err = objRange(req, o, uint32(len(data)))
	}
	if err == nil {
		err = writable(oid, v)
	}
	return o, v, err
}

func (h *handler) writeObj(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	a := req.Obj()
	oid := proto.OID(a.OID)
	o, v, err := h.mutable(req, data)
	if err != nil {
		return h.errRsp(req, err)
	}
	sync := req.Flags&proto.FlagSync != 0
	if oid.IsInode() {
		err = h.writeInode(ctx, o, v, a.Offset, data, sync)
	} else {
		err = h.gw.Write(ctx, o, a.Offset, data, sync)
	}
	if err != nil {
		return h.errRsp(req, err)
	}
	return h.objRsp(req, v), nil
}

// writeInode applies a client's write to an inode object. QEMU grows a VDI
// by rewriting the header with a new vdi_size (a metadata change we commit
// cluster-wide), and discards by zeroing data_vdi_id entries: objects the
// VDI owned and no longer refers to are punched (sheepdog's reclaim path).
func (h *handler) writeInode(ctx context.Context, o gateway.Object, v *cluster.VDI, off uint32, data []byte, sync bool) error {
	end := off + uint32(len(data))
	if off <= proto.InodeVDISizeOffset && end >= proto.InodeVDISizeOffset+8 {
		size := binary.LittleEndian.Uint64(data[proto.InodeVDISizeOffset-off:])
		if size != v.Size && size != 0 {
			r, err := h.node.Propose(ctx, &cluster.Command{Op: cluster.CmdResize, VID: v.VID, Size: size})
			if err != nil {
				return err
			}
			if err := r.Err(); err != nil {
				return err
			}
		}
	}
	if end > proto.InodeIndexOffset && v.IsSnapshot() {
		return fmt.Errorf("vdi %#x is a snapshot: its index is frozen: %w", v.VID, proto.ResReadonly)
	}
	// Entries of data_vdi_id being replaced.
	var old []uint32
	first := uint32(0)
	if end > proto.InodeIndexOffset {
		lo := max(off, proto.InodeIndexOffset)
		lo = (lo - proto.InodeIndexOffset) / 4
		hi := (end - proto.InodeIndexOffset + 3) / 4
		first = lo
		buf := make([]byte, 4*(hi-lo))
		if err := h.gw.Read(ctx, o, proto.IndexOffset(lo), buf); err == nil {
			old = make([]uint32, hi-lo)
			proto.DecodeIndex(old, buf)
		}
	}
	if err := h.gw.Write(ctx, o, off, data, sync); err != nil {
		return err
	}
	if end > proto.InodeIndexOffset {
		// A snapshot taken meanwhile may have copied the index before this
		// update landed: READONLY makes the client redo it on the new
		// working VDI (and nothing is reclaimed from under the snapshot).
		if err := h.vols.ConfirmWorking(ctx, v.VID); err != nil {
			return err
		}
	}
	for i, was := range old {
		if was != v.VID {
			continue
		}
		idx := first + uint32(i)
		cur := make([]byte, 4)
		if err := h.gw.Read(ctx, o, proto.IndexOffset(idx), cur); err != nil || binary.LittleEndian.Uint32(cur) == v.VID {
			continue
		}
		obj := gateway.Object{OID: proto.DataOID(v.VID, idx), Red: v.Redundancy(), Size: v.ObjectSize()}
		if err := h.gw.Discard(ctx, obj, false); err != nil {
			h.log.Warn("reclaim after index update failed", "oid", obj.OID, "err", err)
		}
	}
	return nil
}

func (h *handler) createObj(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	a := req.Obj()
	o, v, err := h.mutable(req, data)
	if err != nil {
		return h.errRsp(req, err)
	}
	sync := req.Flags&proto.FlagSync != 0
	off := a.Offset
	if req.Flags&proto.FlagCOW != 0 && a.CowOID != 0 && uint32(len(data)) != o.Size {
		// Copy-on-write: merge the ancestor's object with the new bytes.
		src, _, err := h.objectOf(proto.OID(a.CowOID))
		if err != nil {
			return h.errRsp(req, err)
		}
		full := make([]byte, o.Size)
		if err := h.gw.Read(ctx, gateway.Object{OID: src.OID, Red: src.Red, Size: o.Size}, 0, full); err != nil && !errors.Is(err, proto.ResNoObj) {
			return h.errRsp(req, fmt.Errorf("copy-on-write from %s: %w", src.OID, err))
		}
		copy(full[off:], data)
		data, off = full, 0
	}
	if err := h.gw.Create(ctx, o, off, data, sync); err != nil {
		return h.errRsp(req, err)
	}
	return h.objRsp(req, v), nil
}

func (h *handler) removeObj(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	o, _, err := h.objectOf(proto.OID(req.Obj().OID))
	if err != nil {
		return h.errRsp(req, err)
	}
	if err := h.gw.Remove(ctx, o); err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}

// discardObj is the 2014-era QEMU discard: drop a data object from its
// VDI's index and free its space.
func (h *handler) discardObj(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	oid := proto.OID(req.Obj().OID)
	o, v, err := h.objectOf(oid)
	if err == nil && !oid.IsData() {
		err = fmt.Errorf("discard of non-data object %s: %w", oid, proto.ResInvalidParms)
	}
	if err == nil {
		err = writable(oid, v)
	}
	if err != nil {
		return h.errRsp(req, err)
	}
	ino := gateway.Object{OID: proto.InodeOID(v.VID), Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: proto.InodeSize}
	cur := make([]byte, 4)
	if err := h.gw.Read(ctx, ino, proto.IndexOffset(oid.Index()), cur); err != nil {
		return h.errRsp(req, err)
	}
	switch binary.LittleEndian.Uint32(cur) {
	case 0:
		return rsp(req, proto.ResSuccess), nil
	case v.VID:
		// Punched before the index lets go of it, not removed: see
		// gateway Discard.
		if err := h.gw.Discard(ctx, o, false); err != nil {
			return h.errRsp(req, err)
		}
	}
	if err := h.gw.Write(ctx, ino, proto.IndexOffset(oid.Index()), make([]byte, 4), false); err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}
