package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/proto"
)

func createVDI(t testing.TB, n *node, name string, size uint64) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := n.conn(t).NewVDI(ctx, name, proto.VDIArgs{VDISize: size})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return r.VDIID
}

func openVDI(t testing.TB, n *node, name string) *vdi.VDI {
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
		if objs := n.objects(t); objs != 6 {
			t.Fatalf("node %d holds %d data objects, want 6 (20 MiB at offset 3 MiB spans 6 objects)", i, objs)
		}
	}
}

// TestOneCopyReadsThroughOtherNodes: with one copy most objects live on
// another node than the one read through, so reads go over the peer path
// (READ_PEER_SUMS with sendfile for whole blocks, READ_PEER for the
// rest; reads of 128 KiB or more inside one object relayed through
// pipes, which the nodes' lent-read counters show). Data comes back identical through every node, and a block
// rotten on its only copy is an error through every other node, never
// data.
func TestOneCopyReadsThroughOtherNodes(t *testing.T) {
	c := newCluster(t, 3)
	c.format("1")
	vid := createVDI(t, c.nodes[0], "vol", 64<<20)
	data := randomBytes(20 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, c.nodes[0], "vol").WriteAt(ctx, data, 3<<20+5); err != nil {
		t.Fatal(err)
	}
	for i, n := range c.nodes {
		got := make([]byte, len(data))
		if err := openVDI(t, n, "vol").ReadAt(ctx, got, 3<<20+5); err != nil {
			t.Fatalf("read through node %d: %v", i, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("data read through node %d differs from what was written through node 0", i)
		}
	}
	// Reads of objects on other nodes were relayed (and of local ones
	// lent): most objects are elsewhere, so some node relayed.
	relayed := 0.0
	for i, n := range c.nodes {
		r, l := n.counter(t, "gosheep_lent_reads_total", "how", "relayed"), n.counter(t, "gosheep_lent_reads_total", "how", "local")
		if r+l == 0 {
			t.Fatalf("node %d lent no read of 20 MiB", i)
		}
		relayed += r
	}
	if relayed == 0 {
		t.Fatal("no node relayed a read of another node's copy")
	}
	// Find a data object and the node holding its only copy.
	holder, oid := -1, proto.OID(0)
	for i, n := range c.nodes {
		for _, o := range n.dataObjects(t) {
			if o.VID() == vid && o.Index() == 2 {
				holder, oid = i, o
			}
		}
	}
	if holder < 0 {
		t.Fatal("no node holds data object 2")
	}
	c.nodes[holder].flipByte(t, oid, 4096*5+7) // object 2 starts at 8 MiB
	other := c.nodes[(holder+1)%3]
	got := make([]byte, 256<<10)
	if err := openVDI(t, other, "vol").ReadAt(ctx, got, 8<<20); err == nil {
		t.Fatal("a block rotten on its only copy was read through another node as data")
	}
	// Nor through the holder itself, where a large read is served from
	// the object file by sendfile after checking it in place.
	if err := openVDI(t, c.nodes[holder], "vol").ReadAt(ctx, got, 8<<20); err == nil {
		t.Fatal("a block rotten on its only copy was read through its holder as data")
	}
	// The blocks around it still read, through either node, the large
	// range through the holder from its file.
	for _, n := range []*node{other, c.nodes[holder]} {
		if err := openVDI(t, n, "vol").ReadAt(ctx, got[:16<<10], 8<<20+32<<10); err != nil {
			t.Fatalf("a sound range of the object: %v", err)
		}
		if want := data[8<<20+32<<10-(3<<20+5):][:16<<10]; !bytes.Equal(got[:16<<10], want) {
			t.Fatal("a sound range of the object read back other data")
		}
		big := make([]byte, 1<<20)
		if err := openVDI(t, n, "vol").ReadAt(ctx, big, 9<<20); err != nil {
			t.Fatalf("a sound MiB of the object: %v", err)
		}
		if !bytes.Equal(big, data[9<<20-(3<<20+5):][:1<<20]) {
			t.Fatal("a sound MiB of the object read back other data")
		}
	}
}

// TestConcurrentCreateSameName races two creates of one name on two nodes:
// the VDI table is ordered by Raft, so exactly one wins.
func TestConcurrentCreateSameName(t *testing.T) {
	c := newCluster(t, 3)
	c.format("2")
	for round := 0; round < 5; round++ {
		name := "race" + string(rune('a'+round))
		errs := make(chan error, 2)
		for _, n := range []*node{c.nodes[1], c.nodes[2]} {
			conn := n.conn(t)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, err := conn.NewVDI(ctx, name, proto.VDIArgs{VDISize: 1 << 30})
				errs <- err
			}()
		}
		e1, e2 := <-errs, <-errs
		ok, exist := 0, 0
		for _, e := range []error{e1, e2} {
			switch {
			case e == nil:
				ok++
			case errors.Is(e, proto.ResVDIExist):
				exist++
			default:
				t.Fatalf("round %d: unexpected error %v", round, e)
			}
		}
		if ok != 1 || exist != 1 {
			t.Fatalf("round %d: %d successes, %d VDI_EXIST; want exactly one of each", round, ok, exist)
		}
	}
	t.Logf("verified: 5 rounds of concurrent creates, exactly one winner each")
}

// TestOneNodeRestartKeepsData writes 64 MiB, restarts the daemon and reads
// it back identical.
func TestOneNodeRestartKeepsData(t *testing.T) {
	c := newCluster(t, 1)
	c.format("1")
	createVDI(t, c.nodes[0], "vol", 128<<20)
	data := randomBytes(64 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, c.nodes[0], "vol").WriteAt(ctx, data, 1<<20); err != nil {
		t.Fatal(err)
	}
	c.nodes[0].restart()
	var got []byte
	waitFor(t, "vdi readable after restart", 30*time.Second, func() bool {
		v, err := vdi.Open(ctx, c.nodes[0].conn(t), "vol", "", 0)
		if err != nil {
			return false
		}
		got = make([]byte, len(data))
		return v.ReadAt(ctx, got, 1<<20) == nil
	})
	if !bytes.Equal(got, data) {
		t.Fatal("data differs after restart")
	}
}

// openVDIOr opens a VDI, returning nil on error.
func openVDIOr(t testing.TB, n *node, name string) *vdi.VDI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := vdi.Open(ctx, n.conn(t), name, "", 0)
	if err != nil {
		return nil
	}
	return v
}

func openSnapshot(ctx context.Context, n *node, name, tag string) (*vdi.VDI, error) {
	c, err := client.Dial(ctx, n.addr())
	if err != nil {
		return nil, err
	}
	return vdi.Open(ctx, c, name, tag, 0)
}
