package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// TestRepairsUnderWrites: rot keeps appearing in one node's copies while a
// guest writes through another node and reads each write back through
// the rotting node, whose reads try its own copy first, so the rot it
// meets is read-repaired beside the writes, and its scrub repairs the
// rest. No acknowledged write may go missing from any copy: every read
// back returns it, and at the end every node reads the last data written.
func TestRepairsUnderWrites(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1s", "--scrub-rate", "1G")
	c.format("3")
	a, rot := c.nodes[0], c.nodes[2]
	const size = 16 << 20
	vid := createVDI(t, a, "vol", size)
	model := randomBytes(size)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := openVDI(t, a, "vol")
	if err := w.WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	r := openVDI(t, rot, "vol")

	stop := make(chan struct{})
	done := make(chan error, 1)
	writes := 0
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			n := (1 + rng.IntN(16)) * 4096
			off := uint64(rng.IntN((size-n)/4096)) * 4096
			buf := randomBytes(n)
			if err := w.WriteAt(ctx, buf, off); err != nil {
				done <- fmt.Errorf("write at %d+%d: %w", off, n, err)
				return
			}
			copy(model[off:], buf)
			got := make([]byte, n)
			if err := r.ReadAt(ctx, got, off); err != nil {
				done <- fmt.Errorf("read back at %d+%d through %s: %w", off, n, rot.ip, err)
				return
			}
			if !bytes.Equal(got, buf) {
				done <- fmt.Errorf("read back at %d+%d through %s: not the acknowledged write", off, n, rot.ip)
				return
			}
			writes++
		}
	}()
	flips := 0
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); flips++ {
		select {
		case err := <-done:
			t.Fatalf("after %d flips: %v", flips, err)
		case <-time.After(100 * time.Millisecond):
		}
		rot.flipByte(t, proto.DataOID(vid, uint32(rand.IntN(size>>22))), int64(rand.IntN(4<<20)))
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("after %d flips: %v", flips, err)
	}
	t.Logf("verified: %d writes read back through %s while %d bytes of its copies rotted", writes, rot.ip, flips)

	// The scrub repairs the rot nobody read; then every node reads the
	// last data written.
	waitFor(t, "every copy clean", 60*time.Second, func() bool {
		rep := a.check(t, "vol", false)
		return rep.Corrupt+rep.Mismatch+rep.Missing == 0
	})
	for _, n := range c.nodes {
		got := make([]byte, size)
		if err := openVDI(t, n, "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
			t.Fatalf("whole volume through %s: %v, or not the data written", n.ip, err)
		}
	}
	t.Logf("verified: every copy clean and every node reads the data written")
}
