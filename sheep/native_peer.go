package sheep

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/target/native"
	"github.com/gosheep/gosheep/volume"
)

// peerKeyOf is the store key a peer request addresses: an EC strip when
// the request carries a copy policy, else a replica.
func peerKeyOf(a proto.ObjArgs) store.Key {
	if a.CopyPolicy != 0 {
		return store.StripKey(proto.OID(a.OID), a.ECIndex)
	}
	return store.ReplicaKey(proto.OID(a.OID))
}

// checkEpoch refuses peer requests from another epoch: an older sender
// must refresh its placement (OLD_NODE_VER); a newer one waits briefly for
// this node to catch up, then gets NEW_NODE_VER and retries. The epoch
// compared is the one this node serves (h.served), not its FSM's: in
// between, recovery has not learned the new epoch yet, and its guard
// would let a request of that epoch read a copy it has still to fetch
// (a strip this node is new to reads as missing).
func (h *handler) checkEpoch(ctx context.Context, e uint32) error {
	deadline := time.Now().Add(2 * time.Second)
	epoch := h.epoch
	if h.served != nil {
		epoch = h.served
	}
	for {
		cur := epoch()
		switch {
		case e == cur:
			return nil
		case e < cur:
			return proto.ResOldNodeVer
		case time.Now().After(deadline):
			return proto.ResNewNodeVer
		}
		select {
		case <-ctx.Done():
			return proto.ResNewNodeVer
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// guarded runs a store operation on k through recovery's guard, so it
// never acts on a copy that recovery has yet to bring up to date.
func (h *handler) guarded(ctx context.Context, k store.Key, op func() error) error {
	if h.guard == nil {
		return op()
	}
	return h.guard(ctx, k, op)
}

func (h *handler) peerIO(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	a := req.Obj()
	if req.Flags&proto.FlagRecovery == 0 || req.Opcode != proto.OpReadPeer {
		if err := h.checkEpoch(ctx, req.Epoch); err != nil {
			return h.errRsp(req, err)
		}
	}
	k := peerKeyOf(a)
	opts := store.WriteOpts{Sync: req.Flags&proto.FlagSync != 0, Epoch: req.Epoch, Exclusive: req.Flags&proto.FlagExclusive != 0}
	var (
		err error
		out []byte
	)
	switch req.Opcode {
	case proto.OpCreateAndWritePeer:
		size := req.PeerSize()
		if size == 0 || uint64(a.Offset)+uint64(len(data)) > uint64(size) {
			return h.errRsp(req, fmt.Errorf("peer create of %s: bad size %d: %w", k.OID, size, proto.ResInvalidParms))
		}
		err = h.guarded(ctx, k, func() error { return h.store.Create(ctx, k, size, a.Offset, data, opts) })
	case proto.OpWritePeer:
		err = h.guarded(ctx, k, func() error { return h.store.Write(ctx, k, a.Offset, data, opts) })
	case proto.OpWritePeerSums:
		var sums []uint32
		if data, sums, err = splitSums(data, a.Offset); err != nil {
			return h.errRsp(req, fmt.Errorf("peer write of %s: %w", k.OID, err))
		}
		opts.Sums = sums
		err = h.guarded(ctx, k, func() error { return h.store.Write(ctx, k, a.Offset, data, opts) })
	case proto.OpReadPeer:
		if req.Flags&proto.FlagRecovery != 0 {
			// Recovery reads bypass the epoch gate and on-demand recovery
			// (no loops), and may read a stale copy (tgt_epoch).
			out = native.Alloc(ctx, int(req.DataLength))
			if a.TgtEpoch != 0 {
				err = h.store.ReadStale(ctx, k, a.TgtEpoch, a.Offset, out)
			} else {
				err = h.store.Read(ctx, k, a.Offset, out)
			}
			break
		}
		return h.readPeer(ctx, req, k)
	case proto.OpHealPeer:
		err = (&localPeer{h: h}).Heal(ctx, req.Epoch, k, a.Offset, data, opts.Sync)
	case proto.OpReplacePeer:
		if len(data) <= sha1.Size || a.Offset != 0 {
			return h.errRsp(req, fmt.Errorf("peer replace of %s: %d bytes at %d: %w", k.OID, len(data), a.Offset, proto.ResInvalidParms))
		}
		err = (&localPeer{h: h}).replaceIf(ctx, req.Epoch, k, [sha1.Size]byte(data[:sha1.Size]), data[sha1.Size:], opts.Sync)
	case proto.OpReadPeerSums:
		return h.readPeerSums(ctx, req, k)
	case proto.OpRemovePeer:
		err = h.guarded(ctx, k, func() error { return h.store.Remove(ctx, k) })
	}
	if err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), out
}

// readPeerSums answers READ_PEER_SUMS: the blocks' stored checksums, then
// their data straight from the object file (sendfile), pinned until the
// response is written. The reader verifies the data.
func (h *handler) readPeerSums(ctx context.Context, req *proto.Request, k store.Key) (proto.Response, []byte) {
	const unit = store.SumBlock + 4
	a := req.Obj()
	rr, ok := h.store.(store.RawReader)
	if !ok || req.DataLength == 0 || req.DataLength%unit != 0 || a.Offset%store.SumBlock != 0 {
		return h.errRsp(req, fmt.Errorf("peer read of %s: %d bytes at %d are not whole blocks with their sums: %w",
			k.OID, req.DataLength, a.Offset, proto.ResInvalidParms))
	}
	nb := req.DataLength / unit
	var (
		raw  *store.Raw
		sums = make([]uint32, 0, nb)
	)
	err := h.guarded(ctx, k, func() (err error) {
		raw, sums, err = rr.ReadRaw(ctx, k, a.Offset, nb*store.SumBlock, sums)
		return err
	})
	if err != nil {
		return h.errRsp(req, err)
	}
	if n := int(nb * store.SumBlock); n < volume.LendMin {
		// A small range is copied into the response: sendfile would
		// take a write of its own for the header and keep the response
		// out of the server's batched writes, which costs more than
		// the copy (3 nodes, 1 copy, 4 KiB reads at QD32: machine CPU
		// per read 50-54 -> 43-47 us).
		out := appendSums(native.Alloc(ctx, int(4*nb)+n)[:0], sums)
		_, err := raw.Src.ReadAt(out[len(out):len(out)+n], raw.Off)
		raw.Release()
		if err != nil {
			return h.errRsp(req, fmt.Errorf("peer read of %s: %w: %w", k.OID, err, proto.ResEIO))
		}
		return rsp(req, proto.ResSuccess), out[:len(out)+n]
	}
	// The native server always serves handlers with a request context;
	// ReplyTail itself copies when the source has no descriptor.
	if !native.AfterReply(ctx, raw.Release) || !native.ReplyTail(ctx, raw.Src, raw.Off, raw.N) {
		raw.Release()
		return h.errRsp(req, fmt.Errorf("peer read of %s outside a server request: %w", k.OID, proto.ResSystemError))
	}
	return rsp(req, proto.ResSuccess), appendSums(native.Alloc(ctx, int(4*nb))[:0], sums)
}

// readPeer answers READ_PEER (not recovery's): verified data. A large
// range goes from the object file (readPeerLent), anything else, and any
// range the store cannot lend, is read into memory, which reports rot.
func (h *handler) readPeer(ctx context.Context, req *proto.Request, k store.Key) (proto.Response, []byte) {
	if req.DataLength >= volume.LendMin {
		if r, ok := h.readPeerLent(ctx, req, k); ok {
			return r, nil
		}
	}
	out := native.Alloc(ctx, int(req.DataLength))
	if err := h.guarded(ctx, k, func() error { return h.store.Read(ctx, k, req.Obj().Offset, out) }); err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), out
}

// readPeerLent answers a large READ_PEER from the object file: the
// store checks the range in place and pins it (store.PinnedReader), and
// the data goes by sendfile, so a gateway relaying it (sendfile.Pipe)
// never has it in memory on either node. ok is false when the store
// cannot lend or the lend fails: the caller then reads by copying, which
// reports the error.
func (h *handler) readPeerLent(ctx context.Context, req *proto.Request, k store.Key) (proto.Response, bool) {
	raw, err := (&localPeer{h: h}).ReadPinned(ctx, req.Epoch, k, req.Obj().Offset, req.DataLength)
	if err != nil {
		return proto.Response{}, false
	}
	if !native.AfterReply(ctx, raw.Release) || !native.ReplyTail(ctx, raw.Src, raw.Off, raw.N) {
		raw.Release()
		return proto.Response{}, false
	}
	return rsp(req, proto.ResSuccess), true
}

// splitSums parses an OpWritePeerSums payload: n blocks of data, then n
// little-endian block checksums.
func splitSums(p []byte, off uint32) (data []byte, sums []uint32, err error) {
	const unit = store.SumBlock + 4
	if len(p) == 0 || len(p)%unit != 0 || off%store.SumBlock != 0 {
		return nil, nil, fmt.Errorf("%d payload bytes at offset %d are not whole blocks with their sums: %w", len(p), off, proto.ResInvalidParms)
	}
	n := len(p) / unit
	data, raw := p[:n*store.SumBlock], p[n*store.SumBlock:]
	sums = make([]uint32, n)
	for i := range sums {
		sums[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	return data, sums, nil
}

func (h *handler) zeroPeer(ctx context.Context, req *proto.Request) (proto.Response, []byte) {
	a := req.Obj()
	if err := h.checkEpoch(ctx, req.Epoch); err != nil {
		return h.errRsp(req, err)
	}
	k := peerKeyOf(a)
	opts := store.WriteOpts{Sync: req.Flags&proto.FlagSync != 0, Epoch: req.Epoch}
	err := h.guarded(ctx, k, func() error { return h.store.Zero(ctx, k, a.Offset, req.PeerSize(), opts) })
	if err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}

// ecWrite serves an erasure-coded mutation forwarded to this node as the
// object's primary.
func (h *handler) ecWrite(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	a := req.Obj()
	red, err := proto.FromPolicy(a.Copies, a.CopyPolicy)
	if err != nil || !red.IsEC() {
		return rsp(req, proto.ResInvalidParms), nil
	}
	size, n := uint32(a.CowOID>>32), uint32(a.CowOID)
	o := gateway.Object{OID: proto.OID(a.OID), Red: red, Size: size}
	err = h.gw.HandleECWrite(ctx, req.Epoch, o, gateway.ECOp(a.ECIndex), a.Offset, n, data, req.Flags&proto.FlagSync != 0)
	if err != nil {
		return h.errRsp(req, err)
	}
	return rsp(req, proto.ResSuccess), nil
}
