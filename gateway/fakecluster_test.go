package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/erasure"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// fakeCluster is an in-process cluster: every node has a real store on a
// temporary directory and its own Gateway; peers call each other's stores
// directly, checking epochs the way the native peer handlers do. Faults
// are injected per node (down) and per operation (hook).
type fakeCluster struct {
	t      testing.TB
	codecs erasure.Codecs

	mu    sync.Mutex
	view  *View
	newer chan struct{} // closed when the view changes
	nodes []*fakeNode
	// hook, if set, runs before every peer operation; a non-nil error is
	// returned instead of performing it.
	hook func(n *fakeNode, op string, k store.Key) error
	// recoverOnDemand makes a node that lacks a key copy it from any other
	// node first, as the recovery guard does after an epoch change.
	recoverOnDemand bool
	// recovering makes Settled report recovery in progress (EC mutations
	// then settle every strip first).
	recovering atomic.Bool

	readBytes atomic.Int64 // bytes read from stores by gateway peer reads
}

type fakeNode struct {
	n     placement.Node
	st    *store.Disk
	dir   string
	gw    *Gateway
	down  atomic.Bool
	syncs atomic.Int32 // Sync calls it answered
}

type fakeCodecs struct{ cs *erasure.Codecs }

func (c fakeCodecs) Codec(d, p int) (Codec, error) { return c.cs.Get(d, p) }

// newFakeCluster starts n nodes (each its own zone), all in the first view.
func newFakeCluster(t testing.TB, n int) *fakeCluster {
	c := &fakeCluster{t: t, newer: make(chan struct{})}
	for range n {
		c.addNode()
	}
	c.setView(c.nodes...)
	return c
}

func (c *fakeCluster) addNode() *fakeNode {
	i := len(c.nodes)
	dir := filepath.Join(c.t.TempDir(), fmt.Sprint("n", i))
	st, err := store.Open(dir, store.Options{NoSync: true})
	if err != nil {
		c.t.Fatal(err)
	}
	fn := &fakeNode{n: fakeNodeDesc(i), st: st, dir: dir}
	fn.gw = New(Config{Self: fn.n.ID, Views: c, Peers: c, Codecs: fakeCodecs{&c.codecs}, PeerTimeout: 5 * time.Second, DefaultTimeout: 20 * time.Second,
		Logger: slog.New(slog.DiscardHandler), Settled: func(uint32) bool { return !c.recovering.Load() }})
	c.nodes = append(c.nodes, fn)
	c.t.Cleanup(func() {
		waitRepairs(c.t, fn.gw)
		st.Close()
	})
	return fn
}

// fakeNodeDesc is node i of a fake cluster, in its own zone.
func fakeNodeDesc(i int) placement.Node {
	a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), 7000)
	return placement.Node{ID: fmt.Sprint("n", i), Addr: a, Zone: uint32(i + 1), Weight: 1 << 40}
}

// waitRepairs waits for background read repairs to end.
func waitRepairs(t testing.TB, g *Gateway) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		busy := false
		g.repairing.Range(func(any, any) bool { busy = true; return false })
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("read repairs still running")
}

// setView starts a new epoch with members ms.
func (c *fakeCluster) setView(ms ...*fakeNode) {
	var ns []placement.Node
	for _, m := range ms {
		ns = append(ns, m.n)
	}
	c.mu.Lock()
	e := uint32(1)
	if c.view != nil {
		e = c.view.Epoch + 1
	}
	c.view = &View{Epoch: e, Ring: placement.New(ns, placement.Options{})}
	close(c.newer)
	c.newer = make(chan struct{})
	c.mu.Unlock()
}

func (c *fakeCluster) View() *View {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.view
}

func (c *fakeCluster) WaitNewer(ctx context.Context, e uint32) error {
	c.mu.Lock()
	if c.view.Epoch > e {
		c.mu.Unlock()
		return nil
	}
	ch := c.newer
	c.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *fakeCluster) node(id string) *fakeNode {
	for _, n := range c.nodes {
		if n.n.ID == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

func (c *fakeCluster) Peer(n placement.Node) Peer { return &fakePeer{c: c, n: c.node(n.ID)} }

// holder returns the node holding strip i (or the replica) of o now.
func (c *fakeCluster) holder(o Object, i int) *fakeNode {
	ts, err := targets(c.View(), o)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.node(ts[i].ID)
}

// key is the store key of strip i (or the replica) of o.
func key(o Object, i int) store.Key {
	if o.Red.IsEC() {
		return store.StripKey(o.OID, uint8(i))
	}
	return store.ReplicaKey(o.OID)
}

// corrupt flips one byte of k's data at off in n's store file, behind the
// store's back, as bit rot would.
func (c *fakeCluster) corrupt(n *fakeNode, k store.Key, off int64) {
	c.t.Helper()
	path := filepath.Join(n.dir, "obj", k.String())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.t.Fatal(err)
	}
	info, err := n.st.Stat(context.Background(), k)
	if err != nil {
		c.t.Fatal(err)
	}
	// The data is the file's tail: header and checksums come first.
	pos := fi.Size() - int64(info.Size) + off
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, pos); err != nil {
		c.t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, pos); err != nil {
		c.t.Fatal(err)
	}
}

