package sheep

import (
	"context"
	"crypto/sha1"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// copyState is what one target holds of one key.
type copyState struct {
	node placement.Node
	key  store.Key
	hash [20]byte
	err  error // nil: a readable copy with hash
}

// hashOn returns the SHA-1 of key's copy on node (checksums verified there).
func (d *Daemon) hashOn(ctx context.Context, n placement.Node, k store.Key) ([20]byte, error) {
	return d.digestOn(ctx, n, k, proto.OpGetHash, d.store.Hash)
}

// sumsHashOn returns the fingerprint of key's copy on node read from its
// block checksums (store.SumsHash; GET_SUMS_HASH).
func (d *Daemon) sumsHashOn(ctx context.Context, n placement.Node, k store.Key) ([20]byte, error) {
	return d.digestOn(ctx, n, k, proto.OpGetSumsHash, d.store.SumsHash)
}

// digestOn asks node for a digest of key's copy: local from this store,
// else with op, which answers in GET_HASH's response field. Both go
// through the holder's recovery guard, as sheepdog's GET_HASH does: a copy
// recovery has yet to bring up to date is recovered first, so during
// recovery a digest is of what the copy holds in this epoch, and an
// outdated copy is never taken for a damaged one.
func (d *Daemon) digestOn(ctx context.Context, n placement.Node, k store.Key, op proto.Opcode,
	local func(context.Context, store.Key) ([20]byte, error)) ([20]byte, error) {
	if n.ID == d.node.ID() {
		var h [20]byte
		err := d.h.guarded(ctx, k, func() (err error) {
			h, err = local(ctx, k)
			return err
		})
		return h, err
	}
	c, err := d.pool.Get(ctx, n.Addr.String())
	if err != nil {
		return [20]byte{}, fmt.Errorf("%s: %v: %w", n.Addr, err, proto.ResNetworkError)
	}
	rsp, _, err := c.Do(ctx, peerReq(op, 0, k, 0, false), nil, nil)
	if err != nil {
		return [20]byte{}, err
	}
	return rsp.Hash(), nil
}

// sameHashes reports whether two looks at the same copies found each
// readable copy with the hash it had, and the same ones readable.
func sameHashes(a, b []copyState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i].err == nil) != (b[i].err == nil) || (a[i].err == nil && a[i].hash != b[i].hash) {
			return false
		}
	}
	return true
}

// readCopy reads a whole copy from node in epoch through the holder's
// recovery guard (see digestOn).
func (d *Daemon) readCopy(ctx context.Context, epoch uint32, n placement.Node, k store.Key, size uint32) ([]byte, error) {
	buf := make([]byte, size)
	return buf, d.peers.Peer(n).Read(ctx, epoch, k, 0, buf)
}

// writeCopy installs a whole copy on node; with excl only where none
// exists.
func (d *Daemon) writeCopy(ctx context.Context, epoch uint32, n placement.Node, k store.Key, data []byte, excl bool) error {
	if n.ID == d.node.ID() {
		return d.store.Create(ctx, k, uint32(len(data)), 0, data, store.WriteOpts{Epoch: epoch, Sync: true, Exclusive: excl})
	}
	p := &remotePeer{pool: d.pool, addr: n.Addr.String()}
	return p.Create(ctx, epoch, k, uint32(len(data)), 0, data, true, excl)
}

