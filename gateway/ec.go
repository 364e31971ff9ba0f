package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
	// DecodeRangeInto rebuilds len(dst) data bytes from chunks (nil =
	// missing), writing dst only on success.
	DecodeRangeInto(dst []byte, chunks [][]byte) error
	// Reconstruct fills the nil chunks (data and parity) from the others.
	Reconstruct(chunks [][]byte) error
	// Verify reports whether the parity chunks match the data chunks.
	Verify(chunks [][]byte) (bool, error)
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
	// ECRepair rewrites strips found missing or corrupt from the others
	// (no range, no data).
	ECRepair ECOp = 5
)

const stripe = proto.ECStripeSize

// ErrTooFewStrips: fewer than the data count of an object's strips can be
// read, though some exist; it is never reported as a hole (zeros).
var ErrTooFewStrips = proto.NewError(proto.ResEIO, "gateway: too few strips readable")

// The concurrency rule for erasure-coded objects: every mutation of an
// object (writes, creates, zeroing, repairs) is performed by its primary
// — the holder of strip 0 in the current epoch — under a per-object lock,
// so two writers can never interleave the read-modify-write of one stripe.
// Other nodes forward to the primary. Every strip operation carries the
// primary's epoch and peers refuse other epochs, so once an epoch change
// moves the primary elsewhere the old one can no longer write: its
// attempt fails, and the retry goes to the new primary.
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
// n is the length of the range (len(data) except for ECZero and ECRepair,
// which have no data).
func (g *Gateway) HandleECWrite(ctx context.Context, epoch uint32, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	if !o.Red.IsEC() {
		return fmt.Errorf("gateway: ec write of replicated object %s: %w", o.OID, proto.ResInvalidParms)
	}
	switch op {
	case ECWrite, ECCreate, ECCreateExcl:
		if int(n) != len(data) {
			return fmt.Errorf("gateway: ec write of %d bytes with %d bytes of data: %w", n, len(data), proto.ResInvalidParms)
		}
	case ECZero:
	case ECRepair:
		if n != 0 || len(data) != 0 {
			return fmt.Errorf("gateway: ec repair with a range: %w", proto.ResInvalidParms)
		}
	default:
		return fmt.Errorf("gateway: unknown ec operation %d: %w", op, proto.ResInvalidParms)
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

// damaged reports a strip that is missing or fails its checksums where it
// should be: it can be rebuilt from the others, and retrying will not help.
func damaged(err error) bool {
	return errors.Is(err, proto.ResNoObj) || errors.Is(err, store.ErrCorrupt) || proto.ResultOf(err) == proto.ResEIO
}

func (g *Gateway) ecMutate(ctx context.Context, v *View, ts []placement.Node, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	if o.Size%stripe != 0 {
		return fmt.Errorf("gateway: ec object size %d is not a multiple of %d: %w", o.Size, stripe, proto.ResInvalidParms)
	}
	c, err := g.codec(o)
	if err != nil {
		return err
	}
	unlock := g.locks.lock(o.OID)
	defer unlock()
	if op == ECRepair {
		return g.ecRepair(ctx, v, ts, c, o, sync)
	}
	if op != ECCreateExcl && (g.cfg.Settled == nil || !g.cfg.Settled(v.Epoch)) {
		// (An exclusive create settles every strip in ecExists.)
		if err := g.ecSettle(ctx, v, ts, o, op != ECCreate); err != nil {
			return err
		}
	}
	existed := false
	if op == ECCreateExcl {
		ex, err := g.ecExists(ctx, v, ts, o)
		if err != nil {
			return err
		}
		op = ECCreate
		if ex {
			op, existed = ECWrite, true
		}
	}
	a, b := align(o, off, int(n))
	end := off + n
	if a == off && b == end {
		if op == ECZero {
			// Whole stripes of zeros encode to zero parity: every strip
			// punches its part of the range instead of writing zeros.
			return g.ecWriteStrips(ctx, v, ts, c, o, op, a, nil, n, existed, sync)
		}
		// Whole stripes: encode the caller's data as it is.
		return g.ecWriteStrips(ctx, v, ts, c, o, op, a, data, n, existed, sync)
	}
	buf := make([]byte, b-a)
	if op != ECCreate {
		// Read-modify-write: only the partial head and tail stripes hold
		// bytes this write must keep.
		head := off != a
		if head {
			if _, err := g.ecReadAligned(ctx, v, ts, c, o, a, buf[:stripe]); err != nil {
				return err
			}
		}
		if end != b && !(head && b-a == stripe) {
			if _, err := g.ecReadAligned(ctx, v, ts, c, o, b-stripe, buf[b-a-stripe:]); err != nil {
				return err
			}
		}
	}
	if op != ECZero {
		copy(buf[off-a:], data)
	} else {
		clear(buf[off-a : end-a])
	}
	return g.ecWriteStrips(ctx, v, ts, c, o, op, a, buf, b-a, existed, sync)
}

// ecSettle has every strip holder finish recovering its strip before any
// strip changes. A holder rebuilds a strip it lacks from siblings of one
// epoch; were the others already taking this mutation, it would find the
// siblings split between the old epoch and the new one, too few of either
// to decode, and the mutation would fail halfway with the stripe
// unrecoverable. Settling first, under the object's lock, rebuilds from
// siblings nobody is changing.
//
// With keepDecodable, a strip that cannot be settled now (its holder cannot
// rebuild it yet) is tolerated only while at least Data strips are in
// place: the mutation then rebuilds it from them afterwards. With fewer,
// writing the strips that are there would replace the only decodable
// version with one too few to decode, so nothing is written and the caller
// retries once recovery has got further. The caller holds the object's
// lock.
func (g *Gateway) ecSettle(ctx context.Context, v *View, ts []placement.Node, o Object, keepDecodable bool) error {
	errs := g.probeStrips(ctx, v, ts, o)
	present, noObj := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			present++
		case errors.Is(err, proto.ResNoObj):
			noObj++
		case retryable(err) || !damaged(err):
			return err
		}
		// Otherwise missing or damaged: the mutation's to rebuild.
	}
	if keepDecodable && present < int(o.Red.Data) && noObj < len(ts) {
		return fmt.Errorf("gateway: %s: %d of %d strips settled, %d needed before a write: %w",
			o.OID, present, len(ts), o.Red.Data, proto.ResNodeInRecovery)
	}
	return nil
}

