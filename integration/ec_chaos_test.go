package integration

import (
	"context"
	"testing"
	"time"

	gcluster "github.com/gosheep/gosheep/cluster"
)

// TestECKillDuringWrites: a 4:2 volume on six nodes takes a write stream
// while one node is killed, through the epoch change and the recovery that
// follows (throttled, so writes keep landing on stripes whose strips are
// still being rebuilt), and then a second node is killed. Every
// acknowledged write reads back, and once recovery is over every strip is
// present and consistent.
func TestECKillDuringWrites(t *testing.T) {
	// Six nodes get five Raft voters by default: metadata keeps a quorum
	// with any two nodes down.
	c := newCluster(t, 6)
	c.format("4:2")
	a, b := c.nodes[0], c.nodes[1]
	const bs, nblocks = 64 << 10, 512 // 32 MiB: 8 objects
	createVDI(t, a, "vol", bs*nblocks)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, randomBytes(bs*nblocks), 0); err != nil {
		t.Fatal(err)
	}
	a.throttle(t, gcluster.Throttle{MaxRate: 2 << 20, Concurrency: 1})
	waitVoters(t, a, 5)
	h := newHistory(bs)
	stop := make(chan struct{})
	wg := h.writer(t, a.opener("vol"), 0, nblocks, 4, stop)
	time.Sleep(time.Second)

	first, second := c.nodes[5], c.nodes[4]
	t.Logf("injecting: kill -9 %s during the write stream", first.ip)
	first.kill()
	waitFor(t, "five-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 5 })
	time.Sleep(3 * time.Second) // writes against strips being rebuilt
	t.Logf("writes so far: %s; injecting: kill -9 %s during recovery", h.counts(), second.ip)
	second.kill()
	waitFor(t, "four-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 4 })
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("write stream: %s", h.counts())
	a.throttle(t, gcluster.Throttle{})
	v, err := b.opener("vol")()
	if err != nil {
		t.Fatal(err)
	}
	h.verify(t, v)
	c.waitRecovered(c.nodes[:4]...)
	if rep := a.check(t, "vol", false); rep.Corrupt != 0 || rep.Missing != 0 || rep.Mismatch != 0 || rep.Unreachable != 0 {
		t.Fatalf("check after recovery: %+v", rep)
	}
	h.verify(t, v)
	t.Logf("verified: after recovery every strip is present and consistent")
}
