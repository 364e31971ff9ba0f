package store

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store/errorfs"
	"github.com/gosheep/gosheep/store/vfs"
)

// opLog records the ops an errorfs sees.
type opLog struct {
	mu  sync.Mutex
	ops []errorfs.Op
}

func (l *opLog) MaybeError(o errorfs.Op) error {
	l.mu.Lock()
	l.ops = append(l.ops, o)
	l.mu.Unlock()
	return nil
}

func (l *opLog) take(kinds ...errorfs.Kind) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, o := range l.ops {
		if slices.Contains(kinds, o.Kind) {
			out = append(out, o.Kind.String()+" "+filepath.Base(o.Path))
		}
	}
	l.ops = nil
	slices.Sort(out)
	return out
}

func TestSyncTracksDirtyObjects(t *testing.T) {
	dir := t.TempDir()
	log := new(opLog)
	d := openT(t, dir, Options{MaxOpenFiles: 2, FS: errorfs.Wrap(vfs.Default(), log)})
	syncs := []errorfs.Kind{errorfs.OpSync, errorfs.OpSyncDir}
	keys := []Key{ReplicaKey(1), ReplicaKey(2), StripKey(3, 1), ReplicaKey(4), ReplicaKey(5)}
	for _, k := range keys {
		mustCreate(t, d, k, 8192, 0, []byte("abc"))
	}
	if got := log.take(syncs...); len(got) != 0 {
		t.Fatalf("unsynced creates fsynced: %v", got)
	}
	// All five were dirtied, three are no longer open; Sync reaches all.
	if err := d.Sync(bg); err != nil {
		t.Fatal(err)
	}
	want := []string{"sync 0000000000000001", "sync 0000000000000002", "sync 0000000000000003_1",
		"sync 0000000000000004", "sync 0000000000000005", "syncdir obj"}
	if got := log.take(syncs...); !slices.Equal(got, want) {
		t.Fatalf("Sync did %v\nwant %v", got, want)
	}
	if err := d.Sync(bg); err != nil {
		t.Fatal(err)
	}
	if got := log.take(syncs...); len(got) != 0 {
		t.Fatalf("clean Sync did %v", got)
	}
	// One write (to an evicted object), one Sync.
	d.Write(bg, keys[0], 5, []byte("x"), WriteOpts{})
	d.Zero(bg, keys[1], 0, 4096, WriteOpts{})
	d.Read(bg, keys[2], 0, make([]byte, 5)) // reads dirty nothing
	d.Sync(bg)
	if got := log.take(syncs...); !slices.Equal(got, want[:2]) {
		t.Fatalf("Sync after two writes did %v", got)
	}
	// FUA writes fsync before returning and leave nothing for Sync.
	d.Write(bg, keys[3], 5, []byte("x"), WriteOpts{Sync: true})
	if got := log.take(syncs...); !slices.Equal(got, []string{"sync 0000000000000004"}) {
		t.Fatalf("FUA write did %v", got)
	}
	d.Sync(bg)
	if got := log.take(syncs...); len(got) != 0 {
		t.Fatalf("Sync after FUA write did %v", got)
	}
	// A FUA create syncs the new file and the directory.
	if err := d.Create(bg, ReplicaKey(9), 10, 0, nil, WriteOpts{Sync: true}); err != nil {
		t.Fatal(err)
	}
	if got := log.take(syncs...); !slices.Equal(got, []string{"sync 0000000000000009.tmp", "syncdir obj"}) {
		t.Fatalf("FUA create did %v", got)
	}
	// Removes and stashes dirty directories only.
	d.Remove(bg, keys[4])
	d.Stash(bg, keys[3], 1)
	d.Sync(bg)
	if got := log.take(syncs...); !slices.Equal(got, []string{"syncdir obj", "syncdir stale"}) {
		t.Fatalf("Sync after remove+stash did %v", got)
	}
	// NoSync never fsyncs.
	d.Close()
	log.take()
	d = openT(t, dir, Options{NoSync: true, FS: errorfs.Wrap(vfs.Default(), log)})
	d.Create(bg, ReplicaKey(10), 10, 0, nil, WriteOpts{Sync: true})
	d.Write(bg, ReplicaKey(10), 0, []byte{1}, WriteOpts{Sync: true})
	d.Sync(bg)
	d.Close()
	if got := log.take(syncs...); len(got) != 0 {
		t.Fatalf("NoSync store did %v", got)
	}
}

