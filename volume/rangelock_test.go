package volume

import (
	"bytes"
	"context"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// blocks reports whether taking b while a is held waits.
func blocks(t *testing.T, a, b [4]uint32) bool {
	t.Helper()
	var l rangeLocks
	unlock := l.lock(a[0], a[1], a[2], a[3] == 1)
	got := make(chan func())
	go func() { got <- l.lock(b[0], b[1], b[2], b[3] == 1) }()
	select {
	case u := <-got:
		u()
		unlock()
		return false
	case <-time.After(20 * time.Millisecond):
	}
	unlock()
	select {
	case u := <-got:
		u()
	case <-time.After(5 * time.Second):
		t.Fatal("never granted after release")
	}
	return true
}

func TestRangeLocksConflicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b [4]uint32 // idx, lo, hi, excl
		want bool
	}{
		{"disjoint ranges of one object", [4]uint32{1, 0, 4096, 0}, [4]uint32{1, 4096, 8192, 0}, false},
		{"overlapping ranges", [4]uint32{1, 0, 4097, 0}, [4]uint32{1, 4096, 8192, 0}, true},
		{"same range", [4]uint32{1, 0, 4096, 0}, [4]uint32{1, 0, 4096, 0}, true},
		{"exclusive holder", [4]uint32{1, 0, 1, 1}, [4]uint32{1, 8192, 9000, 0}, true},
		{"exclusive waiter", [4]uint32{1, 8192, 9000, 0}, [4]uint32{1, 0, 1, 1}, true},
		{"other object, same stripe", [4]uint32{1, 0, 4096, 1}, [4]uint32{65, 0, 4096, 1}, false},
		{"other object", [4]uint32{1, 0, 4096, 1}, [4]uint32{2, 0, 4096, 1}, false},
	} {
		if got := blocks(t, tc.a, tc.b); got != tc.want {
			t.Errorf("%s: blocks = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Holders of overlapping ranges never run together, under load.
func TestRangeLocksExclusion(t *testing.T) {
	var l rangeLocks
	var inside [4]atomic.Int32 // per 1 KiB block of object 7
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				lo := uint32((g + i) % 4)
				hi := lo + 1 + uint32(i%2)
				hi = min(hi, 4)
				excl := i%17 == 0
				if excl {
					lo, hi = 0, 4
				}
				unlock := l.lock(7, lo*1024, hi*1024, excl)
				for b := lo; b < hi; b++ {
					if inside[b].Add(1) != 1 {
						t.Errorf("two holders of block %d", b)
					}
				}
				time.Sleep(10 * time.Microsecond)
				for b := lo; b < hi; b++ {
					inside[b].Add(-1)
				}
				unlock()
			}
		}()
	}
	wg.Wait()
}

// twoCopies is memObjects with a second copy of every object that each
// Write updates separately, in an order picked per write and with a pause
// between: overlapping writes the volume lets run together leave the two
// copies different, as they would leave a cluster's copies.
type twoCopies struct {
	*memObjects
	mu     sync.Mutex
	second map[proto.OID][]byte
}

func (c *twoCopies) create(o gateway.Object, off uint32, data []byte) {
	c.mu.Lock()
	b := make([]byte, o.Size)
	copy(b[off:], data)
	c.second[o.OID] = b
	c.mu.Unlock()
}

func (c *twoCopies) Create(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	c.create(o, off, data)
	return c.memObjects.Create(ctx, o, off, data, sync)
}

func (c *twoCopies) CreateExclusive(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	err := c.memObjects.CreateExclusive(ctx, o, off, data, sync)
	if err == nil {
		c.create(o, off, data)
	}
	return err
}

func (c *twoCopies) Write(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	second := func() {
		c.mu.Lock()
		copy(c.second[o.OID][off:], data)
		c.mu.Unlock()
	}
	firstSecond := mrand.IntN(2) == 0
	if firstSecond {
		second()
	}
	time.Sleep(time.Duration(mrand.IntN(50)) * time.Microsecond)
	if err := c.memObjects.Write(ctx, o, off, data, sync); err != nil {
		return err
	}
	if !firstSecond {
		second()
	}
	return nil
}

// Concurrent overlapping writes to one object reach every copy in the same
// order; disjoint ones may run together.
func TestOverlappingWritesKeepCopiesEqual(t *testing.T) {
	ctx := context.Background()
	meta := &fsmMeta{fsm: cluster.NewFSM()}
	objs := &twoCopies{memObjects: newMemObjects(), second: map[proto.OID][]byte{}}
	m := NewManager(Config{Meta: meta, Objects: objs})
	meta.fsm.Watch(func(old, cur *cluster.State, c *cluster.Command, r *cluster.Result) { m.Changed(old, cur) })
	r, _ := meta.Propose(ctx, &cluster.Command{Op: cluster.CmdFormat,
		Format: &cluster.Format{Copies: 1, BlockSizeShift: 20}, Members: []cluster.Member{{ID: "a"}}})
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	if _, err := m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	d, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, make([]byte, mib), 0, false); err != nil { // allocate object 0
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; i < 40; i++ {
				for j := range buf {
					buf[j] = byte(g*40 + i)
				}
				if err := d.WriteAt(ctx, buf, uint64(mrand.IntN(6))*2048, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	v, err := m.Lookup("v", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(v.VID, 0)
	objs.mu.Lock()
	defer objs.mu.Unlock()
	if !bytes.Equal(objs.objs[oid], objs.second[oid]) {
		t.Fatal("the two copies differ after concurrent overlapping writes")
	}
}
