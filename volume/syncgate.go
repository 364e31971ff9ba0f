package volume

import (
	"context"
	"time"
)

// syncGap is the least time between two catch-ups (Manager.sync). A name
// lookup that misses catches up, which is a Raft commit, and front ends
// look names up for clients that have not authenticated (iSCSI logins and
// discovery, NBD export names, sheepdog lookups): they must not drive
// commits at their own rate. 20 ms bounds that to 50 a second, and a
// legitimate miss waits at most that much longer.
const syncGap = 20 * time.Millisecond

// syncGate coalesces catch-ups. A caller needs one that started after it
// called, so that it sees everything committed before its call: callers
// queue for one run at a time, and one that finds, once its turn comes,
// that a run started after it called and succeeded returns that run's
// result instead of starting another.
type syncGate struct {
	turn  chan struct{} // a token: one run (or check) at a time
	gap   time.Duration
	start time.Time // the last run's start, and
	err   error     // its result (both guarded by turn)
}

func newSyncGate(gap time.Duration) *syncGate {
	return &syncGate{turn: make(chan struct{}, 1), gap: gap}
}

// do runs fn, or shares a run of it that started after do was called.
func (g *syncGate) do(ctx context.Context, fn func(context.Context) error) error {
	called := time.Now()
	select {
	case g.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.turn }()
	if !g.start.IsZero() && g.start.After(called) && g.err == nil {
		return nil
	}
	if !g.start.IsZero() {
		if wait := g.gap - time.Since(g.start); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
	g.start = time.Now()
	g.err = fn(ctx)
	return g.err
}
