package store

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

func dirtyKeys(t *testing.T, d *Disk) map[Key]bool {
	t.Helper()
	objs, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[Key]bool{}
	for _, o := range objs {
		m[o.Key] = o.Dirty
	}
	return m
}

// TestListMarksDirty: List marks the objects mutated since their file was
// last closed cleanly, both while open and, after a crash, from their
// headers; a clean close clears the mark.
func TestListMarksDirty(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, filepath.Join(dir, "s"), Options{})
	written, created := ReplicaKey(proto.DataOID(1, 0)), ReplicaKey(proto.DataOID(1, 1))
	for _, k := range []Key{written, created} {
		if err := d.Create(ctx, k, 1<<20, 0, make([]byte, 4096), WriteOpts{Epoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = openT(t, filepath.Join(dir, "s"), Options{})
	if got := dirtyKeys(t, d); got[written] || got[created] {
		t.Fatalf("after a clean close: %v, want nothing dirty", got)
	}
	if err := d.Write(ctx, written, 8192, make([]byte, 4096), WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if got := dirtyKeys(t, d); !got[written] || got[created] {
		t.Fatalf("after a write: %v, want only the written object dirty", got)
	}
	// A crash: the files as they are now, without the close.
	if out, err := exec.Command("cp", "-a", filepath.Join(dir, "s"), filepath.Join(dir, "crashed")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	c := openT(t, filepath.Join(dir, "crashed"), Options{})
	if got := dirtyKeys(t, c); !got[written] || got[created] {
		t.Fatalf("after a crash: %v, want only the written object dirty", got)
	}
}
