package gateway

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// TestReadPinned: a node lends a verified range of its own copy and says
// ErrNotLocal where it holds none; a rotten local copy is an error for
// the caller to answer with Read, which reads another copy and repairs.
func TestReadPinned(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 4)
	o := Object{OID: proto.DataOID(7, 1), Red: proto.Redundancy{Copies: 2}, Size: testObjSize}
	data := randBytes(11, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o, 0, data, false); err != nil {
		t.Fatal(err)
	}
	holders := map[*fakeNode]bool{c.holder(o, 0): true, c.holder(o, 1): true}
	const off, n = 8192, 16 << 10
	for _, fn := range c.nodes {
		raw, err := fn.gw.ReadPinned(ctx, o, off, n)
		if !holders[fn] {
			if raw != nil || !errors.Is(err, ErrNotLocal) {
				t.Fatalf("%s holds no copy: %v, want ErrNotLocal", fn.n.ID, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", fn.n.ID, err)
		}
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("%s lent other bytes (%v)", fn.n.ID, err)
		}
		raw.Release()
	}

	if _, err := c.nodes[0].gw.ReadPinned(ctx, o, testObjSize-4096, 8192); err == nil {
		t.Fatal("a range beyond the object was lent")
	}

	h := c.holder(o, 0)
	c.corrupt(h, key(o, 0), off+100)
	if raw, err := h.gw.ReadPinned(ctx, o, off, n); raw != nil || !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("rotten local copy: %v, want ErrCorrupt", err)
	}
	got := make([]byte, n)
	if err := h.gw.Read(ctx, o, off, got); err != nil || !bytes.Equal(got, data[off:off+n]) {
		t.Fatalf("Read after a failed lend: %v", err)
	}
	// The read repaired the local copy (in the background): it lends again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		raw, err := h.gw.ReadPinned(ctx, o, off, n)
		if err == nil {
			raw.Release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lend after repair: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	ec := Object{OID: proto.DataOID(7, 2), Red: proto.Redundancy{Copies: 3, Data: 2, Parity: 1}, Size: testObjSize}
	if err := c.nodes[0].gw.Create(ctx, ec, 0, data, false); err != nil {
		t.Fatal(err)
	}
	for _, fn := range c.nodes {
		if raw, err := fn.gw.ReadPinned(ctx, ec, 0, 4096); raw != nil || !errors.Is(err, ErrNotLocal) {
			t.Fatalf("erasure-coded object on %s: %v, want ErrNotLocal", fn.n.ID, err)
		}
	}
}

// pipedCluster's peers can pipe (PipedPeer): here a pinned read of the
// remote node's store stands for the pipe a real peer stages.
type pipedCluster struct {
	*fakeCluster
	piped map[string]int // ReadPiped calls per node
	hung  atomic.Bool    // every ReadPiped waits for its context to end
}

type pipedPeer struct {
	*fakePeer
	pc *pipedCluster
}

func (c *pipedCluster) Peer(n placement.Node) Peer {
	return &pipedPeer{fakePeer: c.fakeCluster.Peer(n).(*fakePeer), pc: c}
}

func (p *pipedPeer) ReadPiped(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error) {
	if err := p.check(ctx, epoch, "read", k); err != nil {
		return nil, err
	}
	if p.pc.hung.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	p.c.mu.Lock()
	p.pc.piped[p.n.n.ID]++
	p.c.mu.Unlock()
	return p.n.st.ReadPinned(ctx, k, off, n)
}

// TestReadPinnedRelays: a node without a copy relays one from a holder,
// picking among the holders as Read does; a rotten or unreachable copy
// is an error for the caller's Read, never other bytes.
func TestReadPinnedRelays(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 4)
	pc := &pipedCluster{fakeCluster: c, piped: map[string]int{}}
	for _, fn := range c.nodes {
		fn.gw = New(Config{Self: fn.n.ID, Views: c, Peers: pc, Codecs: fakeCodecs{&c.codecs}, PeerTimeout: 500 * time.Millisecond,
			DefaultTimeout: 20 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	}
	o := Object{OID: proto.DataOID(7, 1), Red: proto.Redundancy{Copies: 2}, Size: testObjSize}
	data := randBytes(12, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o, 0, data, false); err != nil {
		t.Fatal(err)
	}
	h0, h1 := c.holder(o, 0), c.holder(o, 1)
	var other *fakeNode
	for _, fn := range c.nodes {
		if fn != h0 && fn != h1 {
			other = fn
		}
	}
	const off, n = 8192, 16 << 10
	for range 40 {
		raw, err := other.gw.ReadPinned(ctx, o, off, n)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("relayed other bytes (%v)", err)
		}
		raw.Release()
	}
	if pc.piped[h0.n.ID] == 0 || pc.piped[h1.n.ID] == 0 || len(pc.piped) != 2 {
		t.Fatalf("relays per node %v: want both holders, and only them", pc.piped)
	}
	// A holder lends its own copy; it never relays.
	for _, h := range []*fakeNode{h0, h1} {
		before := len(pc.piped)
		raw, err := h.gw.ReadPinned(ctx, o, off, n)
		if err != nil {
			t.Fatal(err)
		}
		raw.Release()
		if len(pc.piped) != before {
			t.Fatal("a holder relayed")
		}
	}

	// A hung holder costs PeerTimeout, not the caller's deadline.
	pc.hung.Store(true)
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if raw, err := other.gw.ReadPinned(cctx, o, off, n); raw != nil || err == nil {
		t.Fatal("a relay from a hung holder succeeded")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("a relay from a hung holder took %v", el)
	}
	pc.hung.Store(false)

	c.corrupt(h0, key(o, 0), off+100)
	h1.down.Store(true)
	for range 10 {
		raw, err := other.gw.ReadPinned(ctx, o, off, n)
		if raw != nil || err == nil || errors.Is(err, ErrNotLocal) {
			t.Fatalf("rotten copy and a holder down: %v, want the error", err)
		}
	}
	h1.down.Store(false)
	got := make([]byte, n)
	if err := other.gw.Read(ctx, o, off, got); err != nil || !bytes.Equal(got, data[off:off+n]) {
		t.Fatalf("Read after failed relays: %v", err)
	}
}