// probeStrips asks every strip holder about its strip with a zero-length
// read, which moves no data but goes through the holder's recovery guard
// (so a strip not recovered to its holder yet is recovered first), and
// returns each holder's answer.
func (g *Gateway) probeStrips(ctx context.Context, v *View, ts []placement.Node, o Object) []error {
	errs := make([]error, len(ts))
	fanout(ts, func(i int, node placement.Node) error {
		pctx, cancel := g.peerCtx(ctx)
		defer cancel()
		errs[i] = g.cfg.Peers.Peer(node).Read(pctx, v.Epoch, store.StripKey(o.OID, uint8(i)), 0, nil)
		return errs[i]
	})
	return errs
}

// ecWriteStrips encodes buf, the n bytes of whole stripes from a, and
// writes (or with ECCreate creates) every strip; with a nil buf (ECZero)
// every strip zeroes its part instead. Damaged strips are rebuilt whole.
// The caller holds the object's lock.
func (g *Gateway) ecWriteStrips(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, op ECOp, a uint32, buf []byte, n uint32, existed, sync bool) error {
	zero := op == ECZero && buf == nil
	var chunks [][]byte
	if !zero {
		var err error
		if chunks, err = c.EncodeRange(buf); err != nil {
			return fmt.Errorf("gateway: encode %s: %w", o.OID, err)
		}
	}
	d := uint32(o.Red.Data)
	soff := a / d
	stripSize := o.Size / d
	errs := make([]error, len(ts))
	lctx, cancel := g.legsCtx(ctx)
	defer cancel()
	fanout(ts, func(i int, node placement.Node) error {
		p := g.cfg.Peers.Peer(node)
		k := store.StripKey(o.OID, uint8(i))
		switch {
		case zero:
			errs[i] = p.Zero(lctx, v.Epoch, k, soff, n/d, sync)
		case op == ECCreate:
			errs[i] = p.Create(lctx, v.Epoch, k, stripSize, soff, chunks[i], sync, false)
		default:
			errs[i] = p.Write(lctx, v.Epoch, k, soff, chunks[i], nil, sync)
		}
		return errs[i]
	})
	var bad []int
	var first error
	for i, err := range errs {
		switch {
		case err == nil:
		case !retryable(err) && damaged(err):
			bad = append(bad, i)
		case first == nil || (retryable(first) && !retryable(err)):
			first = err
		}
	}
	if first != nil {
		// An unreachable strip or a stale epoch: the whole write is
		// retried (it is idempotent: the data strips outside the range
		// keep their old bytes whichever attempts landed).
		return first
	}
	if len(bad) == len(ts) && (op == ECWrite || op == ECZero) && allNoObj(errs) {
		// The object is gone (removed meanwhile): a writer allocates.
		return fmt.Errorf("gateway: ec write %s: %w", o.OID, proto.ResNoObj)
	}
	if len(bad) > 0 {
		// A strip missing or corrupt where it should be: the others now
		// hold the new data; rebuild it whole from them.
		if err := g.ecRebuild(ctx, v, ts, c, o, bad, sync); err != nil {
			return fmt.Errorf("gateway: ec write %s: strips %v damaged: %w", o.OID, bad, err)
		}
	}
	g.markDirty(ts...)
	if existed {
		return ErrExists
	}
	return nil
}

