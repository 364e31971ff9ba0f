package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// lendingObjects lends ranges of its objects, as the gateway lends this
// node's copies.
type lendingObjects struct {
	*memObjects
	fail error // every lend fails with it
}

func (l *lendingObjects) ReadPinned(ctx context.Context, o gateway.Object, off, n uint32) (*store.Raw, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return nil, l.fail
	}
	b, ok := l.objs[o.OID]
	if !ok {
		return nil, proto.ResNoObj
	}
	if uint64(off)+uint64(n) > uint64(len(b)) {
		return nil, fmt.Errorf("%s: %d+%d beyond the object", o.OID, off, n)
	}
	return &store.Raw{Src: bytes.NewReader(bytes.Clone(b)), Off: int64(off), N: int(n)}, nil
}

func lentBytes(t *testing.T, l *Lent) []byte {
	t.Helper()
	defer l.Release()
	b := make([]byte, l.N)
	if _, err := l.Src.ReadAt(b, l.Off); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadLent(t *testing.T) {
	ctx := context.Background()
	objs := &lendingObjects{memObjects: newMemObjects()}
	m := setupWith(t, objs)
	if _, err := m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	d, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	data := random(2 * mib)
	if err := d.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	lender := d.(Lender)
	for _, c := range []struct{ off, n uint64 }{{0, mib}, {4096, 64 << 10}, {mib + 512, 1000}} {
		l, err := lender.ReadLent(ctx, c.off, c.n)
		if err != nil {
			t.Fatalf("%d+%d: %v", c.off, c.n, err)
		}
		if got := lentBytes(t, l); !bytes.Equal(got, data[c.off:c.off+c.n]) {
			t.Fatalf("%d+%d: lent other bytes", c.off, c.n)
		}
	}
	for _, c := range []struct {
		name   string
		off, n uint64
		want   error
	}{
		{"across objects", mib - 4096, 8192, ErrNotLent},
		{"a hole", 3 * mib, 4096, ErrNotLent},
		{"nothing", 0, 0, ErrNotLent},
		{"beyond the end", 4*mib - 4096, 8192, ErrOutOfRange},
	} {
		if l, err := lender.ReadLent(ctx, c.off, c.n); l != nil || !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}

	// A clone lends its parent's objects until it writes its own.
	if _, err := m.Snapshot(ctx, "v", "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(ctx, "v", "s", 0, "c", 0); err != nil {
		t.Fatal(err)
	}
	cd, err := m.Open(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	l, err := cd.(Lender).ReadLent(ctx, mib, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if got := lentBytes(t, l); !bytes.Equal(got, data[mib:mib+8192]) {
		t.Fatal("clone lent other bytes than its parent's")
	}
	mine := random(8192)
	if err := cd.WriteAt(ctx, mine, mib, false); err != nil {
		t.Fatal(err)
	}
	if l, err = cd.(Lender).ReadLent(ctx, mib, 8192); err != nil {
		t.Fatal(err)
	}
	if got := lentBytes(t, l); !bytes.Equal(got, mine) {
		t.Fatal("clone lent its parent's bytes after writing its own")
	}

	// A failed lend is passed on for the caller to read instead.
	objs.fail = store.ErrCorrupt
	if _, err := lender.ReadLent(ctx, 0, 4096); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("failed lend: %v", err)
	}
}

// TestReadLentWithoutPinning: objects that cannot lend make every range
// unlendable.
func TestReadLentWithoutPinning(t *testing.T) {
	ctx := context.Background()
	m, _ := setup(t)
	if _, err := m.Create(ctx, CreateOpts{Name: "v", Size: mib}); err != nil {
		t.Fatal(err)
	}
	d, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, random(4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if l, err := d.(Lender).ReadLent(ctx, 0, 4096); l != nil || !errors.Is(err, ErrNotLent) {
		t.Fatalf("%v, want ErrNotLent", err)
	}
}
