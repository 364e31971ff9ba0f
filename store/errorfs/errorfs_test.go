package errorfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/gosheep/gosheep/store/vfs"
)

func op(k Kind, path string) Op { return Op{Kind: k, Path: path} }

func TestPredicates(t *testing.T) {
	w := op(OpWrite, "/d/obj/00000000000000aa")
	r := op(OpRead, "/d/obj/00000000000000aa")
	tmp := op(OpWrite, "/d/obj/00000000000000aa.tmp")
	for _, tc := range []struct {
		name string
		p    Predicate
		o    Op
		want bool
	}{
		{"kind match", Kinds(OpWrite, OpSync), w, true},
		{"kind miss", Kinds(OpWrite, OpSync), r, false},
		{"base glob", Path("*.tmp"), tmp, true},
		{"base glob miss", Path("*.tmp"), w, false},
		{"full glob", Path("/d/obj/*"), w, true},
		{"full glob other dir", Path("/e/obj/*"), w, false},
		{"bad pattern", Path("["), w, false},
		{"and", And(Kinds(OpWrite), Path("*.tmp")), tmp, true},
		{"and miss", And(Kinds(OpWrite), Path("*.tmp")), w, false},
		{"or", Or(Kinds(OpRead), Path("*.tmp")), tmp, true},
		{"not", Not(Kinds(OpRead)), r, false},
		{"mutating", Mutating(), w, true},
		{"mutating read", Mutating(), r, false},
		{"always", Always(), r, true},
	} {
		if got := tc.p.Evaluate(tc.o); got != tc.want {
			t.Errorf("%s: got %v", tc.name, got)
		}
	}
	// Counting predicates count only what reaches them.
	p := And(Kinds(OpWrite), After(2))
	var got []bool
	for _, o := range []Op{r, w, r, w, w, w} {
		got = append(got, p.Evaluate(o))
	}
	if want := []bool{false, false, false, false, true, true}; !equal(got, want) {
		t.Errorf("After: %v", got)
	}
	p = Times(2)
	got = got[:0]
	for range 4 {
		got = append(got, p.Evaluate(w))
	}
	if want := []bool{true, true, false, false}; !equal(got, want) {
		t.Errorf("Times: %v", got)
	}
	// Randomly is reproducible per seed and roughly honours p.
	seq := func(seed uint64) []bool {
		p := Randomly(0.3, seed)
		var s []bool
		for range 1000 {
			s = append(s, p.Evaluate(w))
		}
		return s
	}
	a, b, c := seq(1), seq(1), seq(2)
	if !equal(a, b) || equal(a, c) {
		t.Error("Randomly is not a function of its seed")
	}
	n := 0
	for _, v := range a {
		if v {
			n++
		}
	}
	if n < 230 || n > 370 {
		t.Errorf("Randomly(0.3) fired %d/1000 times", n)
	}
}

func equal(a, b []bool) bool { return bytes.Equal(boolBytes(a), boolBytes(b)) }

func boolBytes(a []bool) []byte {
	b := make([]byte, len(a))
	for i, v := range a {
		if v {
			b[i] = 1
		}
	}
	return b
}

func TestInject(t *testing.T) {
	dir := t.TempDir()
	fs := Wrap(vfs.Default(), Any(
		Inject(syscall.ENOSPC, And(Kinds(OpWrite), Path("*.full"))),
		Inject(nil, Kinds(OpRename)),
	))
	f, err := fs.OpenFile(filepath.Join(dir, "a.full"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = f.WriteAt([]byte("x"), 0)
	if !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, ErrInjected) {
		t.Fatalf("write: %v", err)
	}
	var ie *InjectedError
	if !errors.As(err, &ie) || ie.Op.Kind != OpWrite || ie.Op.Len != 1 {
		t.Fatalf("error does not describe the op: %#v", err)
	}
	if st, _ := f.Stat(); st.Size != 0 {
		t.Fatal("failed write reached the file")
	}
	if err := fs.Rename(filepath.Join(dir, "a.full"), filepath.Join(dir, "b")); !errors.Is(err, ErrInjected) {
		t.Fatalf("rename: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.full")); err != nil {
		t.Fatal("failed rename moved the file")
	}
}

func TestRenameFollowsOpenFiles(t *testing.T) {
	dir := t.TempDir()
	var seen []string
	fs := Wrap(vfs.Default(), InjectorFunc(func(o Op) error {
		if o.Kind == OpWrite {
			seen = append(seen, filepath.Base(o.Path))
		}
		return nil
	}))
	f, _ := fs.OpenFile(filepath.Join(dir, "x.tmp"), os.O_RDWR|os.O_CREATE, 0o644)
	f.WriteAt([]byte("a"), 0)
	if err := fs.Rename(filepath.Join(dir, "x.tmp"), filepath.Join(dir, "x")); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("b"), 0)
	f.Close()
	if len(seen) != 2 || seen[0] != "x.tmp" || seen[1] != "x" {
		t.Fatalf("ops named %v", seen)
	}
}