func allNoObj(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, proto.ResNoObj) {
			return false
		}
	}
	return true
}

// ecExists reports whether any strip of o exists in view v. Each strip's
// holder answers through its recovery guard, so a strip not recovered to
// its new holder yet is found; a holder that cannot answer makes the
// caller retry rather than guess, because creating over an existing
// object would replace its data with zeros.
func (g *Gateway) ecExists(ctx context.Context, v *View, ts []placement.Node, o Object) (bool, error) {
	errs := g.probeStrips(ctx, v, ts, o)
	var first error
	for _, err := range errs {
		switch {
		case err == nil, !retryable(err) && damaged(err) && !errors.Is(err, proto.ResNoObj):
			return true, nil // present (if corrupt, still present)
		case errors.Is(err, proto.ResNoObj):
		case first == nil:
			first = err
		}
	}
	if first != nil {
		return false, fmt.Errorf("gateway: cannot tell whether %s exists: %w", o.OID, first)
	}
	return false, nil
}

// ecRead reads [off, off+len(p)) of an erasure-coded object.
func (g *Gateway) ecRead(ctx context.Context, o Object, off uint32, p []byte) error {
	c, err := g.codec(o)
	if err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	a, b := align(o, off, len(p))
	return g.retry(ctx, opName{op: "ec read", oid: o.OID}, func(ctx context.Context, v *View) error {
		ts, err := targets(v, o)
		if err != nil {
			return err
		}
		// Whole stripes (every iSCSI read: sectors are stripes) decode
		// straight into p; it is written only on success.
		direct := a == off && int(b-a) == len(p)
		buf := p
		if !direct {
			buf = make([]byte, b-a)
		}
		bad, err := g.ecReadAligned(ctx, v, ts, c, o, a, buf)
		if err != nil {
			return err
		}
		if len(bad) > 0 {
			g.ecRepairLater(o)
		}
		if !direct {
			copy(p, buf[off-a:])
		}
		return nil
	})
}

