package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// memObjects is an in-memory object space standing in for the gateway.
type memObjects struct {
	mu      sync.Mutex
	objs    map[proto.OID][]byte
	flushes int
}

func newMemObjects() *memObjects { return &memObjects{objs: map[proto.OID][]byte{}} }

func (m *memObjects) Read(ctx context.Context, o gateway.Object, off uint32, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objs[o.OID]
	if !ok {
		return proto.ResNoObj
	}
	copy(p, b[off:])
	return nil
}

func (m *memObjects) Write(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objs[o.OID]
	if !ok {
		return proto.ResNoObj
	}
	copy(b[off:], data)
	return nil
}

func (m *memObjects) Create(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := make([]byte, o.Size)
	copy(b[off:], data)
	m.objs[o.OID] = b
	return nil
}

// CreateExclusive checks and creates under one lock, as a store does: two
// racing allocations must not both see "absent".
func (m *memObjects) CreateExclusive(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, exists := m.objs[o.OID]; exists {
		return fmt.Errorf("%s: %w", o.OID, proto.ResOIDExist)
	}
	b := make([]byte, o.Size)
	copy(b[off:], data)
	m.objs[o.OID] = b
	return nil
}

func (m *memObjects) Discard(ctx context.Context, o gateway.Object, sync bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.objs[o.OID]; ok {
		clear(b)
	}
	return nil
}

func (m *memObjects) Zero(ctx context.Context, o gateway.Object, off, n uint32, sync bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objs[o.OID]
	if !ok {
		return proto.ResNoObj
	}
	clear(b[off : off+n])
	return nil
}

func (m *memObjects) Remove(ctx context.Context, o gateway.Object) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, o.OID)
	return nil
}

func (m *memObjects) Flush(ctx context.Context) error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

// dataObjectsWithData counts data objects holding a non-zero byte: a
// store keeps an all-zero object as holes, which take no space.
func (m *memObjects) dataObjectsWithData() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for oid, b := range m.objs {
		if oid.IsData() && !bytes.Equal(b, make([]byte, len(b))) {
			n++
		}
	}
	return n
}

func (m *memObjects) dataObjects() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for oid := range m.objs {
		if oid.IsData() {
			n++
		}
	}
	return n
}

// fsmMeta applies commands straight to an FSM (no Raft) and feeds the manager.
type fsmMeta struct {
	fsm *cluster.FSM
	idx uint64
	mu  sync.Mutex
	// oldLeader answers Decide as a leader from before CmdCheckWorking:
	// an unknown command, nothing changed.
	oldLeader bool
}

func (f *fsmMeta) Read(fn func(s *cluster.State)) { f.fsm.Read(fn) }

func (f *fsmMeta) Propose(ctx context.Context, c *cluster.Command) (*cluster.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idx++
	if c.Time == 0 {
		c.Time = time.Now().UnixNano()
	}
	return f.fsm.ApplyCommand(f.idx, c), nil
}

func (f *fsmMeta) Decide(ctx context.Context, c *cluster.Command) (*cluster.Result, error) {
	if f.oldLeader {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.idx++
		return &cluster.Result{Code: proto.ResInvalidParms, Message: "unknown command " + c.Op, Index: f.idx}, nil
	}
	return f.Propose(ctx, c)
}

// Everywhere has nothing to wait for: every manager reads this one FSM.
func (f *fsmMeta) Everywhere(context.Context, uint64) {}

func setup(t *testing.T) (*Manager, *memObjects) {
	t.Helper()
	objs := newMemObjects()
	return setupWith(t, objs), objs
}

// setupWith formats a one-member cluster (one copy, 1 MiB objects) whose
// volumes keep their objects in objs.
func setupWith(t *testing.T, objs Objects) *Manager {
	t.Helper()
	meta := &fsmMeta{fsm: cluster.NewFSM()}
	m := NewManager(Config{Meta: meta, Objects: objs})
	meta.fsm.Watch(func(old, cur *cluster.State, c *cluster.Command, r *cluster.Result) { m.Changed(old, cur) })
	r, _ := meta.Propose(context.Background(), &cluster.Command{Op: cluster.CmdFormat,
		Format: &cluster.Format{Copies: 1, BlockSizeShift: 20}, Members: []cluster.Member{{ID: "a"}}})
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	return m
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func mustRead(t *testing.T, d Device, off uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := d.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

const mib = 1 << 20

func TestWriteReadAcrossObjectsAndHoles(t *testing.T) {
	ctx := context.Background()
	m, objs := setup(t)
	if _, err := m.Create(ctx, CreateOpts{Name: "v", Size: 10 * mib}); err != nil {
		t.Fatal(err)
	}
	d, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	data := random(3*mib + 123)
	if err := d.WriteAt(ctx, data, mib/2+7, false); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d, mib/2+7, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	if got := mustRead(t, d, 8*mib, mib); !bytes.Equal(got, make([]byte, mib)) {
		t.Fatal("hole not zero")
	}
	if n := objs.dataObjects(); n != 4 {
		t.Fatalf("%d data objects, want 4 (thin provisioning)", n)
	}
	if err := d.WriteAt(ctx, []byte{1}, 10*mib, false); err == nil {
		t.Fatal("write past end accepted")
	}
	// A second device (another node's view) sees the data through the inode.
	d2, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d2, mib/2+7, len(data)); !bytes.Equal(got, data) {
		t.Fatal("second open reads different data")
	}
	ext, err := d2.Extents(ctx, 0, 10*mib)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 4 * mib, true}, {4 * mib, 6 * mib, false}}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
}

