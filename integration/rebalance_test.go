package integration

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// TestRebalanceOnJoin adds a fourth node to a three-node cluster (copies=2)
// and checks it takes about a quarter of the copies, that old copies are
// purged once the new placement holds them, and that the data is intact.
func TestRebalanceOnJoin(t *testing.T) {
	c := newCluster(t, 3)
	c.format("2")
	a := c.nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// 1 MiB objects: 96 objects, 192 copies.
	if _, err := a.conn(t).NewVDI(ctx, "vol", proto.VDIArgs{VDISize: 96 << 20, BlockSizeShift: 20}); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(96 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	c.waitRecovered(c.nodes...)
	before := 0
	for _, n := range c.nodes {
		before += n.objects(t)
	}
	t.Logf("injecting: add a fourth node (%d copies on 3 nodes)", before)
	d := c.addNode()
	waitFor(t, "four-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 4 })
	c.waitRecovered(c.nodes...)
	var total int
	waitFor(t, "stale copies purged", 60*time.Second, func() bool {
		total = 0
		for _, n := range c.nodes {
			total += n.objects(t)
		}
		return total == before
	})
	moved := d.objects(t)
	ideal := float64(before) / 4
	t.Logf("new node holds %d copies (ideal %.0f of %d)", moved, ideal, total)
	if float64(moved) < 0.55*ideal || float64(moved) > 1.45*ideal {
		t.Fatalf("new node took %d copies, far from 1/4 of %d", moved, before)
	}
	if st := d.info(t).Recovery; int(st.Done) != moved {
		t.Fatalf("new node recovered %d objects but holds %d: something else moved", st.Done, moved)
	}
	got := make([]byte, len(data))
	if err := openVDI(t, d, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data differs after rebalance")
	}
	t.Logf("verified: %d of %d copies moved to the new node (%.1f%%, ideal 25%%), stale copies purged, data intact", moved, before, 100*float64(moved)/float64(before))
}