// switchable turns an injector on and off so a test can inject during one
// operation and inspect the result with a healthy file system.
type switchable struct {
	on  atomic.Bool
	inj errorfs.Injector
}

func (s *switchable) MaybeError(o errorfs.Op) error {
	if !s.on.Load() {
		return nil
	}
	return s.inj.MaybeError(o)
}

func TestFaults(t *testing.T) {
	const size = 4*4096 + 100
	k := ReplicaKey(0xabc)
	dataOff := int64(newHeader(k, size, 0).dataOff)
	old, upd := pattern(1, size), pattern(2, size)
	eio, enospc := syscall.EIO, syscall.ENOSPC
	obj := errorfs.Path(k.String())
	tmp := errorfs.Path("*.tmp")
	dataWrites := errorfs.And(errorfs.Kinds(errorfs.OpWrite), obj,
		errorfs.PredicateFunc(func(o errorfs.Op) bool { return o.Off >= dataOff }))
	sumWrites := errorfs.And(errorfs.Kinds(errorfs.OpWrite), obj,
		errorfs.PredicateFunc(func(o errorfs.Op) bool { return o.Off >= sumOff && o.Off < dataOff }))
	hdrWrites := errorfs.And(errorfs.Kinds(errorfs.OpWrite), obj,
		errorfs.PredicateFunc(func(o errorfs.Op) bool { return o.Off < sumOff }))

	type outcome int
	const (
		isOld      outcome = iota // the object is unchanged
		isNew                     // the mutation happened
		isOldOrNew                // each block either
		isGone                    // no object
	)
	for _, tc := range []struct {
		name   string
		inj    errorfs.Injector
		op     func(d *Disk) error
		want   error // errors.Is target
		after  outcome
		newVal func() []byte
	}{
		{name: "ENOSPC writing the temp file of a create", inj: errorfs.Inject(enospc, errorfs.And(errorfs.Kinds(errorfs.OpWrite), tmp, errorfs.After(1))),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{}) }, want: ErrNoSpace, after: isOld},
		{name: "ENOSPC extending the temp file", inj: errorfs.Inject(enospc, errorfs.And(errorfs.Kinds(errorfs.OpTruncate), tmp)),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{}) }, want: ErrNoSpace, after: isOld},
		{name: "EDQUOT creating the temp file", inj: errorfs.Inject(syscall.EDQUOT, errorfs.And(errorfs.Kinds(errorfs.OpCreate), tmp)),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{}) }, want: ErrNoSpace, after: isOld},
		{name: "failed rename of a create", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpRename)),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{}) }, want: eio, after: isOld},
		{name: "failed fsync of a FUA create", inj: errorfs.Inject(eio, errorfs.And(errorfs.Kinds(errorfs.OpSync), tmp)),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{Sync: true}) }, want: eio, after: isOld},
		{name: "failed directory fsync of a FUA create", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpSyncDir)),
			op: func(d *Disk) error { return d.Create(bg, k, size, 0, upd, WriteOpts{Sync: true}) }, want: eio, after: isNew},
		{name: "ENOSPC writing data in place", inj: errorfs.Inject(enospc, dataWrites),
			op: func(d *Disk) error { return d.Write(bg, k, 0, upd, WriteOpts{}) }, want: ErrNoSpace, after: isOldOrNew},
		{name: "ENOSPC half way through a write", inj: errorfs.InjectorFunc(func(o errorfs.Op) error {
			if dataWrites.Evaluate(o) && o.Len > 8192 {
				return &errorfs.TornError{Keep: 8192, Err: &errorfs.InjectedError{Op: o, Err: enospc}}
			}
			return nil
		}), op: func(d *Disk) error { return d.Write(bg, k, 0, upd, WriteOpts{}) }, want: ErrNoSpace, after: isOldOrNew},
		{name: "EIO writing the tail of an unaligned write", inj: errorfs.Inject(eio, errorfs.And(dataWrites, errorfs.After(1))),
			op: func(d *Disk) error { return d.Write(bg, k, 100, upd[100:size-50], WriteOpts{}) }, want: eio, after: isOldOrNew,
			newVal: func() []byte { b := slices.Clone(old); copy(b[100:], upd[100:size-50]); return b }},
		{name: "EIO writing checksums", inj: errorfs.Inject(eio, sumWrites),
			op: func(d *Disk) error { return d.Write(bg, k, 0, upd, WriteOpts{}) }, want: eio, after: isOld},
		{name: "EIO writing the header record", inj: errorfs.Inject(eio, hdrWrites),
			op: func(d *Disk) error { return d.Write(bg, k, 0, upd, WriteOpts{Epoch: 3}) }, want: eio, after: isOld},
		{name: "failed fsync of a FUA write", inj: errorfs.Inject(eio, errorfs.And(errorfs.Kinds(errorfs.OpSync), obj)),
			op: func(d *Disk) error { return d.Write(bg, k, 0, upd, WriteOpts{Sync: true}) }, want: eio, after: isNew},
		{name: "failed fsync in Sync", inj: errorfs.Inject(eio, errorfs.And(errorfs.Kinds(errorfs.OpSync), obj)),
			op: func(d *Disk) error {
				if err := d.Write(bg, k, 0, upd, WriteOpts{}); err != nil {
					return err
				}
				return d.Sync(bg)
			}, want: eio, after: isNew},
		{name: "failed directory fsync in Sync", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpSyncDir)),
			op: func(d *Disk) error { d.Remove(bg, k); return d.Sync(bg) }, want: eio, after: isGone},
		{name: "EIO reading", inj: errorfs.Inject(eio, errorfs.And(errorfs.Kinds(errorfs.OpRead), obj)),
			op: func(d *Disk) error { return d.Read(bg, k, 5000, make([]byte, 10)) }, want: eio, after: isOld},
		{name: "EIO reading for read-modify-write", inj: errorfs.Inject(eio, errorfs.And(errorfs.Kinds(errorfs.OpRead), obj)),
			op: func(d *Disk) error { return d.Write(bg, k, 10, upd[10:20], WriteOpts{}) }, want: eio, after: isOld},
		{name: "failed punch", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpPunch)),
			op: func(d *Disk) error { return d.Zero(bg, k, 0, size, WriteOpts{}) }, want: eio, after: isOldOrNew,
			newVal: func() []byte { return make([]byte, size) }},
		{name: "failed remove", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpRemove)),
			op: func(d *Disk) error { return d.Remove(bg, k) }, want: eio, after: isOld},
		{name: "failed stash", inj: errorfs.Inject(eio, errorfs.Kinds(errorfs.OpRename)),
			op: func(d *Disk) error { return d.Stash(bg, k, 1) }, want: eio, after: isOld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sw := &switchable{inj: tc.inj}
			d := openT(t, dir, Options{FS: errorfs.Wrap(vfs.Default(), sw)})
			mustCreate(t, d, k, size, 0, old)
			u0, _ := d.Usage()
			sw.on.Store(true)
			err := tc.op(d)
			sw.on.Store(false)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !errors.Is(err, errorfs.ErrInjected) {
				t.Fatalf("error %v lost its cause", err)
			}
			if !strings.Contains(err.Error(), k.String()) && !strings.Contains(err.Error(), "sync") {
				t.Fatalf("error %q names neither object nor operation", err)
			}
			newVal := upd
			if tc.newVal != nil {
				newVal = tc.newVal()
			}
			check := func(d *Disk) {
				t.Helper()
				switch tc.after {
				case isOld:
					checkContent(t, d, k, old)
				case isNew:
					checkContent(t, d, k, newVal)
				case isGone:
					_, err := d.Stat(bg, k)
					wantErr(t, err, ErrNotFound, "stat")
				case isOldOrNew:
					got := mustRead(t, d, k, 0, size)
					for b := 0; b < size; b += 4096 {
						e := min(b+4096, size)
						if firstDiff(got[b:e], old[b:e]) >= 0 && firstDiff(got[b:e], newVal[b:e]) >= 0 {
							t.Fatalf("block at %d is neither old nor new", b)
						}
					}
					if err := d.Verify(bg, k); err != nil {
						t.Fatal(err)
					}
				}
				if names := dirNames(t, filepath.Join(dir, "obj")); slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, ".tmp") }) {
					t.Fatalf("temp file left: %v", names)
				}
			}
			check(d)
			if tc.after == isOld {
				u1, _ := d.Usage()
				if u1.Objects != u0.Objects {
					t.Fatalf("objects %d -> %d", u0.Objects, u1.Objects)
				}
			}
			// What an fsync failure left unsynced is retried by the next Sync.
			if err := d.Sync(bg); err != nil {
				t.Fatalf("Sync after recovery: %v", err)
			}
			// The store keeps working, and a restart sees the same thing.
			if tc.after != isGone {
				saved := mustRead(t, d, k, 4096, 10)
				if err := d.Write(bg, k, 4096, upd[:10], WriteOpts{}); err != nil {
					t.Fatalf("write after fault: %v", err)
				}
				if err := d.Write(bg, k, 4096, saved, WriteOpts{}); err != nil {
					t.Fatal(err)
				}
			}
			d.Close()
			d = openT(t, dir, Options{})
			check(d)
		})
	}
}

