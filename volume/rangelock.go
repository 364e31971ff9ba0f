package volume

import "sync"

// rangeLocks orders writes per object index: writes to disjoint ranges of
// an object run together, overlapping ones one after the other, and an
// exclusive holder (allocation, copy-on-write, discard) runs alone. The
// order matters because every copy must apply overlapping writes in the
// same order, or the copies would differ; disjoint writes commute. Held
// ranges are kept in stripes by index, each a short list.
type rangeLocks struct {
	stripes [64]rangeStripe
}

type rangeStripe struct {
	mu   sync.Mutex
	held []*heldRange
}

type heldRange struct {
	idx    uint32
	lo, hi uint32 // [lo, hi) within the object
	excl   bool
	done   chan struct{} // closed on release
}

func (h *heldRange) conflicts(idx, lo, hi uint32, excl bool) bool {
	return h.idx == idx && (h.excl || excl || (lo < h.hi && h.lo < hi))
}

// lock waits until [lo, hi) of object idx can be held (all of it, alone,
// if excl) and returns the release function.
func (l *rangeLocks) lock(idx, lo, hi uint32, excl bool) func() {
	s := &l.stripes[idx%uint32(len(l.stripes))]
	s.mu.Lock()
	for {
		var wait chan struct{}
		for _, h := range s.held {
			if h.conflicts(idx, lo, hi, excl) {
				wait = h.done
				break
			}
		}
		if wait == nil {
			break
		}
		s.mu.Unlock()
		<-wait
		s.mu.Lock()
	}
	h := &heldRange{idx: idx, lo: lo, hi: hi, excl: excl, done: make(chan struct{})}
	s.held = append(s.held, h)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		for i, x := range s.held {
			if x == h {
				last := len(s.held) - 1
				s.held[i] = s.held[last]
				s.held[last] = nil
				s.held = s.held[:last]
				break
			}
		}
		s.mu.Unlock()
		close(h.done)
	}
}
