package integration

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
	gcluster "github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
)

// meta runs an OpMeta request through n.
func (n *node) meta(t testing.TB, req api.MetaRequest) (*gcluster.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r gcluster.Result
	if err := n.conn(t).Meta(ctx, proto.OpMeta, req, &r); err != nil {
		return nil, err
	}
	return &r, r.Err()
}

// throttle sets the cluster's recovery throttle through n (the zero value
// lifts it).
func (n *node) throttle(t testing.TB, th gcluster.Throttle) {
	t.Helper()
	if _, err := n.meta(t, api.MetaRequest{Propose: &gcluster.Command{Op: gcluster.CmdThrottle, Throttle: th}}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) healthy(nodes ...*node) {
	c.t.Helper()
	waitFor(c.t, "every node healthy and in one epoch", 90*time.Second, func() bool {
		var e uint32
		for i, n := range nodes {
			ni := n.info(c.t)
			if !ni.Healthy || (i > 0 && ni.Epoch != e) {
				return false
			}
			e = ni.Epoch
		}
		return len(nodes[0].state(c.t).State.Current().Members) == len(nodes)
	})
}

// TestRestartWholeClusterRandomOrder kills every node with -9 while writes
// stream, restarts them in random order, and needs no manual step to serve
// again with every acknowledged write intact.
func TestRestartWholeClusterRandomOrder(t *testing.T) {
	c := newCluster(t, 3)
	c.format("2")
	const bs = 128 << 10
	createVDI(t, c.nodes[0], "vol", 64*bs)
	h := newHistory(bs)
	stop := make(chan struct{})
	wg := h.writer(t, c.nodes[0].opener("vol"), 0, 64, 4, stop)
	time.Sleep(2 * time.Second)
	order := rand.Perm(3)
	t.Logf("injecting: kill -9 every node (writes in flight: %s)", h.counts())
	for _, n := range c.nodes {
		n.kill()
	}
	close(stop)
	wg.Wait()
	for _, i := range order {
		t.Logf("injecting: restart %s", c.nodes[i].ip)
		c.nodes[i].start()
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Millisecond)
	}
	for _, n := range c.nodes {
		n.waitListening()
	}
	c.healthy(c.nodes...)
	v, err := c.nodes[order[0]].opener("vol")()
	if err != nil {
		t.Fatal(err)
	}
	h.verify(t, v)
	// And it takes writes again.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.WriteAt(ctx, make([]byte, bs), 0); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

// TestKillDuringRecovery kills a second node while the cluster is still
// recovering from the first failure (copies=3, throttled recovery), with
// writes streaming throughout.
func TestKillDuringRecovery(t *testing.T) {
	c := newCluster(t, 4)
	c.format("3")
	a, b, cc, d := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]
	const bs = 1 << 20
	createVDI(t, a, "vol", 48*bs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, randomBytes(48*bs), 0); err != nil {
		t.Fatal(err)
	}
	// Slow recovery down so the second failure lands in the middle of it.
	a.throttle(t, gcluster.Throttle{MaxRate: 4 << 20, Concurrency: 1})
	h := newHistory(bs)
	stop := make(chan struct{})
	wg := h.writer(t, a.opener("vol"), 0, 48, 2, stop)
	t.Logf("injecting: kill -9 %s", d.ip)
	d.kill()
	waitFor(t, "recovery running", 60*time.Second, func() bool {
		for _, n := range []*node{a, b, cc} {
			if st := n.info(t).Recovery; st.Active && st.Done > 0 {
				return true
			}
		}
		return false
	})
	t.Logf("injecting: kill -9 %s during recovery", cc.ip)
	cc.kill()
	waitFor(t, "two-member epoch", 60*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 2 })
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	a.throttle(t, gcluster.Throttle{})
	v, err := b.opener("vol")()
	if err != nil {
		t.Fatal(err)
	}
	h.verify(t, v)
	c.waitRecovered(a, b)
}

