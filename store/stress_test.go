package store

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestConcurrentStress runs writers, zeroers, readers, creators, stashers
// and syncers in parallel over a few objects with a tiny open-file cache, so
// eviction races with I/O. Each writer owns a disjoint slice of every
// object and checks its own slice against its model; readers of whole
// objects only check that verification never fails. Run with -race.
func TestConcurrentStress(t *testing.T) {
	const (
		nobj    = 6
		writers = 4
		slice   = 3*4096 + 500 // per writer per object: unaligned boundaries
		size    = writers * slice
	)
	steps := 300
	if testing.Short() {
		steps = 60
	}
	d := openT(t, t.TempDir(), Options{MaxOpenFiles: 3})
	for i := range nobj {
		mustCreate(t, d, ReplicaKey(oidN(i)), size, 0, nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	fail := func(format string, args ...any) {
		select {
		case errs <- fmt.Errorf(format, args...):
		default:
		}
	}
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			model := make([][]byte, nobj)
			for i := range model {
				model[i] = make([]byte, slice)
			}
			base := w * slice
			for step := range steps {
				i := rng.IntN(nobj)
				k := ReplicaKey(oidN(i))
				off := rng.IntN(slice)
				n := 1 + rng.IntN(min(slice-off, 9000))
				switch rng.IntN(4) {
				case 0, 1:
					data := pattern(uint64(w<<20|step), n)
					if err := d.Write(bg, k, uint32(base+off), data, WriteOpts{Epoch: uint32(step), Sync: step%50 == 0}); err != nil {
						fail("writer %d: %v", w, err)
						return
					}
					copy(model[i][off:], data)
				case 2:
					if err := d.Zero(bg, k, uint32(base+off), uint32(n), WriteOpts{}); err != nil {
						fail("zeroer %d: %v", w, err)
						return
					}
					clear(model[i][off : off+n])
				case 3:
					p := make([]byte, slice)
					if err := d.Read(bg, k, uint32(base), p); err != nil {
						fail("reader %d: %v", w, err)
						return
					}
					if j := firstDiff(p, model[i]); j >= 0 {
						fail("writer %d object %d: byte %d of its slice is wrong", w, i, j)
						return
					}
				}
			}
		})
	}
	stop := make(chan struct{})
	var bg2 sync.WaitGroup
	// Whole-object readers, hashers and verifiers.
	for r := range 2 {
		bg2.Go(func() {
			p := make([]byte, size)
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				k := ReplicaKey(oidN((j + r) % nobj))
				var err error
				switch j % 3 {
				case 0:
					err = d.Read(bg, k, 0, p)
				case 1:
					_, err = d.Hash(bg, k)
				case 2:
					err = d.Verify(bg, k)
				}
				if err != nil {
					fail("reader: %v", err)
					return
				}
			}
		})
	}
	// Syncs, lists, usage, and create/stash/unstash/remove churn on other keys.
	bg2.Go(func() {
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := d.Sync(bg); err != nil {
				fail("sync: %v", err)
				return
			}
			if _, err := d.List(bg); err != nil {
				fail("list: %v", err)
				return
			}
			if _, err := d.Usage(); err != nil {
				fail("usage: %v", err)
				return
			}
			if err := d.Rescan(bg); err != nil {
				fail("rescan: %v", err)
				return
			}
		}
	})
	bg2.Go(func() {
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			k := StripKey(oidN(100+j%5), uint8(j%3))
			if err := d.Create(bg, k, 9000, 10, []byte("churn"), WriteOpts{}); err != nil {
				fail("churn create: %v", err)
				return
			}
			if err := d.Stash(bg, k, uint32(j)); err != nil {
				fail("churn stash: %v", err)
				return
			}
			if err := d.Unstash(bg, k, uint32(j)); err != nil {
				fail("churn unstash: %v", err)
				return
			}
			if err := d.Remove(bg, k); err != nil {
				fail("churn remove: %v", err)
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	bg2.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for i := range nobj {
		if err := d.Verify(bg, ReplicaKey(oidN(i))); err != nil {
			t.Fatal(err)
		}
	}
	// The object table holds only cached objects once all is idle.
	d.mu.Lock()
	objs, lru := len(d.objs), d.lruLen
	d.mu.Unlock()
	if lru > 3 || objs > 3 {
		t.Fatalf("after the storm: %d objects tracked, %d open (bound 3)", objs, lru)
	}
	// Usage stayed exact through the concurrency (rescans included); the
	// Sync first accounts what writeback allocated.
	if err := d.Sync(bg); err != nil {
		t.Fatal(err)
	}
	u, _ := d.Usage()
	l, _ := d.List(bg)
	if int(u.Objects) != len(l) || len(l) != nobj {
		t.Fatalf("objects %d, listed %d, want %d", u.Objects, len(l), nobj)
	}
	used := int64(0)
	for _, n := range dirNames(t, d.objDir) {
		used += allocOf(t, d.objDir+"/"+n)
	}
	if int64(u.Used) != used {
		t.Fatalf("Used %d, files allocate %d", u.Used, used)
	}
}