// checkVDI compares every copy (or strip) of every object the VDI refers
// to, and with repair rewrites copies that are missing, corrupt or differ
// from the majority, and strips that fail parity.
func (d *Daemon) checkVDI(ctx context.Context, name, tag string, snapID uint32, repair bool) (*api.CheckReport, error) {
	v, err := d.vols.LookupSync(ctx, name, tag, snapID)
	if err != nil {
		return nil, err
	}
	view := d.views.View()
	if view == nil {
		return nil, proto.ResWaitForFormat
	}
	ino, err := d.vols.ReadInode(ctx, v)
	if err != nil {
		return nil, err
	}
	rep := &api.CheckReport{VDI: name}
	if !d.views.Settled(view.Epoch) {
		// Every copy is read through its holder's recovery guard, so what
		// is compared is up to date. But the epoch can change again under
		// the check, and a copy outdated by that would be taken for the
		// good one if outdated copies outvote the current one. Report,
		// repair nothing.
		if repair {
			repair = false
			rep.Details = append(rep.Details, "recovery is under way: nothing repaired; check again once it has finished")
		} else {
			rep.Details = append(rep.Details, "recovery is under way: copies not recovered yet were recovered first, then compared")
		}
	}
	objs := []gateway.Object{{OID: proto.InodeOID(v.VID), Red: proto.Redundancy{Copies: v.Redundancy().NrCopies()}, Size: proto.InodeSize}}
	seen := map[proto.OID]bool{}
	for idx, owner := range ino.DataVDIID {
		if owner == 0 {
			continue
		}
		oid := proto.DataOID(owner, uint32(idx))
		if !seen[oid] {
			seen[oid] = true
			objs = append(objs, gateway.Object{OID: oid, Red: v.Redundancy(), Size: v.ObjectSize()})
		}
	}
	codecs := codecs{d.codecs}
	var differ []mismatch // copies that differ, repaired after a settle
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Objects++
		if o.Red.IsEC() {
			d.checkEC(ctx, view, codecs, o, repair, rep)
		} else {
			d.checkReplicated(ctx, view, o, repair, rep, &differ)
		}
	}
	if len(differ) > 0 {
		d.repairMismatches(ctx, view, differ, rep)
	}
	return rep, nil
}

func (d *Daemon) targets(view *gateway.View, o gateway.Object) []placement.Node {
	n := int(o.Red.NrCopies())
	t := view.Ring.Targets(o.OID, n)
	if o.Red.IsEC() && len(t) > 0 && len(t) < n {
		w := make([]placement.Node, n)
		for i := range w {
			w[i] = t[i%len(t)]
		}
		t = w
	}
	return t
}

func (d *Daemon) checkReplicated(ctx context.Context, view *gateway.View, o gateway.Object, repair bool, rep *api.CheckReport, differ *[]mismatch) {
	look := func() (cs []copyState, votes map[[20]byte]int) {
		votes = map[[20]byte]int{}
		for _, n := range d.targets(view, o) {
			k := store.ReplicaKey(o.OID)
			h, err := d.hashOn(ctx, n, k)
			cs = append(cs, copyState{node: n, key: k, hash: h, err: err})
			if err == nil {
				votes[h]++
			}
		}
		return cs, votes
	}
	cs, votes := look()
	rep.Copies += len(cs)
	// The copies are hashed one after another, so a write landing between
	// two of them shows as a difference: look again. Copies that differ
	// for good (a torn write) hash as they did; if any hash moved, the
	// object is being written, and its differences are not reported.
	inUse := false
	if len(votes) > 1 {
		again, votes2 := look()
		if !sameHashes(cs, again) {
			cs, votes = again, votes2
			inUse = len(votes) > 1
		}
	}
	if len(votes) == 0 {
		allMissing := true
		for _, c := range cs {
			allMissing = allMissing && errors.Is(c.err, proto.ResNoObj)
		}
		if !allMissing {
			rep.Lost++
			rep.Details = append(rep.Details, fmt.Sprintf("%s: no readable copy", o.OID))
		}
		return
	}
	// The majority is the good content; a tie goes to the first readable
	// copy in placement order (the primary's, as the scrub picks), so a
	// check and a scrub never pull two copies opposite ways.
	var good [20]byte
	best := 0
	for _, c := range cs {
		if c.err == nil {
			good, best = c.hash, votes[c.hash]
			break
		}
	}
	for h, n := range votes {
		if n > best {
			good, best = h, n
		}
	}
	var src *copyState
	for i := range cs {
		if cs[i].err == nil && cs[i].hash == good {
			src = &cs[i]
			break
		}
	}
	var data []byte
	noted := false // the in-use note is given once per object
	for _, c := range cs {
		kind := ""
		switch {
		case errors.Is(c.err, proto.ResNoObj):
			rep.Missing++
			kind = "missing"
		case c.err != nil && proto.ResultOf(c.err) == proto.ResEIO:
			rep.Corrupt++
			kind = "corrupt"
		case c.err != nil:
			rep.Unreachable++
			rep.Details = append(rep.Details, fmt.Sprintf("%s on %s: unreachable: %v", o.OID, c.node.Addr, c.err))
			continue
		case c.hash != good && inUse:
			if !noted {
				noted = true
				rep.Details = append(rep.Details, fmt.Sprintf("%s: copies changing while checked (in use?): not compared; check again", o.OID))
			}
			continue
		case c.hash != good:
			rep.Mismatch++
			kind = "differs from the majority"
		default:
			continue
		}
		msg := fmt.Sprintf("%s on %s: %s", o.OID, c.node.Addr, kind)
		if repair && kind == "differs from the majority" {
			if len(*differ) == 0 || (*differ)[len(*differ)-1].o.OID != o.OID {
				*differ = append(*differ, mismatch{o: o, cs: cs, good: good})
			}
			continue // reported by repairMismatches
		}
		if repair {
			if data == nil {
				var err error
				if data, err = d.readCopy(ctx, view.Epoch, src.node, src.key, o.Size); err != nil {
					rep.Details = append(rep.Details, msg+": repair source unreadable: "+err.Error())
					continue
				}
			}
			var err error
			if kind == "corrupt" {
				// Only its rotten blocks: the VDI may be in use.
				err = d.peers.Peer(c.node).Heal(ctx, view.Epoch, c.key, 0, data, true)
			} else {
				// Missing: unless one appeared meanwhile (recovery, a
				// writer).
				err = d.writeCopy(ctx, view.Epoch, c.node, c.key, data, true)
			}
			if errors.Is(err, proto.ResOIDExist) || errors.Is(err, store.ErrExists) {
				rep.Details = append(rep.Details, msg+": present now (recovered or written meanwhile)")
				continue
			}
			if err != nil {
				msg += ": repair failed: " + err.Error()
			} else {
				rep.Repaired++
				msg += ": repaired"
				d.metrics.ScrubFinding(metrics.ScrubRepaired)
			}
		}
		rep.Details = append(rep.Details, msg)
	}
}