func TestSnapshotCloneRollbackSemantics(t *testing.T) {
	ctx := context.Background()
	m, objs := setup(t)
	m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib})
	d, _ := m.Open(ctx, "v")
	old := random(4 * mib)
	d.WriteAt(ctx, old, 0, false)

	snap, err := m.Snapshot(ctx, "v", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if snap.SnapID != 2 || snap.ParentVID == 0 {
		t.Fatalf("new working vdi %+v", snap)
	}
	// Keep writing to the working VDI: the snapshot keeps the old data.
	newer := random(mib)
	if err := d.WriteAt(ctx, newer, mib, false); err != nil {
		t.Fatal(err)
	}
	sd, err := m.OpenSnapshot(ctx, "v", "s1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, sd, 0, 4*mib); !bytes.Equal(got, old) {
		t.Fatal("snapshot changed after a write to the working vdi")
	}
	if err := sd.WriteAt(ctx, []byte{1}, 0, false); err == nil {
		t.Fatal("write to snapshot accepted")
	}
	want := append(append(append([]byte{}, old[:mib]...), newer...), old[2*mib:]...)
	if got := mustRead(t, d, 0, 4*mib); !bytes.Equal(got, want) {
		t.Fatal("working vdi lost its write or its shared data")
	}
	// Only the COWed object is new.
	if n := objs.dataObjects(); n != 5 {
		t.Fatalf("%d data objects after one COW, want 5", n)
	}

	// Clone the snapshot: independent writes.
	if _, err := m.Clone(ctx, "v", "s1", 0, "c", 0); err != nil {
		t.Fatal(err)
	}
	c, _ := m.Open(ctx, "c")
	cw := random(1000)
	c.WriteAt(ctx, cw, 3*mib+5, false)
	if got := mustRead(t, d, 3*mib+5, 1000); !bytes.Equal(got, old[3*mib+5:3*mib+1005]) {
		t.Fatal("clone write leaked into origin")
	}
	if got := mustRead(t, c, 3*mib+5, 1000); !bytes.Equal(got, cw) {
		t.Fatal("clone lost its write")
	}

	// Rollback the origin to the snapshot: the open device follows.
	if _, err := m.Rollback(ctx, "v", "s1", 0); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d, 0, 4*mib); !bytes.Equal(got, old) {
		t.Fatal("rollback did not restore snapshot data")
	}
	// The rolled-back working vdi's own object is reclaimed by a sweep.
	n, err := m.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("sweep removed %d objects, want 1 (the COW copy of the old working vdi)", n)
	}
}

func TestDiscardFreesAndZeroes(t *testing.T) {
	ctx := context.Background()
	m, objs := setup(t)
	m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib})
	d, _ := m.Open(ctx, "v")
	d.WriteAt(ctx, random(4*mib), 0, false)
	if err := d.Discard(ctx, mib, 2*mib); err != nil {
		t.Fatal(err)
	}
	if n := objs.dataObjectsWithData(); n != 2 {
		t.Fatalf("%d objects hold data after discarding two whole ones, want 2", n)
	}
	ext, err := d.Extents(ctx, 0, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		if e.Offset < 3*mib && e.Offset+e.Length > mib && e.Allocated {
			t.Fatalf("discarded range still mapped: %+v", ext)
		}
	}
	if err := d.Discard(ctx, 100, 200); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d, 0, 4*mib); !bytes.Equal(got[100:300], make([]byte, 200)) || !bytes.Equal(got[mib:3*mib], make([]byte, 2*mib)) {
		t.Fatal("discarded ranges do not read as zeros")
	}
}

