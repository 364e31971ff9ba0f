package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// Codec encodes stripe-aligned data ranges into strip chunks and back
// (package erasure implements it).
type Codec interface {
	// EncodeRange turns len(data) bytes (a multiple of the 512-byte stripe)
	// into data+parity chunks of len(data)/data bytes each.
	EncodeRange(data []byte) ([][]byte, error)
	// DecodeRange rebuilds n data bytes from chunks (nil = missing).
	DecodeRange(chunks [][]byte, n int) ([]byte, error)
}

// Codecs hands out the codec of a shape.
type Codecs interface {
	Codec(data, parity int) (Codec, error)
}

// ECOp is the kind of erasure-coded mutation a primary performs.
type ECOp uint8

const (
	ECWrite  ECOp = 1 // write into existing strips
	ECCreate ECOp = 2 // create all strips (zero-filled) with data
	ECZero   ECOp = 3 // zero a range (no data)
	// ECCreateExcl creates only if the object does not exist yet; if it
	// does (another gateway allocated it), the data is written into it and
	// ErrExists is returned.
	ECCreateExcl ECOp = 4
)

const stripe = proto.ECStripeSize

// The concurrency rule for erasure-coded objects: every mutation of an
// object is performed by its primary (the holder of strip 0 in the current
// epoch) under a per-object lock, so two writers can never interleave the
// read-modify-write of one stripe. Other nodes forward to the primary.
func (g *Gateway) ecRoute(ctx context.Context, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	return g.retry(ctx, opName{op: "ec write", oid: o.OID}, func(ctx context.Context, v *View) error {
		ts, err := g.writeTargets(nil, v, o)
		if err != nil {
			return err
		}
		if ts[0].ID == g.cfg.Self {
			return g.ecMutate(ctx, v, ts, o, op, off, n, data, sync)
		}
		pctx, cancel := g.peerCtx(ctx)
		defer cancel()
		err = g.cfg.Peers.Peer(ts[0]).ECWrite(pctx, v.Epoch, o, op, off, n, data, sync)
		if err == nil {
			g.markDirty(ts...)
		}
		return err
	})
}

// HandleECWrite serves a forwarded erasure-coded mutation on the primary.
// n is the length of the range (len(data) except for ECZero, which has no data).
func (g *Gateway) HandleECWrite(ctx context.Context, epoch uint32, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	if !o.Red.IsEC() {
		return fmt.Errorf("gateway: ec write of replicated object %s: %w", o.OID, proto.ResInvalidParms)
	}
	if op != ECZero && int(n) != len(data) {
		return fmt.Errorf("gateway: ec write of %d bytes with %d bytes of data: %w", n, len(data), proto.ResInvalidParms)
	}
	if err := checkRange(o, off, int(n)); err != nil {
		return err
	}
	v := g.cfg.Views.View()
	switch {
	case v == nil:
		return proto.ResWaitForFormat
	case epoch < v.Epoch:
		return proto.ResOldNodeVer
	case epoch > v.Epoch:
		return proto.ResNewNodeVer
	}
	ts, err := targets(v, o)
	if err != nil {
		return err
	}
	if ts[0].ID != g.cfg.Self {
		return ErrNotPrimary
	}
	return g.ecMutate(ctx, v, ts, o, op, off, n, data, sync)
}

func (g *Gateway) codec(o Object) (Codec, error) {
	if g.cfg.Codecs == nil {
		return nil, fmt.Errorf("gateway: no erasure codecs configured: %w", proto.ResNoSupport)
	}
	return g.cfg.Codecs.Codec(int(o.Red.Data), int(o.Red.Parity))
}

// align widens [off, off+n) to whole stripes inside the object.
func align(o Object, off uint32, n int) (a, b uint32) {
	a = off / stripe * stripe
	b = (off + uint32(n) + stripe - 1) / stripe * stripe
	return a, min(b, o.Size)
}

