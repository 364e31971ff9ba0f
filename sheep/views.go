package sheep

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/gateway"
)

// views derives the gateway's placement views from the FSM's epochs,
// building each epoch's ring once.
type views struct {
	mu      sync.Mutex
	cur     *gateway.View
	members map[uint32][]cluster.Member // epoch -> members, for history
	rings   map[uint32]*placement.Ring
	changed chan struct{} // closed and replaced on every new epoch
	// settled is the newest epoch every member of which reported its
	// recovery complete.
	settled atomic.Uint32
}

func newViews() *views {
	return &views{members: map[uint32][]cluster.Member{}, rings: map[uint32]*placement.Ring{}, changed: make(chan struct{})}
}

func ringOf(ms []cluster.Member) *placement.Ring {
	ns := make([]placement.Node, len(ms))
	for i, m := range ms {
		ns[i] = placement.Node{ID: m.ID, Addr: m.Addr, Zone: m.Zone, Weight: m.Space}
	}
	return placement.New(ns, placement.Options{})
}

// record learns the epochs of s (for Ring) without publishing the newest
// as the gateway's view.
func (v *views) record(s *cluster.State) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.recordLocked(s)
}

func (v *views) recordLocked(s *cluster.State) {
	for _, e := range s.Epochs {
		if _, ok := v.members[e.Epoch]; !ok {
			v.members[e.Epoch] = e.Members
		}
	}
}

// update is the FSM watcher: it publishes the current epoch's view.
func (v *views) update(s *cluster.State) {
	c := s.Current()
	if c == nil {
		return
	}
	if recoveredAll(s, c) {
		v.settled.Store(c.Epoch)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur != nil && v.cur.Epoch == c.Epoch {
		return
	}
	v.recordLocked(s)
	r, ok := v.rings[c.Epoch]
	if !ok {
		r = ringOf(c.Members)
		v.rings[c.Epoch] = r
	}
	v.cur = &gateway.View{Epoch: c.Epoch, Ring: r}
	close(v.changed)
	v.changed = make(chan struct{})
}

// recoveredAll reports whether every member of epoch c reported its
// recovery of c complete.
func recoveredAll(s *cluster.State, c *cluster.EpochLog) bool {
	for _, m := range c.Members {
		if !slices.Contains(s.Recovered[c.Epoch], m.ID) {
			return false
		}
	}
	return true
}

// Settled reports whether recovery of epoch e is complete on every member:
// no copy of that epoch is still waiting to be fetched or rebuilt.
func (v *views) Settled(e uint32) bool { return v.settled.Load() == e }

// View implements gateway.Views.
func (v *views) View() *gateway.View {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cur
}

// WaitNewer implements gateway.Views.
func (v *views) WaitNewer(ctx context.Context, e uint32) error {
	for {
		v.mu.Lock()
		cur, ch := v.cur, v.changed
		v.mu.Unlock()
		if cur != nil && cur.Epoch > e {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Ring returns the ring of epoch e (built on demand from the epoch log).
func (v *views) Ring(e uint32) (*placement.Ring, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if r, ok := v.rings[e]; ok {
		return r, true
	}
	ms, ok := v.members[e]
	if !ok {
		return nil, false
	}
	r := ringOf(ms)
	v.rings[e] = r
	return r, true
}
