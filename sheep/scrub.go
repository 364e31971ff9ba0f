package sheep

import (
	"context"
	"errors"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// scrub verifies every local object's block checksums at a bounded rate,
// pass after pass, and repairs the copies it finds corrupt from other
// nodes. Bit rot is then found and fixed before a read needs the copy.
// The primary holder of a replicated object also compares the copies'
// hashes, and copies left different by a write torn by a crash are given
// the majority's content at the end of the pass (repairMismatches, as
// `dog vdi check --repair` does), so reads stop depending on which copy
// they reach. Likewise the primary of an erasure-coded object (the holder
// of strip 0) has parity left inconsistent by a torn write re-encoded
// (RepairEC, under the lock every mutation of the object takes).
func (d *Daemon) scrub(ctx context.Context, rate uint64, every time.Duration) {
	for {
		if !sleepCtx(ctx, every) {
			return
		}
		objs, err := d.store.List(ctx)
		if err != nil {
			continue
		}
		start := time.Now()
		var done uint64
		var differ []mismatch
		for _, o := range objs {
			if ctx.Err() != nil {
				return
			}
			err := d.store.Verify(ctx, o.Key)
			done += uint64(o.Size)
			switch {
			case errors.Is(err, store.ErrCorrupt):
				d.metrics.ChecksumError()
				d.log.Warn("scrub: corrupt copy", "oid", o.Key.OID, "strip", o.Key.ECIndex, "err", err)
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				rerr := d.repairCopy(rctx, o.Key)
				cancel()
				if rerr != nil {
					d.metrics.ScrubFinding(metrics.ScrubUnrepairable)
					d.log.Error("scrub: cannot repair copy", "oid", o.Key.OID, "err", rerr)
				} else {
					d.metrics.ScrubFinding(metrics.ScrubRepaired)
					d.log.Info("scrub: repaired copy", "oid", o.Key.OID, "strip", o.Key.ECIndex)
				}
			case err != nil && !errors.Is(err, store.ErrNotFound):
				d.log.Warn("scrub: verify failed", "oid", o.Key.OID, "err", err)
			case err == nil && !o.Key.EC:
				if m, n, ok := d.compareCopies(ctx, o.Key); ok {
					d.metrics.ScrubFinding(metrics.ScrubDiffering)
					differ = append(differ, m)
				} else {
					done += uint64(n) * uint64(o.Size) // the others hashed theirs
				}
			case err == nil && o.Key.ECIndex == 0:
				done += d.checkParity(ctx, o.Key)
			}
			// Stay under the rate.
			if rate > 0 {
				due := time.Duration(float64(done) / float64(rate) * float64(time.Second))
				if wait := due - time.Since(start); wait > 0 && !sleepCtx(ctx, wait) {
					return
				}
			}
		}
		d.repairDiffering(ctx, "scrub", differ)
	}
}

// repairDiffering gives the copies a pass found differing the majority's
// content (repairMismatches) and logs what came of it.
func (d *Daemon) repairDiffering(ctx context.Context, pass string, differ []mismatch) {
	if len(differ) == 0 {
		return
	}
	if view := d.views.View(); view != nil {
		rep := &api.CheckReport{}
		d.repairMismatches(ctx, view, differ, rep)
		d.log.Warn(pass+": copies differed", "objects", len(differ), "repaired", rep.Repaired, "details", rep.Details)
	}
}

// convergeRate bounds a converge pass: objects compared per second (two
// small peer requests each, with three copies).
const convergeRate = 1000

// converge compares, every interval, the copies of each replicated object
// this node is the primary holder of, by their checksum fingerprints
// (compareCopies: no data is read unless they differ), and gives copies
// that differ the majority's content. It is the scrub's comparison
// without the scrub's reading of every byte, so it can run often: copies
// left different by a write torn by its writer's crash agree again within
// minutes instead of at the next scrub. A node leaving the cluster (it
// may have died writing) brings the next pass forward, once the writes
// it had in flight have run out (the gateway's peer timeout), and so does
// the end of recovery (objects with a copy missing were skipped).
// Findings count as the scrub's.
func (d *Daemon) converge(ctx context.Context, every time.Duration) {
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.convKick:
			if !sleepCtx(ctx, d.gw.PeerTimeout()+time.Second) {
				return
			}
		}
		if !d.convergePass(ctx) {
			return
		}
		t.Reset(every) // a pause between passes; no stale tick survives Reset
	}
}

