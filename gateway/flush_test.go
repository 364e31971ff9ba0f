package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// A flush after a node died: while the node is still a member the flush
// waits for the epoch without it (rather than failing), then syncs the
// members that hold the written copies; later flushes no longer try the
// dead node. Before, every flush through this gateway failed until the
// node came back. A member that stays unreachable still fails the flush,
// and stays dirty for the next one.
func TestFlushAfterNodeLeaves(t *testing.T) {
	c := newFakeCluster(t, 3)
	a, b, dead := c.nodes[0], c.nodes[1], c.nodes[2]
	o := Object{OID: proto.DataOID(9, 1), Red: proto.Redundancy{Copies: 3}, Size: testObjSize}
	ctx := context.Background()
	if err := a.gw.Create(ctx, o, 0, []byte("acknowledged"), false); err != nil {
		t.Fatal(err)
	}
	dead.down.Store(true)
	done := make(chan error, 1)
	go func() { done <- a.gw.Flush(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("flush returned %v while a member holding a copy was unreachable", err)
	case <-time.After(100 * time.Millisecond):
	}
	c.setView(a, b) // the cluster notices: an epoch without it
	if err := <-done; err != nil {
		t.Fatalf("flush after the epoch without the dead node: %v", err)
	}
	if a.syncs.Load() != 1 || b.syncs.Load() != 1 {
		t.Fatalf("syncs: %d on %s, %d on %s; want the surviving copies synced once each", a.syncs.Load(), a.n.ID, b.syncs.Load(), b.n.ID)
	}
	if err := a.gw.Write(ctx, o, 0, []byte("again"), false); err != nil {
		t.Fatal(err)
	}
	if err := a.gw.Flush(ctx); err != nil {
		t.Fatalf("second flush: %v", err)
	}
	// A member that cannot be reached and does not leave: the flush fails
	// when the caller gives up, and the next one syncs it.
	if err := a.gw.Write(ctx, o, 0, []byte("third"), false); err != nil {
		t.Fatal(err)
	}
	b.down.Store(true)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := a.gw.Flush(short); err == nil {
		t.Fatal("flush succeeded while a member holding a copy was unreachable")
	}
	b.down.Store(false)
	before := b.syncs.Load()
	if err := a.gw.Flush(ctx); err != nil || b.syncs.Load() != before+1 {
		t.Fatalf("flush once the member is back: %v, %d syncs of it (want %d)", err, b.syncs.Load(), before+1)
	}
	if err := a.gw.Flush(ctx); err != nil || b.syncs.Load() != before+1 {
		t.Fatalf("a flush with nothing written since: %v, %d syncs", err, b.syncs.Load())
	}
}

// A node cut off from the metadata quorum serves nothing, not even its
// own copy: the majority may have written newer data without it. Reads
// and writes wait for the quorum until their deadline, and go on once it
// is back.
func TestFencedServesNothing(t *testing.T) {
	c := newFakeCluster(t, 3)
	a := c.nodes[0]
	var fenced atomic.Bool
	a.gw.cfg.Fenced = fenced.Load
	o := Object{OID: proto.DataOID(9, 2), Red: proto.Redundancy{Copies: 3}, Size: testObjSize}
	ctx := context.Background()
	if err := a.gw.Create(ctx, o, 0, []byte("old data"), false); err != nil {
		t.Fatal(err)
	}
	fenced.Store(true)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	buf := make([]byte, 8)
	if err := a.gw.Read(short, o, 0, buf); err == nil {
		t.Fatalf("a fenced node served a read: %q", buf)
	}
	if raw, err := a.gw.ReadPinned(ctx, o, 0, 8); err == nil {
		raw.Release()
		t.Fatal("a fenced node lent a read")
	}
	short2, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if err := a.gw.Write(short2, o, 0, []byte("new data"), false); err == nil {
		t.Fatal("a fenced node took a write")
	}
	done := make(chan error, 1)
	go func() { done <- a.gw.Read(ctx, o, 0, buf) }()
	time.Sleep(50 * time.Millisecond)
	fenced.Store(false)
	if err := <-done; err != nil || string(buf) != "old data" {
		t.Fatalf("read once the quorum is back: %v %q", err, buf)
	}
}