// ecRepairLater asks the primary, in the background, to rebuild strips a
// read found missing or corrupt; one repair per object at a time.
func (g *Gateway) ecRepairLater(o Object) {
	if _, busy := g.repairing.LoadOrStore(o.OID, true); busy {
		return
	}
	go func() {
		defer g.repairing.Delete(o.OID)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.ecRoute(ctx, o, ECRepair, 0, 0, nil, true); err != nil {
			g.log.Warn("ec read repair failed", "oid", o.OID, "err", err)
		} else {
			g.log.Info("ec read repair", "oid", o.OID)
			g.cfg.Recorder.ReadRepair()
		}
	}()
}

// readStrips reads [soff, soff+clen) of the strips idx into chunks (nil on
// failure) and their errors into errs.
func (g *Gateway) readStrips(ctx context.Context, v *View, ts []placement.Node, o Object, idx []int, soff uint32, clen int, chunks [][]byte, errs []error) {
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

// ecReadAligned fills buf (whole stripes from a) by reading the data
// strips, and parity strips in place of any that fail. It returns the
// strips found missing or corrupt (for repair). The object reads as a hole
// (ResNoObj) only when no strip of it exists anywhere.
func (g *Gateway) ecReadAligned(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, a uint32, buf []byte) (bad []int, err error) {
	d, p := int(o.Red.Data), int(o.Red.Parity)
	clen := len(buf) / d
	soff := a / uint32(d)
	chunks := make([][]byte, d+p)
	errs := make([]error, d+p)
	idx := make([]int, d, d+p)
	for i := range idx {
		idx[i] = i
	}
	g.readStrips(ctx, v, ts, o, idx, soff, clen, chunks, errs)
	have := 0
	for _, ch := range chunks {
		if ch != nil {
			have++
		}
	}
	if have < d {
		idx = idx[:0]
		for i := d; i < d+p; i++ {
			idx = append(idx, i)
		}
		g.readStrips(ctx, v, ts, o, idx, soff, clen, chunks, errs)
		for _, ch := range chunks[d:] {
			if ch != nil {
				have++
			}
		}
	}
	noObj := 0
	var first error
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, proto.ResNoObj):
			noObj++
			bad = append(bad, i)
		case !retryable(err) && damaged(err):
			bad = append(bad, i)
			if first == nil || retryable(first) {
				first = err
			}
		case first == nil || (retryable(first) && !retryable(err)):
			first = err
		}
	}
	if have < d {
		if noObj == d+p {
			return nil, fmt.Errorf("gateway: read %s: %w", o.OID, proto.ResNoObj)
		}
		if first != nil && retryable(first) {
			// A strip we could not reach may be the one we need: retry.
			return nil, fmt.Errorf("gateway: %s: only %d of %d strips readable: %w", o.OID, have, d, first)
		}
		if first == nil {
			return nil, fmt.Errorf("gateway: %s: only %d of %d strips readable, %d missing: %w", o.OID, have, d, noObj, ErrTooFewStrips)
		}
		return nil, fmt.Errorf("gateway: %s: only %d of %d strips readable, %d missing, %d damaged (%v): %w",
			o.OID, have, d, noObj, len(bad)-noObj, first, ErrTooFewStrips)
	}
	if err := c.DecodeRangeInto(buf, chunks); err != nil {
		return nil, fmt.Errorf("gateway: decode %s: %w", o.OID, err)
	}
	return bad, nil
}

// readWholeStrips reads every strip of o completely, returning the chunks
// (nil where unreadable) and the errors.
func (g *Gateway) readWholeStrips(ctx context.Context, v *View, ts []placement.Node, o Object, skip []int) ([][]byte, []error) {
	n := len(ts)
	chunks := make([][]byte, n)
	errs := make([]error, n)
	idx := make([]int, 0, n)
	for i := range n {
		if !contains(skip, i) {
			idx = append(idx, i)
		}
	}
	g.readStrips(ctx, v, ts, o, idx, 0, int(o.Size/uint32(o.Red.Data)), chunks, errs)
	return chunks, errs
}

