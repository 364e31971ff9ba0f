package integration

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRecoveryAfterNodeReturns: with copies=2 on three nodes, a node is
// killed, data changes, the node returns and catches up only what changed;
// then another node is killed and every byte still reads back, proving
// redundancy was restored with no manual step.
func TestRecoveryAfterNodeReturns(t *testing.T) {
	c := newCluster(t, 3)
	c.format("2")
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	const size = 48 << 20
	createVDI(t, a, "vol", size)
	model := randomBytes(size)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	c.waitRecovered(a, b, cc)

	t.Logf("injecting: kill -9 %s", cc.ip)
	cc.kill()
	waitFor(t, "two-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 2 })
	// Change 8 MiB while it is away.
	patch := randomBytes(8 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, patch, 20<<20); err != nil {
		t.Fatal(err)
	}
	copy(model[20<<20:], patch)
	c.waitRecovered(a, b)

	t.Logf("injecting: restart %s", cc.ip)
	cc.restart()
	waitFor(t, "three-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 3 })
	c.waitRecovered(a, b, cc)
	st := cc.info(t).Recovery
	t.Logf("returning node recovered %d objects (%d bytes)", st.Done, st.Bytes)
	if st.Done > 6 {
		t.Fatalf("returning node copied %d objects; only the few changed ones (3 data objects + inode) should move", st.Done)
	}

	t.Logf("injecting: kill -9 %s", a.ip)
	a.kill()
	waitFor(t, "epoch without a", 30*time.Second, func() bool { return len(b.state(t).State.Current().Members) == 2 })
	got := make([]byte, size)
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("data lost after a node returned and another failed")
	}
	t.Logf("verified: all %d bytes intact after kill, change, return, second kill", size)
}

// TestRecoveryPausesOnFullDisk: a node with a small data directory must
// take a copy of everything once the only other holder dies; its disk
// fills, recovery pauses and says so, and nothing is lost: the survivor
// keeps serving every byte, and once the dead node returns recovery
// completes and every byte survives the loss of the original survivor.
func TestRecoveryPausesOnFullDisk(t *testing.T) {
	c := newCluster(t, 2)
	c.format("2")
	a, b := c.nodes[0], c.nodes[1]
	const size = 40 << 20
	createVDI(t, a, "vol", size)
	model := randomBytes(size)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	small := c.addNode("--capacity", "12M")
	waitFor(t, "three-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 3 })
	c.waitRecovered(a, b, small)

	t.Logf("injecting: kill -9 %s; %s (12 MiB data dir) must now hold a copy of 40 MiB", a.ip, small.ip)
	a.kill()
	waitFor(t, "recovery paused on a full disk", 60*time.Second, func() bool {
		return strings.Contains(small.info(t).Recovery.Paused, "disk full")
	})
	t.Logf("recovery on %s: %q", small.ip, small.info(t).Recovery.Paused)
	got := make([]byte, size)
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("data lost while recovery was paused on a full disk")
	}

	t.Logf("injecting: restart %s", a.ip)
	a.start()
	a.waitListening()
	waitFor(t, "three-member epoch", 30*time.Second, func() bool { return len(b.state(t).State.Current().Members) == 3 })
	c.waitRecovered(a, b, small)
	t.Logf("injecting: kill -9 %s", b.ip)
	b.kill()
	waitFor(t, "epoch without b", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 2 })
	clear(got)
	if err := openVDI(t, a, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("data lost after the paused recovery")
	}
	t.Logf("verified: recovery paused on a full disk without losing a byte, and redundancy came back once the node returned")
}

// TestDiscardWhileNodeAwayStaysDiscarded: an object discarded while one of
// its holders is down must not come back from that holder's old copy when
// it returns. If it did, the next small write to that range would allocate
// into the resurrected object and the rest of it would read back the data
// discarded before, instead of zeros. Replicated and erasure-coded.
func TestDiscardWhileNodeAwayStaysDiscarded(t *testing.T) {
	needTool(t, "qemu-io")
	for _, tc := range []struct {
		nodes  int
		copies string
	}{{3, "3"}, {6, "4:2"}} {
		t.Run(tc.copies, func(t *testing.T) {
			c := newCluster(t, tc.nodes)
			c.format(tc.copies)
			a, away := c.nodes[0], c.nodes[tc.nodes-1]
			createVDI(t, a, "vol", 16<<20)
			qemuIO(t, nbdURL(a, "vol"), "write -P 0x55 0 16M")
			c.waitRecovered(c.nodes...)

			t.Logf("injecting: kill -9 %s, then discard the first 8 MiB (two whole objects) while it is away", away.ip)
			away.kill()
			waitFor(t, "epoch without it", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == tc.nodes-1 })
			qemuIO(t, nbdURL(a, "vol"), "discard 0 8M", "read -P 0 0 8M")
			c.waitRecovered(c.nodes[:tc.nodes-1]...)

			t.Logf("injecting: restart %s", away.ip)
			away.restart()
			waitFor(t, "epoch with it", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == tc.nodes })
			c.waitRecovered(c.nodes...)

			// Allocate both objects again with one small write each, through
			// different nodes; everything else in them must read as zeros
			// everywhere, the returning node included.
			qemuIO(t, nbdURL(a, "vol"), "write -P 0x66 0 4k")
			qemuIO(t, nbdURL(away, "vol"), "write -P 0x67 4M 4k")
			for _, n := range c.nodes {
				qemuIO(t, nbdURL(n, "vol"),
					"read -P 0x66 0 4k", "read -P 0 4k 4092k",
					"read -P 0x67 4M 4k", "read -P 0 4100k 4092k",
					"read -P 0x55 8M 8M")
			}
			t.Logf("verified: discarded objects stayed discarded across the holder's return; re-allocated objects hold only their new writes")
		})
	}
}
