package store

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"

	"github.com/gosheep/gosheep/store/errorfs"
	"github.com/gosheep/gosheep/store/vfs"
)

// crashOp is one step of the crash workload.
type crashOp struct {
	kind   string // "write", "zero", "create"
	off, n int
	sync   bool
}

const crashSize = 5*4096 + 1000 // short last block

// Overlapping writes of every shape: partial head and tail blocks, whole
// blocks, the short last block, zeroing (punch and partial), a replacing
// create, epoch changes.
var crashOps = []crashOp{
	{"write", 100, 9000, false},
	{"write", 4096, 2 * 4096, false},
	{"write", 4000, 200, false},
	{"zero", 2 * 4096, 2 * 4096, false},
	{"write", 0, crashSize, false},
	{"zero", 10, 10, false},
	{"write", 5 * 4096, 1000, false},
	{"create", 3000, 4000, false},
	{"write", 0, 8192, true},
	{"write", 4095, 2, false},
	{"zero", 4000, crashSize - 4000, false},
	{"write", 4096*3 - 7, 4096 + 14, false},
}

func applyCrashOp(content []byte, op crashOp, i int) []byte {
	next := slices.Clone(content)
	switch op.kind {
	case "write":
		copy(next[op.off:], pattern(uint64(1000+i), op.n))
	case "zero":
		clear(next[op.off : op.off+op.n])
	case "create":
		next = make([]byte, crashSize)
		copy(next[op.off:], pattern(uint64(1000+i), op.n))
	}
	return next
}

func runCrashOp(d *Disk, k Key, op crashOp, i int) error {
	wo := WriteOpts{Epoch: uint32(i), Sync: op.sync}
	switch op.kind {
	case "write":
		return d.Write(bg, k, uint32(op.off), pattern(uint64(1000+i), op.n), wo)
	case "zero":
		return d.Zero(bg, k, uint32(op.off), uint32(op.n), wo)
	default:
		return d.Create(bg, k, crashSize, uint32(op.off), pattern(uint64(1000+i), op.n), wo)
	}
}

// crashRun opens dir through a crasher firing at the n-th mutation, runs
// ops[from:] and then Close, and returns the index of the op that failed
// (len(ops) if the crash hit Close or never came) and whether it fired.
func crashRun(t *testing.T, dir string, k Key, from int, n int, seed uint64) (int, bool) {
	t.Helper()
	c := errorfs.NewCrasher(0, 4096, seed)
	d, err := Open(dir, Options{NoSync: true, FS: errorfs.Wrap(vfs.Default(), c), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c.Arm(n)
	failed := len(crashOps)
	for i := from; i < len(crashOps); i++ {
		if err := runCrashOp(d, k, crashOps[i], i); err != nil {
			if crashed, _ := c.Crashed(); !crashed {
				t.Fatalf("op %d failed without a crash: %v", i, err)
			}
			failed = i
			break
		}
	}
	d.Close() // after a crash its writes are dropped, as they would be
	crashed, _ := c.Crashed()
	return failed, crashed
}

// checkOldOrNew reopens dir and checks every block reads without error
// and holds its content from before or after the interrupted op (for a
// create, the whole object is one or the other). It returns what it read.
func checkOldOrNew(t *testing.T, dir string, k Key, before, after []byte, wholeObject bool, what string) []byte {
	t.Helper()
	d := openT(t, dir, Options{NoSync: true})
	defer d.Close()
	got := make([]byte, crashSize)
	for b := 0; b < crashSize; b += 4096 {
		e := min(b+4096, crashSize)
		if err := d.Read(bg, k, uint32(b), got[b:e]); err != nil {
			t.Fatalf("%s: block at %d unreadable: %v", what, b, err)
		}
		if firstDiff(got[b:e], before[b:e]) >= 0 && firstDiff(got[b:e], after[b:e]) >= 0 {
			t.Fatalf("%s: block at %d is neither old nor new", what, b)
		}
	}
	if wholeObject && firstDiff(got, before) >= 0 && firstDiff(got, after) >= 0 {
		t.Fatalf("%s: torn create: object is a mix", what)
	}
	if err := d.Verify(bg, k); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if names := dirNames(t, dir+"/obj"); len(names) != 1 {
		t.Fatalf("%s: obj/ holds %v", what, names)
	}
	return got
}

// TestCrashAtEveryWrite crashes the workload after its k-th file-system
// mutation for every k (tearing that write at a random page boundary),
// checks every block reads as old or new, then continues the workload from
// the interrupted op on the recovered store, crashes it again at random
// points and checks again: a second crash on top of an unrepaired first one
// is where a checksum scheme without scrubbing breaks.
func TestCrashAtEveryWrite(t *testing.T) {
	k := StripKey(0x77, 4)
	initial := pattern(7, crashSize)
	states := [][]byte{initial}
	for i, op := range crashOps {
		states = append(states, applyCrashOp(states[i], op, i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	second := 3
	if testing.Short() {
		second = 1
	}
	runs := 0
	for n := 1; ; n++ {
		dir := t.TempDir()
		{
			d := openT(t, dir, Options{NoSync: true})
			mustCreate(t, d, k, crashSize, 0, initial)
			d.Close()
		}
		failed, crashed := crashRun(t, dir, k, 0, n, uint64(n))
		runs++
		if !crashed {
			checkOldOrNew(t, dir, k, states[len(crashOps)], states[len(crashOps)], false, "no crash")
			if n < len(crashOps) {
				t.Fatalf("workload finished after %d mutations; crasher is not counting", n)
			}
			break
		}
		what := fmt.Sprintf("crash at mutation %d (op %d)", n, failed)
		after := states[min(failed+1, len(crashOps))]
		isCreate := failed < len(crashOps) && crashOps[failed].kind == "create"
		got := checkOldOrNew(t, dir, k, states[failed], after, isCreate, what)

		// Second crash: the recovered content is the new "old".
		var base []byte
		for j := 0; j < second && failed < len(crashOps); j++ {
			dir2 := t.TempDir()
			copyDir(t, dir, dir2)
			base = slices.Clone(got)
			s2 := [][]byte{base}
			for i := failed; i < len(crashOps); i++ {
				s2 = append(s2, applyCrashOp(s2[len(s2)-1], crashOps[i], i))
			}
			m := 1 + rng.IntN(30)
			failed2, crashed2 := crashRun(t, dir2, k, failed, m, uint64(n*100+j))
			runs++
			idx := failed2 - failed
			if !crashed2 {
				idx = len(s2) - 1
			}
			isCreate := failed2 < len(crashOps) && crashOps[failed2].kind == "create"
			checkOldOrNew(t, dir2, k, s2[idx], s2[min(idx+1, len(s2)-1)], isCreate && crashed2,
				fmt.Sprintf("%s, then crash at mutation %d (op %d)", what, m, failed2))
		}
	}
	t.Logf("%d crash runs", runs)
}

// copyDir copies the obj/ and stale/ trees of a store (regular files,
// preserving holes is unnecessary for correctness).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	for _, sub := range []string{"obj", "stale"} {
		if err := os.MkdirAll(dst+"/"+sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range dirNames(t, src+"/"+sub) {
			b, err := os.ReadFile(src + "/" + sub + "/" + n)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst+"/"+sub+"/"+n, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
