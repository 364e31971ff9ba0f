package errorfs

import (
	"math/rand/v2"
	"sync"
)

// Crasher simulates the process (or machine) dying: once it fires, every
// later mutation and fsync fails with ErrCrashed and changes nothing, so the
// files hold exactly what was written before. Reads keep working so the
// test can inspect the wreck through the same FS if it wants; normally it
// reopens the directory with a clean FS.
//
// The write that fires the crash can be torn: only a prefix of it, ending on
// a TearAlign boundary of the file offset, reaches the file. With
// TearAlign = 4096 this is what a kill -9 can do to a pwrite into the page
// cache (the kernel copies page by page and stops on a fatal signal).
type Crasher struct {
	mu      sync.Mutex
	after   int // fire on the after-th mutation; <= 0: only on Crash()
	align   int64
	rng     *rand.Rand
	seen    int
	crashed bool
	at      Op
}

// NewCrasher fires on the n-th mutating op (1-based; n <= 0 never fires by
// itself). tearAlign > 0 tears that op, if it is a write, at a random
// aligned boundary chosen with seed; 0 drops it whole.
func NewCrasher(n int, tearAlign int64, seed uint64) *Crasher {
	return &Crasher{after: n, align: tearAlign, rng: rand.New(rand.NewPCG(seed, 0x5eed))}
}

// Arm makes the crasher fire on the n-th mutation from now (n >= 1), so a
// test can skip the mutations of its setup (creating directories...).
func (c *Crasher) Arm(n int) {
	c.mu.Lock()
	c.after = c.seen + max(n, 1)
	c.mu.Unlock()
}

// Crash fires now.
func (c *Crasher) Crash() {
	c.mu.Lock()
	c.crashed = true
	c.mu.Unlock()
}

// Crashed reports whether the crash has happened, and the op that fired it
// (zero Op if Crash was called).
func (c *Crasher) Crashed() (bool, Op) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.crashed, c.at
}

// Mutations is how many mutating ops were seen (including the fatal one).
func (c *Crasher) Mutations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen
}

// MaybeError implements Injector.
func (c *Crasher) MaybeError(o Op) error {
	if !o.Kind.Mutates() && !o.Kind.Durability() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return &InjectedError{Op: o, Err: ErrCrashed}
	}
	if !o.Kind.Mutates() {
		return nil
	}
	c.seen++
	if c.after <= 0 || c.seen < c.after {
		return nil
	}
	c.crashed = true
	c.at = o
	if o.Kind == OpWrite && c.align > 0 && o.Len > 0 {
		// Boundaries strictly inside (o.Off, o.Off+o.Len).
		first := (o.Off/c.align + 1) * c.align
		end := o.Off + o.Len
		if first < end {
			// Choose among "nothing written" and every interior boundary.
			nb := (end-1-first)/c.align + 1
			i := c.rng.Int64N(nb + 1)
			if i > 0 {
				cut := first + (i-1)*c.align
				return &TornError{Keep: cut - o.Off, Err: &InjectedError{Op: o, Err: ErrCrashed}}
			}
		}
	}
	return &InjectedError{Op: o, Err: ErrCrashed}
}