func contains(s []int, x int) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// ecRebuild recreates the strips bad whole from the other strips. The
// caller holds the object's lock.
func (g *Gateway) ecRebuild(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, bad []int, sync bool) error {
	chunks, errs := g.readWholeStrips(ctx, v, ts, o, bad)
	have := 0
	for i, ch := range chunks {
		if ch != nil {
			have++
		} else if !contains(bad, i) && retryable(errs[i]) {
			return errs[i]
		}
	}
	if have < int(o.Red.Data) {
		return fmt.Errorf("gateway: rebuild %s: %d of %d strips readable: %w", o.OID, have, o.Red.Data, ErrTooFewStrips)
	}
	return g.ecInstall(ctx, v, ts, c, o, chunks, sync)
}

// ecInstall reconstructs the nil chunks and creates those strips whole.
func (g *Gateway) ecInstall(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, chunks [][]byte, durable bool) error {
	var missing []int
	for i, ch := range chunks {
		if ch == nil {
			missing = append(missing, i)
		}
	}
	if err := c.Reconstruct(chunks); err != nil {
		return fmt.Errorf("gateway: rebuild %s: %w", o.OID, err)
	}
	stripSize := o.Size / uint32(o.Red.Data)
	var wg sync.WaitGroup
	errs := make([]error, len(missing))
	for j, i := range missing {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := g.peerCtx(ctx)
			defer cancel()
			errs[j] = g.cfg.Peers.Peer(ts[i]).Create(pctx, v.Epoch, store.StripKey(o.OID, uint8(i)), stripSize, 0, chunks[i], durable, false)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	g.markDirty(ts...)
	return nil
}

// RepairEC has the object's primary rebuild every strip of o that is
// missing or corrupt and re-encode parity that disagrees with the data,
// under the lock its writes take.
func (g *Gateway) RepairEC(ctx context.Context, o Object) error {
	if !o.Red.IsEC() {
		return fmt.Errorf("gateway: ec repair of replicated object %s: %w", o.OID, proto.ResInvalidParms)
	}
	return g.ecRoute(ctx, o, ECRepair, 0, 0, nil, true)
}

// ecRepair rebuilds every strip of o that is missing or corrupt while
// enough others are readable, and parity that disagrees with the data.
// Nothing is done for an object that exists nowhere. The caller holds the
// object's lock.
func (g *Gateway) ecRepair(ctx context.Context, v *View, ts []placement.Node, c Codec, o Object, sync bool) error {
	chunks, errs := g.readWholeStrips(ctx, v, ts, o, nil)
	have, noObj := 0, 0
	for i, ch := range chunks {
		switch {
		case ch != nil:
			have++
		case errors.Is(errs[i], proto.ResNoObj):
			noObj++
		case retryable(errs[i]):
			return errs[i]
		}
	}
	switch {
	case noObj == len(ts):
		return nil
	case have == len(ts):
		// Every strip readable: parity left behind by an interrupted
		// read-modify-write is re-encoded from the data strips.
		if ok, err := c.Verify(chunks); err != nil || ok {
			return err
		}
		g.log.Warn("ec repair: parity inconsistent with data, re-encoding", "oid", o.OID)
		for i := int(o.Red.Data); i < len(chunks); i++ {
			chunks[i] = nil
		}
	case have < int(o.Red.Data):
		return fmt.Errorf("gateway: repair %s: %d of %d strips readable: %w", o.OID, have, o.Red.Data, ErrTooFewStrips)
	default:
		var bad []int
		for i, ch := range chunks {
			if ch == nil {
				bad = append(bad, i)
			}
		}
		g.log.Info("ec repair: rebuilding strips", "oid", o.OID, "strips", bad)
	}
	return g.ecInstall(ctx, v, ts, c, o, chunks, sync)
}
