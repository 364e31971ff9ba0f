package volume

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster"
)

// laggingCluster is cluster metadata with one FSM per node. A proposer's
// FSM applies the log at once; the other nodes' apply it only when
// Everywhere asks (or a node proposes itself): followers behind the
// leader, as on a real cluster for a few milliseconds after a commit.
type laggingCluster struct {
	mu      sync.Mutex
	log     []cluster.Command
	fsms    []*cluster.FSM
	applied []int
	// leader applies the whole log as it grows: it answers Decide.
	leader        *cluster.FSM
	leaderApplied int
	// held nodes apply only their own proposals, not at Everywhere (a
	// node slower than Everywhere's bounded wait).
	held map[int]bool
}

func (c *laggingCluster) catchUp(i, upto int) {
	for c.applied[i] < upto {
		cmd := c.log[c.applied[i]]
		c.applied[i]++
		c.fsms[i].ApplyCommand(uint64(c.applied[i]), &cmd)
	}
}

type laggingMeta struct {
	c *laggingCluster
	i int
}

func (m laggingMeta) Read(fn func(s *cluster.State)) { m.c.fsms[m.i].Read(fn) }

func (m laggingMeta) Propose(ctx context.Context, cmd *cluster.Command) (*cluster.Result, error) {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	if cmd.Time == 0 {
		cmd.Time = time.Now().UnixNano()
	}
	m.c.log = append(m.c.log, *cmd)
	m.c.catchUp(m.i, len(m.c.log)-1)
	m.c.applied[m.i]++
	return m.c.fsms[m.i].ApplyCommand(uint64(len(m.c.log)), cmd), nil
}

// Decide answers from the leader's FSM and leaves this node's behind.
func (m laggingMeta) Decide(ctx context.Context, cmd *cluster.Command) (*cluster.Result, error) {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	if cmd.Time == 0 {
		cmd.Time = time.Now().UnixNano()
	}
	m.c.log = append(m.c.log, *cmd)
	var r *cluster.Result
	for m.c.leaderApplied < len(m.c.log) {
		c := m.c.log[m.c.leaderApplied]
		m.c.leaderApplied++
		r = m.c.leader.ApplyCommand(uint64(m.c.leaderApplied), &c)
	}
	return r, nil
}

func (m laggingMeta) Everywhere(ctx context.Context, index uint64) {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	for i := range m.c.fsms {
		if !m.c.held[i] {
			m.c.catchUp(i, int(index))
		}
	}
}

// A snapshot taken through node a, while node b (which has not applied it
// yet) has the VDI open: a write b's device makes after the snapshot call
// returned must go to the new working VDI, and the snapshot must keep
// what it held. Without Everywhere, b's device writes into the snapshot's
// objects.
// twoLaggingNodes returns the managers of nodes a and b over lagging
// metadata, with VDI v (4 MiB) created through a and known to both.
func twoLaggingNodes(t *testing.T) (*Manager, *Manager, *laggingCluster) {
	t.Helper()
	ctx := context.Background()
	lc := &laggingCluster{fsms: []*cluster.FSM{cluster.NewFSM(), cluster.NewFSM()}, applied: make([]int, 2), leader: cluster.NewFSM()}
	objs := newMemObjects()
	var ms [2]*Manager
	for i := range ms {
		m := NewManager(Config{Meta: laggingMeta{lc, i}, Objects: objs})
		lc.fsms[i].Watch(func(old, cur *cluster.State, c *cluster.Command, r *cluster.Result) { m.Changed(old, cur) })
		ms[i] = m
	}
	if r, _ := (laggingMeta{lc, 0}).Propose(ctx, &cluster.Command{Op: cluster.CmdFormat,
		Format: &cluster.Format{Copies: 1, BlockSizeShift: 20}, Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}); r.Err() != nil {
		t.Fatal(r.Err())
	}
	if _, err := ms[0].Create(ctx, CreateOpts{Name: "v", Size: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	lc.all()
	return ms[0], ms[1], lc
}

// all brings every node up to date.
func (c *laggingCluster) all() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.fsms {
		c.catchUp(i, len(c.log))
	}
}

func TestSnapshotHoldsAgainstLaggingNode(t *testing.T) {
	ctx := context.Background()
	a, b, _ := twoLaggingNodes(t)
	before := random(4096)
	db, err := b.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.WriteAt(ctx, before, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Snapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	after := random(4096)
	if err := db.WriteAt(ctx, after, 0, false); err != nil {
		t.Fatal(err)
	}
	snap, err := a.OpenSnapshot(ctx, "v", "s1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, snap, 0, 4096); !bytes.Equal(got, before) {
		t.Fatal("a write through a node that had not applied the snapshot changed the snapshot")
	}
	work, err := a.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, work, 0, 4096); !bytes.Equal(got, after) {
		t.Fatal("the write after the snapshot is missing from the working vdi")
	}
}

// A rollback through node a while node b has the VDI open: b's write
// after the rollback returned must land in the rolled-back working VDI,
// not in the one the rollback discarded.
func TestRollbackHoldsAgainstLaggingNode(t *testing.T) {
	ctx := context.Background()
	a, b, lc := twoLaggingNodes(t)
	db, err := b.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.WriteAt(ctx, random(4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Snapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	lc.all() // b knows of the snapshot: this test is about the rollback
	if err := db.WriteAt(ctx, random(4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rollback(ctx, "v", "s1", 0); err != nil {
		t.Fatal(err)
	}
	after := random(4096)
	if err := db.WriteAt(ctx, after, 8192, false); err != nil {
		t.Fatal(err)
	}
	work, err := a.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, work, 8192, 4096); !bytes.Equal(got, after) {
		t.Fatal("a write acknowledged after the rollback went to the discarded vdi")
	}
}

// Node b allocates an object while a snapshot committed through a has
// not reached b (its apply is late past Everywhere's wait). The leader
// answers b's check with READONLY; b must catch up, so that its device
// reloads and redoes the write on the new working VDI. Had it reloaded
// from its stale state, the retry would have found the object allocated
// and written it in place, into the snapshot only. (The snapshot may keep
// the write too: it was in flight when the snapshot was taken.)
func TestAllocationOnLaggingNodeDuringSnapshot(t *testing.T) {
	ctx := context.Background()
	a, b, lc := twoLaggingNodes(t)
	db, err := b.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	hooked := &hookObjects{memObjects: b.cfg.Objects.(*memObjects)}
	b.cfg.Objects = hooked
	var snapErr error
	hooked.hook = func() {
		lc.mu.Lock()
		lc.held = map[int]bool{1: true}
		lc.mu.Unlock()
		_, snapErr = a.Snapshot(ctx, "v", "s1")
	}
	data := random(4096)
	if err := db.WriteAt(ctx, data, mib, false); err != nil {
		t.Fatalf("write: %v", err)
	}
	if snapErr != nil {
		t.Fatalf("snapshot: %v", snapErr)
	}
	lc.mu.Lock()
	lc.held = nil
	lc.mu.Unlock()
	lc.all()
	work, err := a.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, work, mib, 4096); !bytes.Equal(got, data) {
		t.Fatal("a write acknowledged across the snapshot is missing from the working vdi")
	}
}