func (d *Daemon) checkEC(ctx context.Context, view *gateway.View, cs codecs, o gateway.Object, repair bool, rep *api.CheckReport) {
	dn, pn := int(o.Red.Data), int(o.Red.Parity)
	c, err := cs.cs.Get(dn, pn)
	if err != nil {
		rep.Details = append(rep.Details, fmt.Sprintf("%s: %v", o.OID, err))
		return
	}
	ts := d.targets(view, o)
	stripSize := o.Size / uint32(dn)
	chunks := make([][]byte, dn+pn)
	bad := []int{}
	missing := 0
	for i, n := range ts {
		rep.Copies++
		k := store.StripKey(o.OID, uint8(i))
		buf, err := d.readCopy(ctx, view.Epoch, n, k, stripSize)
		switch {
		case err == nil:
			chunks[i] = buf
		case errors.Is(err, proto.ResNoObj):
			rep.Missing++
			missing++
			bad = append(bad, i)
		case proto.ResultOf(err) == proto.ResEIO:
			rep.Corrupt++
			bad = append(bad, i)
		default:
			rep.Unreachable++
			rep.Details = append(rep.Details, fmt.Sprintf("%s strip %d on %s: unreachable: %v", o.OID, i, n.Addr, err))
		}
	}
	if missing == dn+pn {
		return // a hole: never written
	}
	have := 0
	for _, ch := range chunks {
		if ch != nil {
			have++
		}
	}
	if have < dn {
		rep.Lost++
		rep.Details = append(rep.Details, fmt.Sprintf("%s: only %d of %d strips readable", o.OID, have, dn))
		return
	}
	if len(bad) == 0 {
		if ok, err := c.Verify(chunks); err == nil && !ok {
			// Parity disagrees with data: re-encode parity from the data strips.
			rep.Mismatch++
			msg := fmt.Sprintf("%s: parity inconsistent", o.OID)
			for i := dn; i < dn+pn; i++ {
				chunks[i] = nil
				bad = append(bad, i)
			}
			rep.Details = append(rep.Details, msg)
		}
	}
	if len(bad) == 0 {
		return
	}
	sort.Ints(bad)
	if !repair {
		for _, i := range bad {
			rep.Details = append(rep.Details, fmt.Sprintf("%s strip %d on %s: missing or corrupt", o.OID, i, ts[i].Addr))
		}
		return
	}
	// The object's primary repairs it under the lock every mutation of the
	// object takes, so a concurrent write cannot be undone by the repair.
	if err := d.gw.RepairEC(ctx, o); err != nil {
		rep.Details = append(rep.Details, fmt.Sprintf("%s: repair of strips %v failed: %v", o.OID, bad, err))
		return
	}
	for _, i := range bad {
		rep.Repaired++
		d.metrics.ScrubFinding(metrics.ScrubRepaired)
		rep.Details = append(rep.Details, fmt.Sprintf("%s strip %d on %s: rebuilt", o.OID, i, ts[i].Addr))
	}
}