// TestKillDuringSnapshot kills the node taking snapshots in the middle of a
// snapshot storm while another node streams writes: every snapshot that
// was confirmed stays readable, the volume keeps every acknowledged write.
func TestKillDuringSnapshot(t *testing.T) {
	c := newCluster(t, 3)
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	const bs = 256 << 10
	createVDI(t, a, "vol", 32*bs)
	h := newHistory(bs)
	stop := make(chan struct{})
	wg := h.writer(t, a.opener("vol"), 0, 32, 2, stop)
	var taken []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			tag := "s" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			if _, err := b.meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolSnapshot, Name: "vol", Tag: tag}}); err != nil {
				t.Logf("snapshot %s ended the storm: %v", tag, err)
				return // b died
			}
			taken = append(taken, tag)
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	t.Logf("injecting: kill -9 %s while it takes snapshots", b.ip)
	b.kill()
	<-done
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	v, err := a.opener("vol")()
	if err != nil {
		t.Fatal(err)
	}
	h.verify(t, v)
	st := a.state(t).State
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	buf := make([]byte, bs)
	for _, tag := range taken {
		if _, err := st.Lookup("vol", tag, 0); err != nil {
			t.Fatalf("confirmed snapshot %s missing: %v", tag, err)
		}
		sv, err := openSnapshot(ctx, a, "vol", tag)
		if err != nil {
			t.Fatalf("snapshot %s: %v", tag, err)
		}
		for i := 0; i < 32; i++ {
			if err := sv.ReadAt(ctx, buf, uint64(i*bs)); err != nil {
				t.Fatalf("snapshot %s block %d: %v", tag, i, err)
			}
		}
	}
	if _, err := st.Lookup("vol", "", 0); err != nil {
		t.Fatalf("working vdi lost: %v", err)
	}
	t.Logf("verified: %d confirmed snapshots readable after the kill", len(taken))
}

// TestFillSmallDataDir fills nodes whose data directories offer 48 MiB:
// writes fail with a clear no-space error, nothing crashes, and what was
// written before reads back.
func TestFillSmallDataDir(t *testing.T) {
	c := newCluster(t, 3, "--capacity", "48M")
	c.format("3")
	a := c.nodes[0]
	createVDI(t, a, "vol", 256<<20)
	v := openVDI(t, a, "vol")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var written int
	var last error
	chunk := randomBytes(4 << 20)
	for i := 0; i < 64; i++ {
		if last = v.WriteAt(ctx, chunk, uint64(i)*(4<<20)); last != nil {
			break
		}
		written++
	}
	t.Logf("injecting: filled the 48 MiB data directories after %d objects (%v)", written, last)
	if last == nil || !errors.Is(last, proto.ResNoSpace) {
		t.Fatalf("writing past capacity: %v, want a no-space error", last)
	}
	if written < 6 {
		t.Fatalf("only %d objects fit", written)
	}
	for _, n := range c.nodes {
		if !n.info(t).Healthy {
			t.Fatalf("%s unhealthy after disk full", n.ip)
		}
	}
	got := make([]byte, 4<<20)
	for i := 0; i < written; i++ {
		if err := v.ReadAt(ctx, got, uint64(i)*(4<<20)); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(chunk) {
			t.Fatalf("object %d differs after disk full", i)
		}
	}
	// Deleting the VDI frees the space again.
	if _, err := a.meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolDelete, Name: "vol"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "space reclaimed", 90*time.Second, func() bool {
		return a.info(t).Usage.Used < 16<<20
	})
	t.Logf("verified: no-space error, no crash, %d objects intact, space reclaimed after delete", written)
	_ = json.Marshal
}

func metaDelete(name string) api.MetaRequest {
	return api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolDelete, Name: name}}
}

// TestClusterShutdownAndRestart: `cluster shutdown` stops every node; when
// they all come back the cluster resumes by itself with its data.
func TestClusterShutdownAndRestart(t *testing.T) {
	c := newCluster(t, 3)
	c.format("2")
	createVDI(t, c.nodes[0], "vol", 16<<20)
	data := randomBytes(8 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, c.nodes[0], "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("injecting: cluster shutdown through %s", c.nodes[1].ip)
	if err := c.nodes[1].conn(t).Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still running after cluster shutdown", n.ip)
		}
	}
	for _, i := range rand.Perm(3) {
		c.nodes[i].start()
	}
	for _, n := range c.nodes {
		n.waitListening()
	}
	// Healthy first: until a node has replayed its log, its state may be
	// an older snapshot that predates the shutdown.
	c.healthy(c.nodes...)
	waitFor(t, "cluster running again on every node", 60*time.Second, func() bool {
		for _, n := range c.nodes {
			if n.state(t).State.Status != gcluster.StatusOK {
				return false
			}
		}
		return true
	})
	c.healthy(c.nodes...)
	got := make([]byte, len(data))
	if err := openVDI(t, c.nodes[2], "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(data) {
		t.Fatal("data differs after shutdown and restart")
	}
	t.Logf("verified: every node stopped on shutdown; restarted in random order the cluster resumed by itself with its data")
}
