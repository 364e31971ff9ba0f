package sheep

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// peers gives the gateway the local store for this node and a pooled
// native-protocol connection for every other node.
type peers struct {
	self  string
	local *localPeer
	pool  *client.Pool
	pipes *sendfile.Pipes // for relaying remote reads (remotePeer.ReadPiped)
}

func (p *peers) Peer(n placement.Node) gateway.Peer {
	if n.ID == p.self {
		return p.local
	}
	return &remotePeer{pool: p.pool, pipes: p.pipes, addr: n.Addr.String()}
}

// localPeer runs peer operations on this node's store directly (the epoch
// is the gateway's own, so there is nothing to check), falling back to
// on-demand recovery for objects not here yet.
type localPeer struct {
	h *handler
}

func (l *localPeer) opts(epoch uint32, sync bool) store.WriteOpts {
	return store.WriteOpts{Sync: sync, Epoch: epoch}
}

func (l *localPeer) Create(ctx context.Context, epoch uint32, k store.Key, size, off uint32, data []byte, sync, excl bool) error {
	o := l.opts(epoch, sync)
	o.Exclusive = excl
	return l.h.guarded(ctx, k, func() error { return l.h.store.Create(ctx, k, size, off, data, o) })
}

func (l *localPeer) Write(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sums []uint32, sync bool) error {
	o := l.opts(epoch, sync)
	o.Sums = sums
	return l.h.guarded(ctx, k, func() error { return l.h.store.Write(ctx, k, off, data, o) })
}

func (l *localPeer) Read(ctx context.Context, epoch uint32, k store.Key, off uint32, p []byte) error {
	return l.h.guarded(ctx, k, func() error { return l.h.store.Read(ctx, k, off, p) })
}

// ReadPinned implements gateway.PinnedPeer when the store can lend.
func (l *localPeer) ReadPinned(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error) {
	pr, ok := l.h.store.(store.PinnedReader)
	if !ok {
		return nil, gateway.ErrNotLocal
	}
	var raw *store.Raw
	err := l.h.guarded(ctx, k, func() (err error) {
		raw, err = pr.ReadPinned(ctx, k, off, n)
		return err
	})
	return raw, err
}

func (l *localPeer) Remove(ctx context.Context, epoch uint32, k store.Key) error {
	return l.h.guarded(ctx, k, func() error { return l.h.store.Remove(ctx, k) })
}

func (l *localPeer) Zero(ctx context.Context, epoch uint32, k store.Key, off, n uint32, sync bool) error {
	return l.h.guarded(ctx, k, func() error { return l.h.store.Zero(ctx, k, off, n, l.opts(epoch, sync)) })
}

func (l *localPeer) Heal(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sync bool) error {
	hl, ok := l.h.store.(store.Healer)
	if !ok {
		return fmt.Errorf("heal of %s: this store cannot heal: %w", k.OID, proto.ResNoSupport)
	}
	return l.h.guarded(ctx, k, func() error {
		_, err := hl.Heal(ctx, k, off, data, l.opts(epoch, sync))
		return err
	})
}

func (l *localPeer) replaceIf(ctx context.Context, epoch uint32, k store.Key, want [20]byte, data []byte, sync bool) error {
	rp, ok := l.h.store.(store.Replacer)
	if !ok {
		return fmt.Errorf("replace of %s: this store cannot: %w", k.OID, proto.ResNoSupport)
	}
	return l.h.guarded(ctx, k, func() error { return rp.ReplaceIf(ctx, k, want, data, l.opts(epoch, sync)) })
}

func (l *localPeer) ECWrite(ctx context.Context, epoch uint32, o gateway.Object, op gateway.ECOp, off, n uint32, data []byte, sync bool) error {
	return l.h.gw.HandleECWrite(ctx, epoch, o, op, off, n, data, sync)
}

func (l *localPeer) Sync(ctx context.Context) error { return l.h.store.Sync(ctx) }

// remotePeer sends peer opcodes to another node.
type remotePeer struct {
	pool  *client.Pool
	pipes *sendfile.Pipes
	addr  string
}

func peerReq(op proto.Opcode, epoch uint32, k store.Key, off uint32, sync bool) proto.Request {
	req := proto.Request{Opcode: op, Epoch: epoch}
	a := proto.ObjArgs{OID: uint64(k.OID), Offset: off}
	if k.EC {
		// Any non-zero policy marks a strip key; the strip index rides along.
		a.CopyPolicy, a.ECIndex = 0xff, k.ECIndex
	}
	req.SetObj(a)
	if sync {
		req.Flags |= proto.FlagSync
	}
	return req
}

// conn is a pooled connection to the peer; failing to get one is a
// network error (the gateway retries or picks another copy).
func (r *remotePeer) conn(ctx context.Context) (*client.Conn, error) {
	c, err := r.pool.Get(ctx, r.addr)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %v: %w", r.addr, err, proto.ResNetworkError)
	}
	return c, nil
}

