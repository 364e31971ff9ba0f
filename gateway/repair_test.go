package gateway

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// TestReadRepairKeepsConcurrentWrite: a read repair reads the good copy,
// then rewrites the rotten one. A write that reaches both copies in
// between must survive on both: the repair may only replace the rotten
// blocks, not put back the bytes the write replaced.
func TestReadRepairKeepsConcurrentWrite(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 3)
	o := Object{OID: proto.DataOID(9, 1), Red: proto.Redundancy{Copies: 2}, Size: testObjSize}
	data := randBytes(21, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o, 0, data, false); err != nil {
		t.Fatal(err)
	}
	good, bad := c.holder(o, 0), c.holder(o, 1)
	const rotAt, writeAt = 8192 + 100, 32768
	c.corrupt(bad, key(o, 1), rotAt)

	// When the repair is about to rewrite the bad copy (it has read the
	// good one), a write of other blocks goes to both copies first.
	newer := randBytes(22, 16<<10)
	var once sync.Once
	var werr error
	c.mu.Lock()
	c.hook = func(n *fakeNode, op string, k store.Key) error {
		if n == bad && (op == "create" || op == "heal") {
			once.Do(func() { werr = good.gw.Write(ctx, o, writeAt, newer, false) })
		}
		return nil
	}
	c.mu.Unlock()

	// Read the rotten range through the bad copy's node, which reads its
	// own copy first, fails, reads the good one and repairs.
	got := make([]byte, 4096)
	if err := bad.gw.Read(ctx, o, 8192, got); err != nil || !bytes.Equal(got, data[8192:8192+4096]) {
		t.Fatalf("read over the rot: %v", err)
	}
	// The repair runs in the background: wait for the bad copy to verify.
	deadline := time.Now().Add(10 * time.Second)
	for bad.st.Verify(ctx, key(o, 1)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the rotten copy was not repaired")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.mu.Lock()
	c.hook = nil
	c.mu.Unlock()
	if werr != nil {
		t.Fatalf("the concurrent write: %v", werr)
	}
	want := append([]byte(nil), data...)
	copy(want[writeAt:], newer)
	for _, n := range []*fakeNode{good, bad} {
		all := make([]byte, testObjSize)
		if err := n.st.Read(ctx, key(o, 0), 0, all); err != nil {
			t.Fatalf("%s: %v", n.n.ID, err)
		}
		if !bytes.Equal(all, want) {
			t.Errorf("%s's copy lost the write made during the repair (or was not repaired)", n.n.ID)
		}
	}
}