// volumeCheck serves api.VolCheck.
func (d *Daemon) volumeCheck(ctx context.Context, op *api.VolumeOp) (*cluster.Result, error) {
	rep, err := d.checkVDI(ctx, op.Name, op.Tag, op.SnapID, op.Repair)
	if err != nil {
		return &cluster.Result{Code: proto.ResultOf(err), Message: err.Error()}, nil
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return nil, err
	}
	return &cluster.Result{Value: b}, nil
}

// mismatch is an object whose copies hash differently, all readable.
type mismatch struct {
	o    gateway.Object
	cs   []copyState
	good [20]byte // the majority's hash
}

// repairMismatches gives copies that differ the majority's content, safely
// beside writes. Copies differ for a moment while a write is in flight,
// so first every leg of any write seen is let run out (a leg ends within
// the gateway's PeerTimeout, after which the write is retried whole or
// fails unacknowledged). Then the source, a copy with the majority's
// content, is read and used only if it still hashes as it did (a write
// that was in flight has landed on it otherwise), and each differing
// copy is replaced only if it still hashes as it did (store.Replacer), so
// a write that reaches it meanwhile is kept. Copies that kept their
// hashes through the wait differ for good (a write torn by a crash).
func (d *Daemon) repairMismatches(ctx context.Context, view *gateway.View, ms []mismatch, rep *api.CheckReport) {
	notNow := func(why string) {
		for _, m := range ms {
			rep.Details = append(rep.Details, fmt.Sprintf("%s: copies differ: not repaired: %s", m.o.OID, why))
		}
	}
	if !sleepCtx(ctx, d.gw.PeerTimeout()+time.Second) {
		notNow(ctx.Err().Error())
		return
	}
	// While recovery of the epoch is under way somewhere, a copy may differ
	// because it is outdated (its node was away), not torn: two outdated
	// copies would outvote the current one, and a tie would go to an
	// outdated primary, undoing acknowledged writes. Those are recovery's.
	if cur := d.views.View(); cur == nil || cur.Epoch != view.Epoch || !d.views.Settled(view.Epoch) {
		notNow("recovery is under way; check again once it has finished")
		return
	}
	for _, m := range ms {
		d.repairMismatch(ctx, view, m, rep)
	}
}

func (d *Daemon) repairMismatch(ctx context.Context, view *gateway.View, m mismatch, rep *api.CheckReport) {
	var src *copyState
	for i, c := range m.cs {
		if c.err == nil && c.hash == m.good {
			src = &m.cs[i]
			break
		}
	}
	data, err := d.readCopy(ctx, view.Epoch, src.node, src.key, m.o.Size)
	if err == nil && sha1.Sum(data) != m.good {
		rep.Details = append(rep.Details, fmt.Sprintf("%s: copies differ, and changed while checked (in use?): not repaired; check again", m.o.OID))
		return
	}
	for _, c := range m.cs {
		if c.err != nil || c.hash == m.good { // missing or corrupt: handled already
			continue
		}
		msg := fmt.Sprintf("%s on %s: differs from the majority", m.o.OID, c.node.Addr)
		if err != nil {
			rep.Details = append(rep.Details, msg+": repair source unreadable: "+err.Error())
			continue
		}
		switch rerr := d.peers.Peer(c.node).(replacer).replaceIf(ctx, view.Epoch, c.key, c.hash, data, true); {
		case errors.Is(rerr, store.ErrChanged) || errors.Is(rerr, proto.ResAgain):
			msg += ": written meanwhile: not repaired; check again"
		case rerr != nil:
			msg += ": repair failed: " + rerr.Error()
		default:
			rep.Repaired++
			msg += ": repaired"
			d.metrics.ScrubFinding(metrics.ScrubRepaired)
		}
		rep.Details = append(rep.Details, msg)
	}
}