// TestSyncRetriesFailedObject: an object whose fsync failed stays on the
// list, so the failure is not forgotten by the next Sync.
func TestSyncRetriesFailedObject(t *testing.T) {
	log := new(opLog)
	sw := &switchable{inj: errorfs.Inject(syscall.EIO, errorfs.Kinds(errorfs.OpSync))}
	d := openT(t, t.TempDir(), Options{FS: errorfs.Wrap(vfs.Default(), errorfs.Any(log, sw))})
	k := ReplicaKey(1)
	mustCreate(t, d, k, 10, 0, nil)
	sw.on.Store(true)
	if err := d.Sync(bg); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync: %v", err)
	}
	sw.on.Store(false)
	log.take()
	if err := d.Sync(bg); err != nil {
		t.Fatal(err)
	}
	if got := log.take(errorfs.OpSync); !slices.Equal(got, []string{"sync " + k.String()}) {
		t.Fatalf("retry did %v", got)
	}
}

// TestRandomFaults runs a random workload on a file system failing 3% of
// calls (seeded) and checks after every failed mutation that each block of
// the object holds the data from before or after it, and after every
// success that it holds exactly the new data.
func TestRandomFaults(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4}
	if testing.Short() {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			sw := &switchable{inj: errorfs.Inject(syscall.EIO, errorfs.And(
				errorfs.Kinds(errorfs.OpWrite, errorfs.OpRead, errorfs.OpPunch, errorfs.OpTruncate,
					errorfs.OpRename, errorfs.OpSync, errorfs.OpCreate, errorfs.OpOpen, errorfs.OpFileStat),
				errorfs.Randomly(0.03, seed)))}
			dir := t.TempDir()
			d := openT(t, dir, Options{MaxOpenFiles: 3, FS: errorfs.Wrap(vfs.Default(), sw)})
			rng := rand.New(rand.NewPCG(seed, 99))
			const nobj, size = 5, 6*4096 + 333
			model := make([][]byte, nobj)
			for i := range model {
				model[i] = make([]byte, size)
				mustCreate(t, d, ReplicaKey(oidN(i)), size, 0, nil)
			}
			failures := 0
			for step := 0; step < 400; step++ {
				i := rng.IntN(nobj)
				k := ReplicaKey(oidN(i))
				off := rng.IntN(size)
				n := 1 + rng.IntN(size-off)
				if rng.IntN(2) == 0 {
					n = min(n, 1+rng.IntN(6000))
				}
				next := slices.Clone(model[i])
				var err error
				sw.on.Store(true)
				switch r := rng.IntN(10); {
				case r < 6:
					data := pattern(uint64(step), n)
					copy(next[off:], data)
					err = d.Write(bg, k, uint32(off), data, WriteOpts{Epoch: uint32(step), Sync: r == 0})
				case r < 8:
					clear(next[off : off+n])
					err = d.Zero(bg, k, uint32(off), uint32(n), WriteOpts{})
				case r < 9:
					next = make([]byte, size)
					copy(next[off:], pattern(uint64(step), n))
					err = d.Create(bg, k, size, uint32(off), next[off:off+n], WriteOpts{})
				default:
					p := make([]byte, n)
					err = d.Read(bg, k, uint32(off), p)
					if err == nil && firstDiff(p, model[i][off:off+n]) >= 0 {
						t.Fatalf("step %d: read returned wrong data", step)
					}
					if errors.Is(err, ErrCorrupt) {
						t.Fatalf("step %d: read reported corruption: %v", step, err)
					}
					sw.on.Store(false)
					continue
				}
				sw.on.Store(false)
				got := mustRead(t, d, k, 0, size)
				if err == nil {
					if j := firstDiff(got, next); j >= 0 {
						t.Fatalf("step %d: acknowledged mutation not visible at %d", step, j)
					}
					model[i] = next
					continue
				}
				failures++
				if errors.Is(err, ErrCorrupt) {
					t.Fatalf("step %d: injected I/O error surfaced as corruption: %v", step, err)
				}
				for b := 0; b < size; b += 4096 {
					e := min(b+4096, size)
					if firstDiff(got[b:e], model[i][b:e]) >= 0 && firstDiff(got[b:e], next[b:e]) >= 0 {
						t.Fatalf("step %d (%v): block at %d is neither old nor new", step, err, b)
					}
				}
				model[i] = got
			}
			if failures < 5 {
				t.Fatalf("only %d injected failures; the test is not testing", failures)
			}
			d.Close()
			d = openT(t, dir, Options{})
			for i := range model {
				checkContent(t, d, ReplicaKey(oidN(i)), model[i])
			}
			t.Logf("%d failed operations", failures)
		})
	}
}