func TestDeleteSnapshotKeepsChildData(t *testing.T) {
	ctx := context.Background()
	m, objs := setup(t)
	m.Create(ctx, CreateOpts{Name: "v", Size: 2 * mib})
	d, _ := m.Open(ctx, "v")
	data := random(2 * mib)
	d.WriteAt(ctx, data, 0, false)
	m.Snapshot(ctx, "v", "s")
	if err := m.Delete(ctx, "v", "s", 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := m.Sweep(ctx); n != 0 {
		t.Fatalf("sweep removed %d objects still used by the working vdi", n)
	}
	if got := mustRead(t, d, 0, 2*mib); !bytes.Equal(got, data) {
		t.Fatal("working vdi lost data shared with a deleted snapshot")
	}
	// Overwrite everything: the snapshot's objects become unreferenced.
	d.WriteAt(ctx, random(2*mib), 0, false)
	if n, _ := m.Sweep(ctx); n != 2 {
		t.Fatalf("sweep removed %d, want the 2 objects of the deleted snapshot", n)
	}
	if err := m.Delete(ctx, "v", "", 0); err != nil {
		t.Fatal(err)
	}
	m.Sweep(ctx)
	if n := objs.dataObjects(); n != 0 {
		t.Fatalf("%d data objects left after deleting everything", n)
	}
	if _, err := m.Open(ctx, "v"); err == nil {
		t.Fatal("deleted vdi opens")
	}
}

func TestTwoDevicesSeeEachOthersAllocations(t *testing.T) {
	ctx := context.Background()
	m, _ := setup(t)
	m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib})
	a, _ := m.Open(ctx, "v")
	b, _ := m.Open(ctx, "v") // opened before a writes: its cache says "hole"
	data := random(mib)
	if err := a.WriteAt(ctx, data, mib, false); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, b, mib, mib); !bytes.Equal(got, data) {
		t.Fatal("second device reads a stale hole")
	}
	// b writes part of the object a allocated: it must not re-create it.
	if err := b.WriteAt(ctx, []byte{1, 2, 3}, mib+10, false); err != nil {
		t.Fatal(err)
	}
	copy(data[10:], []byte{1, 2, 3})
	if got := mustRead(t, a, mib, mib); !bytes.Equal(got, data) {
		t.Fatal("write through the second device clobbered the object")
	}
	ext, _ := b.Extents(ctx, 0, 4*mib)
	if len(ext) != 3 || !ext[1].Allocated {
		t.Fatalf("extents %v", ext)
	}
}

// TestConcurrentAllocationFromTwoDevices: two devices (two nodes' front
// ends) allocate the same object at once; neither wipes the other's half.
func TestConcurrentAllocationFromTwoDevices(t *testing.T) {
	ctx := context.Background()
	m, _ := setup(t)
	m.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib})
	for round := 0; round < 20; round++ {
		a, _ := m.Open(ctx, "v")
		b, _ := m.Open(ctx, "v")
		base := uint64(round%4) * mib
		// Make the object a hole again.
		if err := a.Discard(ctx, base, mib); err != nil {
			t.Fatal(err)
		}
		x, y := random(mib/2), random(mib/2)
		var wg sync.WaitGroup
		var errA, errB error
		wg.Add(2)
		go func() { defer wg.Done(); errA = a.WriteAt(ctx, x, base, false) }()
		go func() { defer wg.Done(); errB = b.WriteAt(ctx, y, base+mib/2, false) }()
		wg.Wait()
		if errA != nil || errB != nil {
			t.Fatalf("round %d: writes failed: %v, %v", round, errA, errB)
		}
		got := mustRead(t, a, base, mib)
		if !bytes.Equal(got[:mib/2], x) || !bytes.Equal(got[mib/2:], y) {
			t.Fatalf("round %d: a concurrent allocation wiped the other writer's data", round)
		}
	}
}

// TestWritesInParts: only single-copy volumes take large writes in parts
// (the cluster default here is one copy).
func TestWritesInParts(t *testing.T) {
	ctx := context.Background()
	m, _ := setup(t)
	for _, tc := range []struct {
		name string
		red  proto.Redundancy
		want bool
	}{
		{"default", proto.Redundancy{}, true},
		{"one copy", proto.Redundancy{Copies: 1}, true},
		{"three copies", proto.Redundancy{Copies: 3}, false},
		{"erasure coded", proto.Redundancy{Copies: 3, Data: 2, Parity: 1}, false},
	} {
		if _, err := m.Create(ctx, CreateOpts{Name: tc.name, Size: mib, Redundancy: tc.red}); err != nil {
			t.Fatal(err)
		}
		d, err := m.Open(ctx, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.(PartWriter).WritesInParts(); got != tc.want {
			t.Errorf("%s: WritesInParts %v, want %v", tc.name, got, tc.want)
		}
		d.Close()
	}
}
