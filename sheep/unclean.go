package sheep

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
)

// eventConverge is the cluster event (cluster.Node.Broadcast) that brings
// every member's next converge pass forward.
const eventConverge = "gosheep-converge"

func runningPath(dir string) string { return filepath.Join(dir, "running") }

// markRunning creates the marker that exists while sheep runs on dir and
// reports whether it was there already: the previous run ended without
// a clean stop (kill -9, a crash, power loss).
func markRunning(dir string) (unclean bool, err error) {
	p := runningPath(dir)
	switch _, err := os.Stat(p); {
	case err == nil:
		unclean = true
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("running marker: %w", err)
	}
	if err := os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("running marker: %w", err)
	}
	return unclean, nil
}

// onEvent handles events members broadcast (cluster.Config.OnEvent).
func (d *Daemon) onEvent(name string) {
	if name == eventConverge {
		d.kickConverge()
	}
}

// announceUnclean has every member compare its copies soon, after this
// node's crash: writes it was relaying when it died may have reached some
// copies and not others, and if it came back before it was missed, no
// epoch change brings a converge pass forward (nodeLeft). Objects are
// compared by their primaries, so every member must run a pass. It waits
// until this node is in the cluster's current epoch and that epoch's
// recovery is complete everywhere (currentSettled), so that its copies
// are compared too, and current.
func (d *Daemon) announceUnclean() {
	for d.ctx.Err() == nil {
		if v, ok := d.currentSettled(); ok && v.Ring.Has(d.node.ID()) {
			if err := d.node.Broadcast(eventConverge); err != nil {
				d.log.Warn("asking members to compare copies after a crash", "err", err)
			} else {
				d.log.Info("previous run did not stop cleanly: members asked to compare copies")
			}
			d.repairTornStripes()
			return
		}
		sleepCtx(d.ctx, 500*time.Millisecond)
	}
}

// repairTornStripes, after a crash, checks the parity of each
// erasure-coded object this node is the primary of (it holds strip 0)
// and was writing when it died: its strip is marked dirty (mutated since
// its file was last closed cleanly). Every mutation of an EC object runs
// on its primary, so a write the crash tore is among these; a stripe it
// left with parity that disagrees with the data would decode wrongly once
// a data strip is lost. The converge pass compares replicas only, and the
// scrub would find it only at its next run (a day by default).
func (d *Daemon) repairTornStripes() {
	v, ok := d.currentSettled()
	if !ok {
		return
	}
	objs, err := d.store.List(d.ctx)
	if err != nil {
		d.log.Warn("after a crash: listing objects", "err", err)
		return
	}
	n := 0
	for _, o := range objs {
		if d.ctx.Err() != nil {
			return
		}
		if !o.Dirty || !o.Key.EC || o.Key.ECIndex != 0 {
			continue
		}
		if cur, ok := d.currentSettled(); !ok || cur.Epoch != v.Epoch {
			// The epoch moved on: its recovery settles strips again, and a
			// repair must not race it. The scrub finds what is left.
			d.log.Info("after a crash: parity checks stopped by an epoch change", "checked", n)
			return
		}
		d.checkParity(d.ctx, o.Key)
		n++
	}
	if n > 0 {
		d.log.Info("after a crash: parity of erasure-coded objects being written checked", "objects", n)
	}
}

// currentSettled returns this node's view once it is of the cluster's
// current epoch (the FSM caught up with the leader, and the view
// published for the epoch it applied) and that epoch's recovery is
// complete on every member. A node back from a crash starts with the view
// of the epoch it had when it died, which looks settled but is not the
// cluster's: nothing may act on it.
func (d *Daemon) currentSettled() (*gateway.View, bool) {
	v := d.views.View()
	if v == nil || !d.node.CaughtUp() || !d.views.Settled(v.Epoch) {
		return nil, false
	}
	var e uint32
	d.node.FSM().Read(func(s *cluster.State) { e = s.Epoch() })
	return v, v.Epoch == e
}