// convergePass is one pass of converge; false when ctx ended it.
func (d *Daemon) convergePass(ctx context.Context) bool {
	objs, err := d.store.List(ctx)
	if err != nil {
		return ctx.Err() == nil
	}
	start := time.Now()
	var differ []mismatch
	for i, o := range objs {
		if ctx.Err() != nil {
			return false
		}
		if o.Key.EC {
			if o.Key.ECIndex == 0 {
				d.checkStripsPresent(ctx, o.Key)
			}
			continue
		}
		if m, _, ok := d.compareCopies(ctx, o.Key); ok {
			d.metrics.ScrubFinding(metrics.ScrubDiffering)
			differ = append(differ, m)
		}
		due := time.Duration(i+1) * time.Second / convergeRate
		if wait := due - time.Since(start); wait > 0 && !sleepCtx(ctx, wait) {
			return false
		}
	}
	d.repairDiffering(ctx, "converge", differ)
	return true
}

// checkStripsPresent asks the holders of an erasure-coded object this
// node is the primary of whether they hold their strips (GET_SUMS_HASH:
// no data is read) and has the missing ones rebuilt. A create torn by a
// crash leaves strips missing; reads that need only the data strips never
// notice a missing parity strip, so without this redundancy would stay
// reduced until the scrub.
func (d *Daemon) checkStripsPresent(ctx context.Context, k store.Key) {
	view, ok := d.currentSettled()
	if !ok {
		return
	}
	o, ts, ok := d.primaryEC(view, k)
	if !ok {
		return
	}
	missing := 0
	for i, t := range ts[1:] {
		_, err := d.sumsHashOn(ctx, t, store.StripKey(k.OID, uint8(i+1)))
		switch {
		case errors.Is(err, proto.ResNoObj):
			missing++
		case err != nil:
			return // unreachable: the next pass looks again
		}
	}
	if missing == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.gw.RepairEC(rctx, o); err != nil {
		d.log.Warn("converge: rebuilding missing strips failed", "oid", k.OID, "missing", missing, "err", err)
		return
	}
	d.metrics.ScrubFinding(metrics.ScrubRepaired)
	d.log.Warn("converge: missing strips rebuilt", "oid", k.OID, "missing", missing)
}