func (g *Gateway) ecMutate(ctx context.Context, v *View, ts []placement.Node, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	c, err := g.codec(o)
	if err != nil {
		return err
	}
	unlock := g.locks.lock(o.OID)
	defer unlock()
	existed := false
	if op == ECCreateExcl {
		// The primary holds strip 0 and serialises every mutation of the
		// object, so its own strip says whether the object exists.
		op = ECCreate
		if g.cfg.Exists != nil && g.cfg.Exists(ctx, store.StripKey(o.OID, 0)) {
			op, existed = ECWrite, true
		}
	}
	a, b := align(o, off, int(n))
	d := uint32(o.Red.Data)
	if o.Size%stripe != 0 {
		return fmt.Errorf("gateway: ec object size %d is not a multiple of %d: %w", o.Size, stripe, proto.ResInvalidParms)
	}
	buf := make([]byte, b-a)
	aligned := a == off && b == off+n
	if !aligned && op != ECCreate {
		// Read-modify-write of the head and tail stripes.
		if err := g.ecReadAligned(ctx, v, ts, c, o, a, buf); err != nil {
			return err
		}
	}
	if op != ECZero {
		copy(buf[off-a:], data)
	} else {
		clear(buf[off-a : off-a+n])
	}
	chunks, err := c.EncodeRange(buf)
	if err != nil {
		return fmt.Errorf("gateway: encode %s: %w", o.OID, err)
	}
	soff := a / d
	stripSize := o.Size / d
	err = fanout(ts, func(i int, node placement.Node) error {
		pctx, cancel := g.peerCtx(ctx)
		defer cancel()
		p := g.cfg.Peers.Peer(node)
		k := store.StripKey(o.OID, uint8(i))
		if op == ECCreate {
			return p.Create(pctx, v.Epoch, k, stripSize, soff, chunks[i], sync, false)
		}
		return p.Write(pctx, v.Epoch, k, soff, chunks[i], sync)
	})
	if err == nil {
		g.markDirty(ts...)
		if existed {
			return ErrExists
		}
	}
	return err
}

// ecRead reads [off, off+len(p)) of an erasure-coded object.
func (g *Gateway) ecRead(ctx context.Context, o Object, off uint32, p []byte) error {
	c, err := g.codec(o)
	if err != nil {
		return err
	}
	a, b := align(o, off, len(p))
	return g.retry(ctx, opName{op: "ec read", oid: o.OID}, func(ctx context.Context, v *View) error {
		ts, err := targets(v, o)
		if err != nil {
			return err
		}
		buf := make([]byte, b-a)
		if err := g.ecReadAligned(ctx, v, ts, c, o, a, buf); err != nil {
			return err
		}
		copy(p, buf[off-a:])
		return nil
	})
}

// ecReadAligned fills buf (whole stripes from a) by reading the data strips,
// and parity strips in place of any that fail.
func (g *Gateway) ecReadAligned(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, a uint32, buf []byte) error {
	d, p := int(o.Red.Data), int(o.Red.Parity)
	clen := len(buf) / d
	soff := a / uint32(d)
	chunks := make([][]byte, d+p)
	errs := make([]error, d+p)
	read := func(idx []int) {
		var wg sync.WaitGroup
		for _, i := range idx {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pctx, cancel := g.peerCtx(ctx)
				defer cancel()
				ch := make([]byte, clen)
				err := g.cfg.Peers.Peer(ts[i]).Read(pctx, v.Epoch, store.StripKey(o.OID, uint8(i)), soff, ch)
				if err == nil {
					chunks[i] = ch
				}
				errs[i] = err
			}()
		}
		wg.Wait()
	}
	first := make([]int, d)
	for i := range first {
		first[i] = i
	}
	read(first)
	have := 0
	for i := 0; i < d; i++ {
		if chunks[i] != nil {
			have++
		}
	}
	if have < d {
		extra := make([]int, 0, p)
		for i := d; i < d+p; i++ {
			extra = append(extra, i)
		}
		read(extra)
		for i := d; i < d+p; i++ {
			if chunks[i] != nil {
				have++
			}
		}
	}
	if have < d {
		allNoObj, var0 := true, error(nil)
		for _, err := range errs {
			if err != nil && !errors.Is(err, proto.ResNoObj) {
				allNoObj = false
				if var0 == nil || (retryable(var0) && !retryable(err)) {
					var0 = err
				}
			}
		}
		if allNoObj {
			return fmt.Errorf("gateway: read %s: %w", o.OID, proto.ResNoObj)
		}
		return fmt.Errorf("gateway: %s: only %d of %d strips readable: %w", o.OID, have, d, var0)
	}
	out, err := c.DecodeRange(chunks, len(buf))
	if err != nil {
		return fmt.Errorf("gateway: decode %s: %w", o.OID, err)
	}
	copy(buf, out)
	return nil
}