func TestCrasher(t *testing.T) {
	dir := t.TempDir()
	c := NewCrasher(3, 0, 1)
	fs := Wrap(vfs.Default(), c)
	name := filepath.Join(dir, "f")
	f, err := fs.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644) // mutation 1
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("one"), 0); err != nil { // 2
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 3), 0); err != nil { // reads do not count
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("two"), 3); !errors.Is(err, ErrCrashed) { // 3: crash
		t.Fatalf("third mutation: %v", err)
	}
	if crashed, at := c.Crashed(); !crashed || at.Kind != OpWrite || at.Off != 3 {
		t.Fatalf("Crashed() = %v, %v", crashed, at)
	}
	for _, err := range []error{
		func() error { _, err := f.WriteAt([]byte("x"), 0); return err }(),
		f.Truncate(0), f.Sync(), f.PunchHole(0, 1),
		fs.Remove(name), fs.Rename(name, name+"2"), fs.SyncDir(dir),
		func() error { _, err := fs.OpenFile(name+"3", os.O_CREATE|os.O_RDWR, 0o644); return err }(),
	} {
		if !errors.Is(err, ErrCrashed) {
			t.Fatalf("after crash: %v", err)
		}
	}
	if b, _ := os.ReadFile(name); string(b) != "one" {
		t.Fatalf("file holds %q after crash", b)
	}
	if _, err := f.ReadAt(make([]byte, 3), 0); err != nil {
		t.Fatalf("reads fail after crash: %v", err)
	}
	if c.Mutations() != 3 {
		t.Fatalf("counted %d mutations", c.Mutations())
	}
}

func TestCrasherTears(t *testing.T) {
	data := bytes.Repeat([]byte{0xab}, 5*4096)
	kept := map[int64]bool{}
	for seed := uint64(0); seed < 40; seed++ {
		dir := t.TempDir()
		c := NewCrasher(0, 4096, seed)
		fs := Wrap(vfs.Default(), c)
		f, err := fs.OpenFile(filepath.Join(dir, "f"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		c.Arm(1)
		// Offset 100: boundaries at file offsets 4096, 8192, ... 20480.
		_, err = f.WriteAt(data, 100)
		f.Close()
		if !errors.Is(err, ErrCrashed) {
			t.Fatalf("torn write returned %v", err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "f"))
		n := int64(len(b))
		if n > 0 && (n%4096 != 0 || n <= 100) {
			t.Fatalf("torn at file offset %d, not a page boundary", n)
		}
		if n > 0 && !bytes.Equal(b[100:], data[:n-100]) {
			t.Fatal("torn write kept the wrong bytes")
		}
		kept[n] = true
	}
	// Every outcome occurs: nothing, and each of the 5 boundaries.
	if len(kept) != 6 {
		t.Fatalf("outcomes %v", kept)
	}
	// A write within one page is never torn.
	dir := t.TempDir()
	c := NewCrasher(0, 4096, 1)
	fs := Wrap(vfs.Default(), c)
	f, _ := fs.OpenFile(filepath.Join(dir, "f"), os.O_RDWR|os.O_CREATE, 0o644)
	c.Arm(1)
	f.WriteAt(data[:4000], 10)
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); len(b) != 0 {
		t.Fatalf("sub-page write partly applied: %d bytes", len(b))
	}
}