// checkParity has the parity of an erasure-coded object this node is the
// primary of checked against its data, and re-encoded if a torn write
// left it inconsistent; it returns the bytes the other holders read.
func (d *Daemon) checkParity(ctx context.Context, k store.Key) uint64 {
	view := d.views.View()
	if view == nil {
		return 0
	}
	o, _, ok := d.primaryEC(view, k)
	if !ok {
		return 0
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.gw.RepairEC(rctx, o); err != nil {
		d.log.Warn("scrub: parity check failed", "oid", k.OID, "err", err)
	}
	return uint64(o.Size) / uint64(o.Red.Data) * uint64(o.Red.Data+o.Red.Parity-1)
}

// primaryEC describes k's object and its strip holders in view when k is
// an erasure-coded object this node is the primary of (holds strip 0):
// the objects whose parity and strips this node's passes look after.
func (d *Daemon) primaryEC(view *gateway.View, k store.Key) (gateway.Object, []placement.Node, bool) {
	s, known, _ := d.shape(k.OID)
	if !known || !s.Red.IsEC() {
		return gateway.Object{}, nil, false
	}
	o := gateway.Object{OID: k.OID, Red: s.Red, Size: s.Size}
	ts := d.targets(view, o)
	if len(ts) == 0 || ts[0].ID != d.node.ID() {
		return gateway.Object{}, nil, false
	}
	return o, ts, true
}

// compareCopies reports, for a replica this node is the primary holder
// of, whether its copies hash differently while all are readable (a
// mismatch for repairMismatches); n is how many other copies were hashed.
// Missing, corrupt or unreachable copies are for recovery, read repair
// and their holders' scrubs.
func (d *Daemon) compareCopies(ctx context.Context, k store.Key) (m mismatch, n int, ok bool) {
	s, known, _ := d.shape(k.OID)
	view := d.views.View()
	if !known || s.Red.IsEC() || view == nil {
		return m, 0, false
	}
	o := gateway.Object{OID: k.OID, Red: s.Red, Size: s.Size}
	ts := d.targets(view, o)
	if len(ts) < 2 || ts[0].ID != d.node.ID() {
		return m, 0, false
	}
	if !d.views.Settled(view.Epoch) {
		// Copies differ while recovery brings outdated ones up to date;
		// the pass at its end compares them (repairMismatches says why).
		return m, 0, false
	}
	switch agree, fallback := sumsAgree(ctx, ts, k, d.sumsHashOn); {
	case agree:
		d.metrics.CopiesCompared(metrics.CompareFingerprint)
		return m, 0, false
	case !fallback:
		// A copy is missing or unreachable: the data compare would fail
		// too, after reading the others.
		return m, 0, false
	}
	d.metrics.CopiesCompared(metrics.CompareData)
	// The copies are hashed one after another, so a write landing
	// between two of them shows as a difference: look twice. Copies that
	// differ for good hash the same both times; if any hash moved, the
	// object is being written, and the next pass looks again.
	var cs, prev []copyState
	votes := map[[20]byte]int{}
	for range 2 {
		prev, cs, votes = cs, nil, map[[20]byte]int{}
		for _, t := range ts {
			h, err := d.hashOn(ctx, t, k)
			if err != nil {
				return m, n, false
			}
			if t.ID != d.node.ID() {
				n++
			}
			cs = append(cs, copyState{node: t, key: k, hash: h})
			votes[h]++
		}
		if len(votes) == 1 {
			return m, n, false
		}
	}
	if !sameHashes(prev, cs) {
		return m, n, false
	}
	// The majority; a tie goes to this copy, so every pass picks the same.
	good, best := cs[0].hash, votes[cs[0].hash]
	for h, c := range votes {
		if c > best {
			good, best = h, c
		}
	}
	return mismatch{o: o, cs: cs, good: good}, n, true
}

// sumsAgree reports whether every copy's checksum fingerprint is the same
// (store.SumsHash): then their content is, and no data need be read.
// fallback says the copies' data are to be compared instead: the
// fingerprints differ, or a node does not know GET_SUMS_HASH (it answers
// an unknown opcode with ResInvalidParms). A copy that is missing or
// unreachable gives neither. fp is sumsHashOn.
func sumsAgree(ctx context.Context, ts []placement.Node, k store.Key,
	fp func(context.Context, placement.Node, store.Key) ([20]byte, error)) (agree, fallback bool) {
	var first [20]byte
	agree = true
	for i, t := range ts {
		h, err := fp(ctx, t, k)
		switch {
		case errors.Is(err, proto.ResInvalidParms):
			return false, true
		case err != nil:
			return false, false
		case i > 0 && h != first:
			agree = false // ask the others still: one may be missing
		}
		if i == 0 {
			first = h
		}
	}
	return agree, !agree
}

// repairCopy rebuilds a corrupt local copy: an erasure-coded strip through
// the object's primary, under the lock its writes take (a strip rebuilt
// beside a concurrent write could miss it); a replica from another copy.
func (d *Daemon) repairCopy(ctx context.Context, k store.Key) error {
	if k.EC {
		if s, ok, _ := d.shape(k.OID); ok && s.Red.IsEC() {
			return d.gw.RepairEC(ctx, gateway.Object{OID: k.OID, Red: s.Red, Size: s.Size})
		}
	}
	return d.rec.RepairLocal(ctx, k)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
