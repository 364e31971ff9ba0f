package integration

import (
	"fmt"
	"testing"
	"time"
)

// TestNodeReturnsUnderWrites: a node is killed while a client streams
// writes, and comes back while the stream goes on, so its recovery races
// writes to the very objects it is catching up on. Every acknowledged
// write reads back; then the nodes that stayed up longest are killed (as
// many as the redundancy allows) and every acknowledged write must still
// read back from what is left, the returning node's copies included.
// Replicated and erasure-coded.
func TestNodeReturnsUnderWrites(t *testing.T) {
	for _, tc := range []struct {
		nodes, lose int
		copies      string
	}{{3, 1, "2"}, {6, 2, "4:2"}} {
		t.Run(tc.copies, func(t *testing.T) {
			// Five Raft voters on six nodes: metadata keeps a quorum with
			// any two down.
			c := newCluster(t, tc.nodes, "--voters", fmt.Sprint(min(tc.nodes, 5)))
			c.format(tc.copies)
			a, away := c.nodes[0], c.nodes[tc.nodes-1]
			const bs, nblocks = 64 << 10, 384 // 24 MiB: 6 objects
			createVDI(t, a, "vol", bs*nblocks)
			h := newHistory(bs)
			stop := make(chan struct{})
			wg := h.writer(t, a.opener("vol"), 0, nblocks, 4, stop)
			time.Sleep(time.Second)

			t.Logf("injecting: kill -9 %s during the write stream", away.ip)
			away.kill()
			waitFor(t, "epoch without it", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == tc.nodes-1 })
			time.Sleep(2 * time.Second)
			t.Logf("writes so far: %s; injecting: restart %s during the write stream", h.counts(), away.ip)
			away.restart()
			waitFor(t, "epoch with it", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == tc.nodes })
			c.waitRecovered(c.nodes...)
			time.Sleep(time.Second)
			close(stop)
			wg.Wait()
			t.Logf("write stream: %s", h.counts())
			v, err := away.opener("vol")()
			if err != nil {
				t.Fatal(err)
			}
			h.verify(t, v)

			// Lose the nodes that never went away: what is left, the
			// returning node included, must hold every acknowledged write.
			if tc.lose > 1 {
				waitVoters(t, a, 5)
			}
			for _, n := range c.nodes[1 : 1+tc.lose] {
				t.Logf("injecting: kill -9 %s", n.ip)
				n.kill()
			}
			waitFor(t, "epoch without them", 30*time.Second, func() bool {
				return len(a.state(t).State.Current().Members) == tc.nodes-tc.lose
			})
			v, err = away.opener("vol")()
			if err != nil {
				t.Fatal(err)
			}
			h.verify(t, v)
		})
	}
}
