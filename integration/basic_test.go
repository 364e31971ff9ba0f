package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/proto"
)

func createVDI(t *testing.T, n *node, name string, size uint64) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := n.conn(t).NewVDI(ctx, name, proto.VDIArgs{VDISize: size})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return r.VDIID
}

func openVDI(t *testing.T, n *node, name string) *vdi.VDI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := vdi.Open(ctx, n.conn(t), name, "", 0)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	return v
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestThreeNodesWriteOnAReadOnC writes through one node and reads through
// another with copies=3 over sheepdog's protocol (QEMU's write path).
func TestThreeNodesWriteOnAReadOnC(t *testing.T) {
	c := newCluster(t, 3)
	c.format("3")
	createVDI(t, c.nodes[0], "vol", 64<<20)
	data := randomBytes(20 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, c.nodes[0], "vol").WriteAt(ctx, data, 3<<20+5); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := openVDI(t, c.nodes[2], "vol").ReadAt(ctx, got, 3<<20+5); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data read through node C differs from what was written through node A")
	}
	// Every object has three copies, one per node.
	for i, n := range c.nodes {
		var objs int
		st := n.state(t)
		_ = st
		ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		oids, err := n.conn(t).GetObjList(ctx2, 0)
		cancel2()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range oids {
			if o.IsData() {
				objs++
			}
		}
		if objs != 6 {
			t.Fatalf("node %d holds %d data objects, want 6 (20 MiB at offset 3 MiB spans 6 objects)", i, objs)
		}
	}
}