// fakePeer is node n as seen by a gateway.
type fakePeer struct {
	c *fakeCluster
	n *fakeNode
}

// check is what a real peer call goes through before it acts: the node
// up, the epoch, the test's hook, and the caller's context (a request
// whose caller gave up before it was sent never reaches the node).
func (p *fakePeer) check(ctx context.Context, epoch uint32, op string, k store.Key) error {
	if p.n.down.Load() {
		return fmt.Errorf("fake %s down: %w", p.n.n.ID, proto.ResNetworkError)
	}
	v := p.c.View()
	switch {
	case epoch < v.Epoch:
		return proto.ResOldNodeVer
	case epoch > v.Epoch:
		return proto.ResNewNodeVer
	}
	p.c.mu.Lock()
	hook := p.c.hook
	p.c.mu.Unlock()
	if hook != nil {
		if err := hook(p.n, op, k); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.c.recoverOnDemand && op != "create" {
		p.recover(k)
	}
	return nil
}

// recover copies k from another node if this one lacks it.
func (p *fakePeer) recover(k store.Key) {
	ctx := context.Background()
	if _, err := p.n.st.Stat(ctx, k); err == nil {
		return
	}
	for _, o := range p.c.nodes {
		info, err := o.st.Stat(ctx, k)
		if o == p.n || err != nil {
			continue
		}
		buf := make([]byte, info.Size)
		if o.st.Read(ctx, k, 0, buf) == nil {
			p.n.st.Create(ctx, k, info.Size, 0, buf, store.WriteOpts{Epoch: info.Epoch})
			return
		}
	}
}

func (p *fakePeer) Create(ctx context.Context, epoch uint32, k store.Key, size, off uint32, data []byte, sync, excl bool) error {
	if err := p.check(ctx, epoch, "create", k); err != nil {
		return err
	}
	return p.n.st.Create(ctx, k, size, off, data, store.WriteOpts{Sync: sync, Epoch: epoch, Exclusive: excl})
}

func (p *fakePeer) Write(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sums []uint32, sync bool) error {
	if err := p.check(ctx, epoch, "write", k); err != nil {
		return err
	}
	return p.n.st.Write(ctx, k, off, data, store.WriteOpts{Sync: sync, Epoch: epoch, Sums: sums})
}

func (p *fakePeer) Read(ctx context.Context, epoch uint32, k store.Key, off uint32, b []byte) error {
	if err := p.check(ctx, epoch, "read", k); err != nil {
		return err
	}
	p.c.readBytes.Add(int64(len(b)))
	return p.n.st.Read(ctx, k, off, b)
}

func (p *fakePeer) ReadPinned(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error) {
	if err := p.check(ctx, epoch, "read", k); err != nil {
		return nil, err
	}
	return p.n.st.ReadPinned(ctx, k, off, n)
}

func (p *fakePeer) Remove(ctx context.Context, epoch uint32, k store.Key) error {
	if err := p.check(ctx, epoch, "remove", k); err != nil {
		return err
	}
	return p.n.st.Remove(ctx, k)
}

func (p *fakePeer) Zero(ctx context.Context, epoch uint32, k store.Key, off, n uint32, sync bool) error {
	if err := p.check(ctx, epoch, "zero", k); err != nil {
		return err
	}
	return p.n.st.Zero(ctx, k, off, n, store.WriteOpts{Sync: sync, Epoch: epoch})
}

func (p *fakePeer) Heal(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sync bool) error {
	if err := p.check(ctx, epoch, "heal", k); err != nil {
		return err
	}
	_, err := p.n.st.Heal(ctx, k, off, data, store.WriteOpts{Sync: sync, Epoch: epoch})
	return err
}

func (p *fakePeer) ECWrite(ctx context.Context, epoch uint32, o Object, op ECOp, off, n uint32, data []byte, sync bool) error {
	if p.n.down.Load() {
		return fmt.Errorf("fake %s down: %w", p.n.n.ID, proto.ResNetworkError)
	}
	return p.n.gw.HandleECWrite(ctx, epoch, o, op, off, n, data, sync)
}

func (p *fakePeer) Sync(ctx context.Context) error {
	if p.n.down.Load() {
		return proto.ResNetworkError
	}
	p.n.syncs.Add(1)
	return p.n.st.Sync(ctx)
}