func oidN(i int) proto.OID { return proto.OID(0x100 + i) }

// TestTornBlockRepaired: a write whose data never landed leaves a block
// matching only its prev checksum. It reads fine (old data), the object
// stays marked dirty on disk, and the next mutation (after a restart)
// scrubs it so the block's cur checksum matches its data again.
func TestTornBlockRepaired(t *testing.T) {
	dir := t.TempDir()
	k := ReplicaKey(0x5ca1ab1e)
	const size = 3 * 4096
	h := newHeader(k, size, 0)
	old := pattern(1, size)
	sw := &switchable{inj: errorfs.Inject(syscall.EIO, errorfs.And(errorfs.Kinds(errorfs.OpWrite),
		errorfs.PredicateFunc(func(o errorfs.Op) bool { return o.Off >= int64(h.dataOff) })))}
	d := openT(t, dir, Options{NoSync: true, FS: errorfs.Wrap(vfs.Default(), sw)})
	mustCreate(t, d, k, size, 0, old)
	sw.on.Store(true)
	if err := d.Write(bg, k, 4096, pattern(2, 4096), WriteOpts{}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write: %v", err)
	}
	sw.on.Store(false)
	d.Close()

	pairOf := func(b int) (prev, cur uint32) {
		raw, err := os.ReadFile(objFile(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		return pairAt(raw[sumOff:], uint32(b))
	}
	crcOld := crc32.Checksum(old[4096:8192], crc32.MakeTable(crc32.Castagnoli))
	if prev, cur := pairOf(1); prev != crcOld || cur == crcOld {
		t.Fatalf("expected a torn pair {old, new}, got {%08x, %08x} (old %08x)", prev, cur, crcOld)
	}
	if hd, _ := readHeaderFile(objFile(dir, k)); hd.rec.flags&recDirty == 0 {
		t.Fatal("object not marked dirty after a failed write")
	}
	d = openT(t, dir, Options{NoSync: true})
	checkContent(t, d, k, old) // reads and verifies fine
	if err := d.Write(bg, k, 0, []byte("x"), WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if prev, cur := pairOf(1); cur != crcOld {
		t.Fatalf("block not repaired: pair {%08x, %08x}, data %08x", prev, cur, crcOld)
	}
	if hd, _ := readHeaderFile(objFile(dir, k)); hd.rec.flags&recDirty != 0 {
		t.Fatal("dirty flag not cleared by a clean close")
	}
}
