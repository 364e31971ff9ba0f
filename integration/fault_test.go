package integration

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// block builds the content of write number seq at block idx: recognisable
// and different for every write.
func block(idx, seq int, size int) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(idx), uint64(seq)))
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// TestKillNodeDuringWrites kills -9 one of three nodes (copies=3) while a
// client streams writes through another, then checks that every
// acknowledged write reads back from the survivors.
func TestKillNodeDuringWrites(t *testing.T) {
	c := newCluster(t, 3)
	c.format("3")
	const bs, nblocks = 256 << 10, 96 // 24 MiB: blocks land in 6 objects
	createVDI(t, c.nodes[0], "vol", bs*nblocks)
	v := openVDI(t, c.nodes[0], "vol")

	var mu sync.Mutex
	acked := map[int][32]byte{} // block -> hash of the last acknowledged write
	inflight := map[int][][32]byte{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes, failures int
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				idx := (seq*4 + w) % nblocks
				data := block(idx, seq, bs)
				h := sha256.Sum256(data)
				mu.Lock()
				inflight[idx] = append(inflight[idx], h)
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				err := v.WriteAt(ctx, data, uint64(idx*bs))
				cancel()
				mu.Lock()
				if err == nil {
					acked[idx] = h
					inflight[idx] = nil
					writes++
				} else {
					failures++
					t.Logf("write of block %d failed (not acknowledged): %v", idx, err)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(2 * time.Second)
	t.Logf("injecting: kill -9 node %s", c.nodes[2].ip)
	c.nodes[2].kill()
	// Keep writing through the failure detection and the epoch change.
	epoch0 := c.nodes[0].state(t).State.Epochs
	waitFor(t, "epoch without the killed node", 30*time.Second, func() bool {
		st := c.nodes[0].state(t).State
		return len(st.Epochs) > len(epoch0) && len(st.Current().Members) == 2
	})
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if writes < 20 {
		t.Fatalf("only %d writes were acknowledged", writes)
	}
	// Read every block through the other survivor.
	r := openVDI(t, c.nodes[1], "vol")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	checked := 0
	for idx, want := range acked {
		got := make([]byte, bs)
		if err := r.ReadAt(ctx, got, uint64(idx*bs)); err != nil {
			t.Fatalf("read block %d: %v", idx, err)
		}
		h := sha256.Sum256(got)
		ok := h == want
		for _, alt := range inflight[idx] { // a later, unacknowledged write may have landed
			ok = ok || h == alt
		}
		if !ok {
			t.Fatalf("block %d lost its acknowledged write", idx)
		}
		checked++
	}
	t.Logf("verified: %d acknowledged writes, %d failed (unacknowledged), %d blocks read back intact from the survivors", writes, failures, checked)
	// Flushes through the node that wrote to the dead one succeed, over
	// the sheepdog protocol and over iSCSI: its gateway used to keep the
	// dead node among those to sync, and failed every flush until it came
	// back.
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush through %s after %s died: %v", c.nodes[0].ip, c.nodes[2].ip, err)
	}
	qemuIO(t, iscsiURL(c.nodes[0], "vol"), "write -P 0x5a 0 4k", "flush", "read -P 0x5a 0 4k")
}
