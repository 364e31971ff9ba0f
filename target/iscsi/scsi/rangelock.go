package scsi

import (
	"context"
	"sync"
)

// rangeLock serialises writers of overlapping byte ranges, which makes
// COMPARE AND WRITE and ORWRITE atomic against every other write.
type rangeLock struct {
	mu   sync.Mutex
	held []*heldRange
}

type heldRange struct {
	off, end uint64
	done     chan struct{}
}

// lock waits until [off, off+n) overlaps no held range, then holds it.
func (l *rangeLock) lock(ctx context.Context, off, n uint64) (func(), error) {
	h := &heldRange{off: off, end: off + n, done: make(chan struct{})}
	for {
		l.mu.Lock()
		var wait chan struct{}
		for _, o := range l.held {
			if o.off < h.end && h.off < o.end {
				wait = o.done
				break
			}
		}
		if wait == nil {
			l.held = append(l.held, h)
			l.mu.Unlock()
			return func() { l.unlock(h) }, nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *rangeLock) unlock(h *heldRange) {
	l.mu.Lock()
	for i, o := range l.held {
		if o == h {
			l.held[i] = l.held[len(l.held)-1]
			l.held = l.held[:len(l.held)-1]
			break
		}
	}
	l.mu.Unlock()
	close(h.done)
}
