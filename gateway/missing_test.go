package gateway

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// TestWriteRebuildsMissingCopy: a write that finds one copy missing (a
// create torn by a crash, a lost file) while the others exist rebuilds
// that copy whole from another, so it holds the object's acknowledged
// data and not zeros around the written range. An object missing on every
// copy is still "no object", for the caller to allocate.
func TestWriteRebuildsMissingCopy(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 3)
	o := Object{OID: proto.DataOID(9, 2), Red: proto.Redundancy{Copies: 3}, Size: testObjSize}
	data := randBytes(31, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o, 0, data, false); err != nil {
		t.Fatal(err)
	}
	lost := c.holder(o, 1)
	if err := lost.st.Remove(ctx, key(o, 1)); err != nil {
		t.Fatal(err)
	}
	const at = 8192
	newer := randBytes(32, 4096)
	if err := c.nodes[0].gw.Write(ctx, o, at, newer, false); err != nil {
		t.Fatalf("write with one copy missing: %v", err)
	}
	want := append([]byte(nil), data...)
	copy(want[at:], newer)
	for i := range 3 {
		n := c.holder(o, i)
		got := make([]byte, testObjSize)
		if err := n.st.Read(ctx, key(o, i), 0, got); err != nil {
			t.Fatalf("copy on %s: %v", n.n.ID, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("copy on %s holds other bytes than the object (missing copy rebuilt with the written range only?)", n.n.ID)
		}
	}

	for i := range 3 {
		if err := c.holder(o, i).st.Remove(ctx, key(o, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.nodes[0].gw.Write(ctx, o, at, newer, false); !errors.Is(err, proto.ResNoObj) {
		t.Fatalf("write with every copy missing: %v, want ResNoObj", err)
	}
}

// TestReadRepairsMissingCopy: a read that finds a copy missing while
// another has the object answers from the other and recreates the
// missing copy whole in the background.
func TestReadRepairsMissingCopy(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 3)
	o := Object{OID: proto.DataOID(9, 3), Red: proto.Redundancy{Copies: 2}, Size: testObjSize}
	data := randBytes(33, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o, 0, data, false); err != nil {
		t.Fatal(err)
	}
	lost := c.holder(o, 0)
	if err := lost.st.Remove(ctx, key(o, 0)); err != nil {
		t.Fatal(err)
	}
	// Through the node that lost its copy: it reads its own first.
	got := make([]byte, 4096)
	if err := lost.gw.Read(ctx, o, 4096, got); err != nil || !bytes.Equal(got, data[4096:8192]) {
		t.Fatalf("read with the local copy missing: %v", err)
	}
	// The repair runs in the background.
	all := make([]byte, testObjSize)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := lost.st.Read(ctx, key(o, 0), 0, all)
		if err == nil && bytes.Equal(all, data) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the missing copy was not recreated whole: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