func (r *remotePeer) do(ctx context.Context, req proto.Request, w, rbuf []byte) error {
	return r.doVec(ctx, req, w, nil, rbuf)
}

// doVec sends w then tail as one payload.
func (r *remotePeer) doVec(ctx context.Context, req proto.Request, w, tail, rbuf []byte) error {
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	if w != nil {
		req.Flags |= proto.FlagWrite
	}
	_, _, err = c.DoTail(ctx, req, w, tail, rbuf)
	return err
}

func (r *remotePeer) Create(ctx context.Context, epoch uint32, k store.Key, size, off uint32, data []byte, sync, excl bool) error {
	req := peerReq(proto.OpCreateAndWritePeer, epoch, k, off, sync)
	if excl {
		req.Flags |= proto.FlagExclusive
	}
	req.SetPeerSize(size)
	if data == nil {
		data = []byte{}
	}
	return r.do(ctx, req, data, nil)
}

// Write sends the block checksums along when it has them for whole
// blocks, so the peer stores them instead of computing its own.
func (r *remotePeer) Write(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sums []uint32, sync bool) error {
	if n := len(data) / store.SumBlock; n > 0 && len(sums) == n && len(data) == n*store.SumBlock && off%store.SumBlock == 0 {
		err := r.doVec(ctx, peerReq(proto.OpWritePeerSums, epoch, k, off, sync), data, appendSums(make([]byte, 0, 4*len(sums)), sums), nil)
		if proto.ResultOf(err) != proto.ResInvalidParms {
			return err
		}
		// A node from before WRITE_PEER_SUMS answers it as an unknown
		// opcode, having written nothing: send the data alone, so a
		// cluster keeps writing through a rolling upgrade. Any other
		// invalid request fails again below, as it should.
	}
	return r.do(ctx, peerReq(proto.OpWritePeer, epoch, k, off, sync), data, nil)
}

func (r *remotePeer) Heal(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sync bool) error {
	return r.do(ctx, peerReq(proto.OpHealPeer, epoch, k, off, sync), data, nil)
}

// replacer is a peer that replaces its copy with data if it still hashes
// to want (store.Replacer; store.ErrChanged, as ResAgain, if not): only
// check and the scrub use it, so it is not a gateway.Peer operation.
type replacer interface {
	replaceIf(ctx context.Context, epoch uint32, k store.Key, want [20]byte, data []byte, sync bool) error
}

var _, _ replacer = (*localPeer)(nil), (*remotePeer)(nil)

func (r *remotePeer) replaceIf(ctx context.Context, epoch uint32, k store.Key, want [20]byte, data []byte, sync bool) error {
	return r.doVec(ctx, peerReq(proto.OpReplacePeer, epoch, k, 0, sync), want[:], data, nil)
}

// appendSums appends sums to dst as little-endian CRC32C, the wire form
// of WRITE_PEER_SUMS and READ_PEER_SUMS.
func appendSums(dst []byte, sums []uint32) []byte {
	for _, s := range sums {
		dst = binary.LittleEndian.AppendUint32(dst, s)
	}
	return dst
}

// Read asks for whole blocks with their stored checksums, so the peer
// sends them from its file without reading them and this node checks them
// while they are in its cache. Anything READ_PEER_SUMS cannot serve (a
// range that is not whole blocks, a node from before it, a block that
// fails the check) is read with READ_PEER, which verifies on the peer and
// tells rot from a torn write's remnant.
func (r *remotePeer) Read(ctx context.Context, epoch uint32, k store.Key, off uint32, p []byte) error {
	if len(p) > 0 && len(p)%store.SumBlock == 0 && off%store.SumBlock == 0 {
		err := r.readSums(ctx, epoch, k, off, p)
		if err == nil || (!errors.Is(err, errSumMismatch) && proto.ResultOf(err) != proto.ResInvalidParms) {
			return err
		}
	}
	return r.readPlain(ctx, epoch, k, off, p)
}

// errSumMismatch: a block from READ_PEER_SUMS does not match its checksum.
var errSumMismatch = errors.New("block does not match its stored checksum")

func (r *remotePeer) readSums(ctx context.Context, epoch uint32, k store.Key, off uint32, p []byte) error {
	nb := len(p) / store.SumBlock
	req := peerReq(proto.OpReadPeerSums, epoch, k, off, false)
	req.DataLength = uint32(len(p) + 4*nb)
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	head := make([]byte, 4*nb)
	rsp, got, err := c.DoHead(ctx, req, head, p)
	if err != nil {
		return err
	}
	if rsp.DataLength != req.DataLength || len(got) != len(p) {
		return fmt.Errorf("peer %s: READ_PEER_SUMS answered %d bytes of %d: %w", r.addr, rsp.DataLength, req.DataLength, proto.ResEIO)
	}
	if &got[0] != &p[0] {
		copy(p, got)
	}
	for i := range nb {
		if crc32c.Checksum(p[i*store.SumBlock:(i+1)*store.SumBlock]) != binary.LittleEndian.Uint32(head[4*i:]) {
			return fmt.Errorf("peer %s: %s block at %d: %w", r.addr, k, int(off)+i*store.SumBlock, errSumMismatch)
		}
	}
	return nil
}

