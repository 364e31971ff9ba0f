package errorfs

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
)

const (
	osCreate = os.O_CREATE
	osTrunc  = os.O_TRUNC
)

// Predicate selects ops. Stateful predicates (After, Times, Randomly) count
// only the ops that reach them, so in And(Kinds(OpWrite), After(3)) the
// count is of writes. They are safe for concurrent use.
type Predicate interface {
	Evaluate(Op) bool
}

// PredicateFunc adapts a function to Predicate.
type PredicateFunc func(Op) bool

// Evaluate implements Predicate.
func (f PredicateFunc) Evaluate(o Op) bool { return f(o) }

// Always selects every op.
func Always() Predicate { return PredicateFunc(func(Op) bool { return true }) }

// Kinds selects ops of the given kinds.
func Kinds(kinds ...Kind) Predicate {
	var set [numKinds]bool
	for _, k := range kinds {
		if k < numKinds {
			set[k] = true
		}
	}
	return PredicateFunc(func(o Op) bool { return o.Kind < numKinds && set[o.Kind] })
}

// Mutating selects ops that change contents or names (Kind.Mutates).
func Mutating() Predicate { return PredicateFunc(func(o Op) bool { return o.Kind.Mutates() }) }

// Path selects ops whose path, or its base name, matches the
// filepath.Match pattern (so "*.tmp" and "/data/obj/*" both work). A
// malformed pattern matches nothing.
func Path(pattern string) Predicate {
	return PredicateFunc(func(o Op) bool {
		if ok, _ := filepath.Match(pattern, o.Path); ok {
			return true
		}
		ok, _ := filepath.Match(pattern, filepath.Base(o.Path))
		return ok
	})
}

// And selects ops every predicate selects, evaluating left to right and
// stopping at the first that does not.
func And(ps ...Predicate) Predicate {
	return PredicateFunc(func(o Op) bool {
		for _, p := range ps {
			if !p.Evaluate(o) {
				return false
			}
		}
		return true
	})
}

// Or selects ops any predicate selects (left to right, short-circuit).
func Or(ps ...Predicate) Predicate {
	return PredicateFunc(func(o Op) bool {
		for _, p := range ps {
			if p.Evaluate(o) {
				return true
			}
		}
		return false
	})
}

// Not inverts p.
func Not(p Predicate) Predicate { return PredicateFunc(func(o Op) bool { return !p.Evaluate(o) }) }

// After is false for the first n evaluations and true from then on.
func After(n int) Predicate {
	var mu sync.Mutex
	seen := 0
	return PredicateFunc(func(Op) bool {
		mu.Lock()
		defer mu.Unlock()
		seen++
		return seen > n
	})
}

// Times is true for the first n evaluations only.
func Times(n int) Predicate {
	var mu sync.Mutex
	seen := 0
	return PredicateFunc(func(Op) bool {
		mu.Lock()
		defer mu.Unlock()
		seen++
		return seen <= n
	})
}

// Randomly is true with probability p, from a generator seeded with seed so
// a failing run can be replayed.
func Randomly(p float64, seed uint64) Predicate {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return PredicateFunc(func(Op) bool {
		mu.Lock()
		defer mu.Unlock()
		return rng.Float64() < p
	})
}