// ReadPiped implements gateway.PipedPeer: READ_PEER (the peer verifies
// the range and sends it from its file) with the answer staged in pipes
// from the pool, for a front end to relay without copying. A range over
// sendfile.PipeSize is asked for in parts at once, each on a connection
// of the pool, as the volume layer splits a copying read: one 1 MiB
// answer alone on one connection took longer than its halves side by
// side (3 nodes, 1 copy, seq-read 1M at QD1: 0.62 of tgt against 0.80
// copying). The peer's copy is the only one tried: on any error the
// caller reads with Read.
func (r *remotePeer) ReadPiped(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error) {
	parts := max(1, int((n+sendfile.PipeSize-1)/sendfile.PipeSize))
	ps := make([]*sendfile.Pipe, parts)
	for i := range ps {
		if ps[i] = r.pipes.Get(); ps[i] == nil {
			for _, p := range ps[:i] {
				p.Release()
			}
			return nil, fmt.Errorf("peer %s: no pipe to relay %s: %w", r.addr, k, gateway.ErrNotLocal)
		}
	}
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for i, p := range ps {
		o := off + uint32(i)*sendfile.PipeSize
		wg.Go(func() { errs[i] = r.readPipe(ctx, epoch, k, o, min(sendfile.PipeSize, off+n-o), p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, p := range ps {
			p.Release()
		}
		return nil, err
	}
	c := sendfile.NewChain(ps...)
	return store.NewRaw(c, 0, int(n), c.Release), nil
}

// readPipe stages [off, off+n) of k's copy in p.
func (r *remotePeer) readPipe(ctx context.Context, epoch uint32, k store.Key, off, n uint32, p *sendfile.Pipe) error {
	req := peerReq(proto.OpReadPeer, epoch, k, off, false)
	req.DataLength = n
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	if _, err := c.DoPipe(ctx, req, p); err != nil {
		return err
	}
	if p.Len() != int(n) {
		return fmt.Errorf("peer %s: short read %d of %d: %w", r.addr, p.Len(), n, proto.ResEIO)
	}
	return nil
}

func (r *remotePeer) readPlain(ctx context.Context, epoch uint32, k store.Key, off uint32, p []byte) error {
	req := peerReq(proto.OpReadPeer, epoch, k, off, false)
	req.DataLength = uint32(len(p))
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	_, got, err := c.Do(ctx, req, nil, p)
	if err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	if len(got) != len(p) {
		return fmt.Errorf("peer %s: short read %d of %d: %w", r.addr, len(got), len(p), proto.ResEIO)
	}
	if &got[0] != &p[0] {
		copy(p, got)
	}
	return nil
}

func (r *remotePeer) Remove(ctx context.Context, epoch uint32, k store.Key) error {
	return r.do(ctx, peerReq(proto.OpRemovePeer, epoch, k, 0, false), nil, nil)
}

func (r *remotePeer) Zero(ctx context.Context, epoch uint32, k store.Key, off, n uint32, sync bool) error {
	req := peerReq(proto.OpZeroPeer, epoch, k, off, sync)
	req.SetPeerSize(n)
	return r.do(ctx, req, nil, nil)
}

func (r *remotePeer) ECWrite(ctx context.Context, epoch uint32, o gateway.Object, op gateway.ECOp, off, n uint32, data []byte, sync bool) error {
	req := proto.Request{Opcode: proto.OpECWrite, Epoch: epoch}
	req.SetObj(proto.ObjArgs{
		OID: uint64(o.OID), Copies: o.Red.NrCopies(), CopyPolicy: o.Red.Policy(), ECIndex: uint8(op),
		Offset: off, CowOID: uint64(o.Size)<<32 | uint64(n),
	})
	if sync {
		req.Flags |= proto.FlagSync
	}
	var w []byte
	if op != gateway.ECZero {
		w = data
		if w == nil {
			w = []byte{}
		}
	}
	return r.do(ctx, req, w, nil)
}

func (r *remotePeer) Sync(ctx context.Context) error {
	return r.do(ctx, proto.Request{Opcode: proto.OpSyncPeer}, nil, nil)
}

// forwarder sends metadata commands to the leader over OpMeta.
type forwarder struct {
	pool *client.Pool
}

func (f *forwarder) Forward(ctx context.Context, addr netip.AddrPort, c *cluster.Command) (*cluster.Result, error) {
	conn, err := f.pool.Get(ctx, addr.String())
	if err != nil {
		return nil, fmt.Errorf("leader %s: %v: %w", addr, err, proto.ResNetworkError)
	}
	var r cluster.Result
	if err := conn.Meta(ctx, proto.OpMeta, api.MetaRequest{Forward: c}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

var _ = json.Marshal
