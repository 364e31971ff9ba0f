package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

const testObjSize = 64 << 10

func shape(t testing.TB, s string) proto.Redundancy {
	t.Helper()
	r, err := proto.ParseRedundancy(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// fault is how a strip is taken away in a degraded-read case.
type fault int

const (
	missing fault = iota // the strip file is gone (ResNoObj)
	corrupt              // a byte of the strip is flipped on disk (checksum error)
	down                 // the holder does not answer (network error)
)

func (f fault) String() string { return [...]string{"missing", "corrupt", "down"}[f] }

// ecObject writes a fresh object of shape red with random content through
// node 0's gateway and returns it with its content.
func ecObject(t testing.TB, c *fakeCluster, red proto.Redundancy, idx uint32, seed uint64) (Object, []byte) {
	t.Helper()
	o := Object{OID: proto.DataOID(7, idx), Red: red, Size: testObjSize}
	data := randBytes(seed, testObjSize)
	if err := c.nodes[0].gw.Create(context.Background(), o, 0, data, false); err != nil {
		t.Fatalf("create %s: %v", red, err)
	}
	return o, data
}

// checkStrips asserts every strip of o sits readable and checksum-clean on
// its holder and that data and parity agree with want.
func checkStrips(t testing.TB, c *fakeCluster, o Object, want []byte) {
	t.Helper()
	ctx := context.Background()
	codec, err := c.codecs.Get(int(o.Red.Data), int(o.Red.Parity))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := codec.EncodeRange(want)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int(o.Red.NrCopies()) {
		h := c.holder(o, i)
		got := make([]byte, o.Size/uint32(o.Red.Data))
		// Through the peer: a holder recovers a strip it lacks first.
		if err := c.Peer(h.n).Read(ctx, c.View().Epoch, key(o, i), 0, got); err != nil {
			t.Fatalf("strip %d on %s: %v", i, h.n.ID, err)
		}
		if !bytes.Equal(got, enc[i]) {
			t.Fatalf("strip %d on %s differs from the encoding of the expected content", i, h.n.ID)
		}
	}
}

// TestECDegradedReadTable takes strips away — missing, corrupt on disk, or
// their node down — and reads every byte back: with up to parity strips
// gone the read must return the right data (and repair what it found
// damaged); with one more it must fail clearly, never as a hole and never
// with data.
func TestECDegradedReadTable(t *testing.T) {
	cases := []struct {
		shape string
		off   []int
		how   fault
		ok    bool
	}{
		{"2:1", nil, missing, true},
		{"2:1", []int{0}, missing, true},
		{"2:1", []int{1}, corrupt, true},
		{"2:1", []int{2}, down, true},
		{"2:1", []int{0}, down, true},
		{"2:1", []int{0, 1}, missing, false},
		{"2:1", []int{1, 2}, corrupt, false},
		{"2:1", []int{0, 2}, down, false},
		{"4:2", []int{0, 1}, missing, true},
		{"4:2", []int{2, 5}, corrupt, true},
		{"4:2", []int{3, 4}, down, true},
		{"4:2", []int{4, 5}, missing, true},
		{"4:2", []int{0, 3}, corrupt, true},
		{"4:2", []int{0, 1, 2}, missing, false},
		{"4:2", []int{0, 4, 5}, corrupt, false},
		{"4:2", []int{1, 2, 3}, down, false},
		{"8:3", []int{0, 1, 2}, missing, true},
		{"8:3", []int{5, 8, 10}, corrupt, true},
		{"8:3", []int{7, 9, 10}, down, true},
		{"8:3", []int{0, 7}, corrupt, true},
		{"8:3", []int{0, 1, 2, 3}, missing, false},
		{"8:3", []int{8, 9, 10, 4}, corrupt, false},
		{"8:3", []int{2, 4, 6, 8}, down, false},
	}
	clusters := map[string]*fakeCluster{}
	for ci, tc := range cases {
		red := shape(t, tc.shape)
		c := clusters[tc.shape]
		if c == nil {
			c = newFakeCluster(t, int(red.NrCopies()))
			clusters[tc.shape] = c
		}
		t.Run(fmt.Sprintf("%s/%s%v", tc.shape, tc.how, tc.off), func(t *testing.T) {
			o, data := ecObject(t, c, red, uint32(ci), uint64(ci))
			ts, _ := targets(c.View(), o)
			seen := map[string]bool{}
			for _, n := range ts {
				if seen[n.ID] {
					t.Fatalf("two strips on %s: %v", n.ID, ts)
				}
				seen[n.ID] = true
			}
			var downed []*fakeNode
			for _, i := range tc.off {
				h := c.holder(o, i)
				switch tc.how {
				case missing:
					if err := h.st.Remove(context.Background(), key(o, i)); err != nil {
						t.Fatal(err)
					}
				case corrupt:
					// Near the end: inside the range read below.
					c.corrupt(h, key(o, i), int64(o.Size/uint32(red.Data))-1-int64(i*97))
				case down:
					h.down.Store(true)
					downed = append(downed, h)
				}
			}
			defer func() {
				for _, h := range downed {
					h.down.Store(false)
				}
			}()
			t.Logf("%s: strips %v %s", tc.shape, tc.off, tc.how)
			ctx := context.Background()
			if !tc.ok && tc.how == down {
				// Unreachable strips may come back: the gateway retries
				// until the caller's deadline.
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
			}
			// Read through a node that is not down, from an unaligned offset.
			var via *fakeNode
			for _, n := range c.nodes {
				if !n.down.Load() {
					via = n
					break
				}
			}
			got := bytes.Repeat([]byte{0xee}, testObjSize-1000)
			err := via.gw.Read(ctx, o, 1000, got)
			if tc.ok {
				if err != nil {
					t.Fatalf("degraded read failed: %v", err)
				}
				if !bytes.Equal(got, data[1000:]) {
					t.Fatal("degraded read returned wrong data")
				}
				for _, h := range downed {
					h.down.Store(false)
				}
				downed = nil
				waitRepairs(t, via.gw)
				// A damaged data strip makes the read fetch every parity
				// strip, so it finds all the damage and repairs it. (Parity
				// alone damaged goes unnoticed by reads: scrub's job.)
				if tc.how != down && (len(tc.off) == 0 || slices.Min(tc.off) < int(red.Data)) {
					checkStrips(t, c, o, data)
				}
				return
			}
			switch {
			case err == nil:
				t.Fatal("read succeeded with too few strips")
			case errors.Is(err, proto.ResNoObj):
				t.Fatalf("read reported a hole with strips present: %v", err)
			case tc.how != down && !errors.Is(err, ErrTooFewStrips):
				t.Fatalf("err = %v, want ErrTooFewStrips", err)
			case tc.how == down && !errors.Is(err, proto.ResNetworkError):
				t.Fatalf("err = %v, want a network error after retries", err)
			}
			if !bytes.Equal(got, bytes.Repeat([]byte{0xee}, len(got))) {
				t.Fatal("failed read wrote into the caller's buffer")
			}
			t.Logf("read refused: %v", err)
			// A whole-stripe read decodes straight into the caller's
			// buffer: it too stays untouched.
			actx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			whole := bytes.Repeat([]byte{0xee}, testObjSize)
			if err := via.gw.Read(actx, o, 0, whole); err == nil || errors.Is(err, proto.ResNoObj) {
				t.Fatalf("aligned read: err %v", err)
			}
			if !bytes.Equal(whole, bytes.Repeat([]byte{0xee}, len(whole))) {
				t.Fatal("failed aligned read wrote into the caller's buffer")
			}
		})
	}
}

// TestECDegradedReadAllCombinations takes away every combination of up to
// parity+1 strips (injected as missing or checksum errors) of 2:1, 4:2 and
// 8:3 objects: up to parity the read is exact, beyond it ErrTooFewStrips.
func TestECDegradedReadAllCombinations(t *testing.T) {
	for si, s := range []string{"2:1", "4:2", "8:3"} {
		red := shape(t, s)
		n := int(red.NrCopies())
		c := newFakeCluster(t, n)
		o, data := ecObject(t, c, red, 100, uint64(si))
		var off map[int]fault
		c.hook = func(_ *fakeNode, op string, k store.Key) error {
			f, ok := off[int(k.ECIndex)]
			if op != "read" || !ok {
				return nil
			}
			if f == missing {
				return fmt.Errorf("injected: %w", store.ErrNotFound)
			}
			return &store.CorruptError{Key: k, Offsets: []uint64{0}, Count: 1}
		}
		g := c.nodes[n-1].gw
		tried, good := 0, 0
		for set := range 1 << n {
			k := popcount(set)
			if k > int(red.Parity)+1 {
				continue
			}
			c.mu.Lock()
			off = map[int]fault{}
			for i := range n {
				if set&(1<<i) != 0 {
					off[i] = fault(i % 2)
				}
			}
			c.mu.Unlock()
			got := make([]byte, 3000)
			err := g.Read(context.Background(), o, 777, got)
			tried++
			if k <= int(red.Parity) {
				if err != nil || !bytes.Equal(got, data[777:3777]) {
					t.Fatalf("%s strips %v off: err %v, data right %v", s, off, err, bytes.Equal(got, data[777:3777]))
				}
				good++
			} else if !errors.Is(err, ErrTooFewStrips) || errors.Is(err, proto.ResNoObj) {
				t.Fatalf("%s strips %v off: err %v, want ErrTooFewStrips", s, off, err)
			}
			waitRepairs(t, g)
		}
		t.Logf("%s: %d combinations, %d read exactly, %d refused", s, tried, good, tried-good)
	}
}

func popcount(x int) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// TestReadHoleOnlyWhenNothingExists: an object reads as a hole (ResNoObj)
// only when no strip or copy exists; some strips present but too few is
// an error, and a copy that cannot be reached is retried, not a hole.
func TestReadHoleOnlyWhenNothingExists(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	red := shape(t, "4:2")
	never := Object{OID: proto.DataOID(7, 999), Red: red, Size: testObjSize}
	if err := c.nodes[0].gw.Read(ctx, never, 0, make([]byte, 4096)); !errors.Is(err, proto.ResNoObj) {
		t.Fatalf("never written: err %v, want ResNoObj", err)
	}

	// Four strips gone, two left: not a hole.
	o, _ := ecObject(t, c, red, 1, 1)
	for i := range 4 {
		c.holder(o, i).st.Remove(ctx, key(o, i))
	}
	err := c.nodes[0].gw.Read(ctx, o, 0, make([]byte, 4096))
	if err == nil || errors.Is(err, proto.ResNoObj) || !errors.Is(err, ErrTooFewStrips) {
		t.Fatalf("2 of 6 strips left: err %v, want ErrTooFewStrips", err)
	}

	// Three gone, the fourth's node down: retried, then a network error.
	o, _ = ecObject(t, c, red, 2, 2)
	for i := range 3 {
		c.holder(o, i).st.Remove(ctx, key(o, i))
	}
	h := c.holder(o, 4)
	h.down.Store(true)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = c.holder(o, 3).gw.Read(tctx, o, 0, make([]byte, 4096))
	cancel()
	h.down.Store(false)
	if err == nil || errors.Is(err, proto.ResNoObj) || !errors.Is(err, proto.ResNetworkError) {
		t.Fatalf("strips missing, one unreachable: err %v, want a network error", err)
	}

	// Replicas: one missing, one corrupt, one missing: not a hole.
	r := Object{OID: proto.DataOID(7, 3), Red: proto.Redundancy{Copies: 3}, Size: testObjSize}
	if err := c.nodes[0].gw.Create(ctx, r, 0, randBytes(3, testObjSize), false); err != nil {
		t.Fatal(err)
	}
	c.holder(r, 0).st.Remove(ctx, key(r, 0))
	c.corrupt(c.holder(r, 1), key(r, 1), 10)
	c.holder(r, 2).st.Remove(ctx, key(r, 2))
	err = c.nodes[0].gw.Read(ctx, r, 0, make([]byte, 4096))
	if err == nil || errors.Is(err, proto.ResNoObj) || !errors.Is(err, store.ErrCorrupt) && proto.ResultOf(err) != proto.ResEIO {
		t.Fatalf("replicas missing, missing, corrupt: err %v, want EIO", err)
	}
	// Missing, missing, and the last copy's node down: retried, not a hole.
	r.OID = proto.DataOID(7, 4)
	if err := c.nodes[0].gw.Create(ctx, r, 0, randBytes(4, testObjSize), false); err != nil {
		t.Fatal(err)
	}
	c.holder(r, 0).st.Remove(ctx, key(r, 0))
	c.holder(r, 1).st.Remove(ctx, key(r, 1))
	h = c.holder(r, 2)
	h.down.Store(true)
	tctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	err = c.holder(r, 0).gw.Read(tctx, r, 0, make([]byte, 4096))
	cancel()
	h.down.Store(false)
	if err == nil || errors.Is(err, proto.ResNoObj) {
		t.Fatalf("two copies missing, one unreachable: err %v, want a retryable failure, not a hole", err)
	}
}

// TestECCreateExclusiveNeverOverwrites: an exclusive create of an object
// that exists writes its range into it and reports ErrExists, even when
// the primary's own strip 0 is missing or the placement moved to nodes
// that have not recovered the strips yet; with a holder unreachable it
// fails rather than guess.
func TestECCreateExclusiveNeverOverwrites(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	red := shape(t, "4:2")
	patch := randBytes(99, 4096)

	// Strip 0 missing on the primary.
	o, want := ecObject(t, c, red, 1, 1)
	c.holder(o, 0).st.Remove(ctx, key(o, 0))
	if err := c.nodes[3].gw.CreateExclusive(ctx, o, 8192, patch, false); !errors.Is(err, ErrExists) {
		t.Fatalf("strip 0 missing: err %v, want ErrExists", err)
	}
	copy(want[8192:], patch)
	checkStrips(t, c, o, want)

	// A holder down: no create over what it may hold.
	o2, want2 := ecObject(t, c, red, 2, 2)
	h := c.holder(o2, 2)
	h.down.Store(true)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	for i := range 6 {
		if i != 2 {
			c.holder(o2, i).st.Remove(ctx, key(o2, i))
		}
	}
	err := c.nodes[0].gw.CreateExclusive(tctx, o2, 0, patch, false)
	cancel()
	h.down.Store(false)
	if err == nil {
		t.Fatal("exclusive create succeeded with a strip holder unreachable")
	}
	got := make([]byte, o2.Size/4)
	if err := h.st.Read(ctx, key(o2, 2), 0, got); err != nil || !bytes.Equal(got, mustEncode(t, c, o2, want2)[2]) {
		t.Fatalf("the unreachable holder's strip changed (err %v)", err)
	}

	// An epoch change moves the primary; the new holders recover on demand.
	var o3 Object
	var want3 []byte
	old := c.View()
	for i := uint32(10); ; i++ {
		o3 = Object{OID: proto.DataOID(7, i), Red: red, Size: testObjSize}
		ts0, _ := targets(old, o3)
		c2 := placementWith(c, 3)
		ts1, _ := targets(c2, o3)
		if ts0[0].ID != ts1[0].ID {
			break
		}
	}
	want3 = randBytes(3, testObjSize)
	if err := c.nodes[0].gw.Create(ctx, o3, 0, want3, false); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c.addNode()
	}
	c.recoverOnDemand = true
	c.setView(c.nodes...)
	if err := c.nodes[1].gw.CreateExclusive(ctx, o3, 0, patch, false); !errors.Is(err, ErrExists) {
		t.Fatalf("after the epoch change: err %v, want ErrExists", err)
	}
	copy(want3, patch)
	checkStrips(t, c, o3, want3)

	// Nothing anywhere: it creates.
	o4 := Object{OID: proto.DataOID(7, 4), Red: red, Size: testObjSize}
	if err := c.nodes[2].gw.CreateExclusive(ctx, o4, 512, patch, false); err != nil {
		t.Fatalf("new object: %v", err)
	}
	want4 := make([]byte, testObjSize)
	copy(want4[512:], patch)
	checkStrips(t, c, o4, want4)
}

// placementWith is the view c would have with extra more nodes.
func placementWith(c *fakeCluster, extra int) *View {
	var ns []placement.Node
	for i := range len(c.nodes) + extra {
		ns = append(ns, fakeNodeDesc(i))
	}
	return &View{Epoch: 99, Ring: placement.New(ns, placement.Options{})}
}

func mustEncode(t testing.TB, c *fakeCluster, o Object, data []byte) [][]byte {
	codec, err := c.codecs.Get(int(o.Red.Data), int(o.Red.Parity))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := codec.EncodeRange(data)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// TestECPartialWriteReadsOnlyEdgeStripes: a read-modify-write reads just
// the partial stripes at the head and tail of the range.
func TestECPartialWriteReadsOnlyEdgeStripes(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 1)
	for i, tc := range []struct {
		off, n   uint32
		wantRead int64
	}{
		{0, 4096, 0},            // aligned: nothing to read
		{100, 4 * 512, 2 * 512}, // partial head and tail
		{10, 20, 512},           // inside one stripe
		{512, 600, 512},         // tail only
		{1000, 24, 512},         // head only, ends on a boundary
		{300, 20000, 2 * 512},   // long range: still two stripes
	} {
		patch := randBytes(uint64(i+10), int(tc.n))
		c.readBytes.Store(0)
		if err := c.nodes[i%6].gw.Write(ctx, o, tc.off, patch, false); err != nil {
			t.Fatal(err)
		}
		if got := c.readBytes.Load(); got != tc.wantRead {
			t.Errorf("write %d+%d read %d bytes of strips, want %d", tc.off, tc.n, got, tc.wantRead)
		}
		copy(want[tc.off:], patch)
		checkStrips(t, c, o, want)
	}
}

// TestECWriteOverDamagedStrip: a strip corrupt on disk or missing where it
// should be does not fail a write; the write rewrites it whole.
func TestECWriteOverDamagedStrip(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	red := shape(t, "4:2")
	strip := int64(testObjSize / 4)
	for i, how := range []fault{corrupt, missing} {
		for _, full := range []bool{false, true} {
			o, want := ecObject(t, c, red, uint32(10*i+btoi(full)), uint64(i))
			h := c.holder(o, 2)
			if how == corrupt {
				// In the last 4 KiB block, outside the range written below.
				c.corrupt(h, key(o, 2), strip-2048)
			} else {
				h.st.Remove(ctx, key(o, 2))
			}
			off, n := uint32(testObjSize-4096), 4096
			if full {
				off, n = 0, testObjSize
			}
			patch := randBytes(uint64(100+i), n)
			if err := c.nodes[1].gw.Write(ctx, o, off, patch, false); err != nil {
				t.Fatalf("%s strip, write %d+%d: %v", how, off, n, err)
			}
			copy(want[off:], patch)
			checkStrips(t, c, o, want)
			t.Logf("%s strip 2, write %d+%d: written and strip rebuilt", how, off, n)
		}
	}
	// Every strip gone: the object was discarded; the caller must allocate.
	o, _ := ecObject(t, c, red, 50, 5)
	for i := range 6 {
		c.holder(o, i).st.Remove(ctx, key(o, i))
	}
	if err := c.nodes[0].gw.Write(ctx, o, 0, make([]byte, 4096), false); !errors.Is(err, proto.ResNoObj) {
		t.Fatalf("write to a removed object: err %v, want ResNoObj", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestECEpochChangeMidWrite: the epoch changes (a node joins) while a
// write is being applied strip by strip; the write is retried on the new
// placement and leaves data and parity consistent there.
func TestECEpochChangeMidWrite(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 1)
	c.recoverOnDemand = true
	n7 := c.addNode()
	var once sync.Once
	c.hook = func(n *fakeNode, op string, k store.Key) error {
		changed := false
		if op == "write" && k.ECIndex == 3 {
			// This strip's holder moves on to the new epoch first: it
			// refuses, the strips before it were written in the old one.
			once.Do(func() { c.setView(c.nodes...); changed = true })
		}
		if changed {
			return proto.ResOldNodeVer
		}
		return nil
	}
	patch := randBytes(7, 10000)
	if err := c.nodes[2].gw.Write(ctx, o, 3000, patch, false); err != nil {
		t.Fatal(err)
	}
	if c.View().Epoch != 2 {
		t.Fatalf("epoch %d: the change was not injected", c.View().Epoch)
	}
	copy(want[3000:], patch)
	checkStrips(t, c, o, want)
	got := make([]byte, testObjSize)
	if err := n7.gw.Read(ctx, o, 0, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the epoch change: err %v, data right %v", err, bytes.Equal(got, want))
	}
}

// TestECConcurrentWritersOneStripe: gateways on different nodes write
// disjoint bytes of the same stripes at once; the primary serialises the
// read-modify-writes, so no write is lost and parity matches the data.
func TestECConcurrentWritersOneStripe(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 1)
	const writers, rounds = 4, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := c.nodes[w+1].gw
			for r := range rounds {
				// Writer w owns bytes [w*100, w*100+100) of stripes 0 and 1.
				off := uint32(w*100 + (r%2)*512)
				patch := randBytes(uint64(w*1000+r), 100)
				if err := g.Write(ctx, o, off, patch, false); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				copy(want[off:], patch)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	checkStrips(t, c, o, want)
}

// TestECRepair: the primary's repair rebuilds missing and corrupt strips,
// re-encodes parity an interrupted write left disagreeing with the data,
// and leaves an object that exists nowhere alone.
func TestECRepair(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	red := shape(t, "4:2")
	o, want := ecObject(t, c, red, 1, 1)
	c.holder(o, 1).st.Remove(ctx, key(o, 1))
	c.corrupt(c.holder(o, 3), key(o, 3), 100)
	if err := c.nodes[5].gw.RepairEC(ctx, o); err != nil {
		t.Fatal(err)
	}
	checkStrips(t, c, o, want)

	// Parity rewritten with valid checksums but stale content.
	h := c.holder(o, 4)
	if err := h.st.Write(ctx, key(o, 4), 512, randBytes(5, 1024), store.WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[2].gw.RepairEC(ctx, o); err != nil {
		t.Fatal(err)
	}
	checkStrips(t, c, o, want)

	never := Object{OID: proto.DataOID(7, 77), Red: red, Size: testObjSize}
	if err := c.nodes[0].gw.RepairEC(ctx, never); err != nil {
		t.Fatalf("repair of an object that exists nowhere: %v", err)
	}
	for i := range 6 {
		if _, err := c.holder(never, i).st.Stat(ctx, key(never, i)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("repair created strip %d of an object that exists nowhere", i)
		}
	}
}

// TestECEpochChangeMidRead: a strip holder moves on to a new epoch while a
// degraded read gathers strips; the read is retried on the new placement
// and returns the right bytes.
func TestECEpochChangeMidRead(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 1)
	c.recoverOnDemand = true
	c.addNode()
	// Two data strips away: the read needs both parity strips, and one of
	// them answers from the new epoch, so this attempt cannot decode.
	c.holder(o, 0).down.Store(true)
	c.holder(o, 1).down.Store(true)
	var after atomic.Int32 // strip reads that passed the new epoch's check
	var once sync.Once
	c.hook = func(n *fakeNode, op string, k store.Key) error {
		changed := false
		if op == "read" && c.View().Epoch == 2 {
			after.Add(1)
		}
		if op == "read" && k.ECIndex == 4 {
			once.Do(func() {
				for _, n := range c.nodes {
					n.down.Store(false)
				}
				c.setView(c.nodes...)
				changed = true
			})
		}
		if changed {
			return proto.ResOldNodeVer
		}
		return nil
	}
	got := make([]byte, testObjSize-4096)
	if err := c.nodes[3].gw.Read(ctx, o, 4096, got); err != nil {
		t.Fatal(err)
	}
	if c.View().Epoch != 2 {
		t.Fatalf("epoch %d: the change was not injected", c.View().Epoch)
	}
	if !bytes.Equal(got, want[4096:]) {
		t.Fatal("read across the epoch change returned wrong data")
	}
	if after.Load() == 0 {
		t.Fatal("the read was not retried in the new epoch")
	}
	t.Logf("%d strip reads in the new epoch", after.Load())
}

// TestECZeroPunchesStrips: zeroing whole stripes sends every strip a zero
// of its part (zeros encode to zero parity), so space is freed instead of
// written with zeros; a partial stripe still goes through
// read-modify-write; zeroing an object nobody holds is ResNoObj.
func TestECZeroPunchesStrips(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	red := shape(t, "4:2")
	o, want := ecObject(t, c, red, 1, 11)
	var mu sync.Mutex
	ops := map[string]int{}
	c.hook = func(n *fakeNode, op string, k store.Key) error {
		mu.Lock()
		ops[op]++
		mu.Unlock()
		return nil
	}
	gw := c.nodes[1].gw // not necessarily the primary: forwarded like any write

	if err := gw.Zero(ctx, o, 0, o.Size, false); err != nil {
		t.Fatal(err)
	}
	clear(want)
	checkStrips(t, c, o, want)
	mu.Lock()
	if ops["zero"] != 6 || ops["write"] != 0 || ops["read"] != 6 {
		// checkStrips reads each strip once; the zero itself reads nothing.
		t.Fatalf("whole-object zero: %v, want 6 strip zeros and no writes", ops)
	}
	clear(ops)
	mu.Unlock()
	for i := range 6 {
		h := c.holder(o, i)
		if u, err := h.st.Usage(); err != nil || u.Used > 32<<10 {
			t.Fatalf("strip %d holder uses %d bytes after the zero (err %v): not punched", i, u.Used, err)
		}
	}

	// Refill, then zero an unaligned range: head and tail stripes are
	// read back, everything re-encoded.
	copy(want, randBytes(12, len(want)))
	if err := gw.Write(ctx, o, 0, want, false); err != nil {
		t.Fatal(err)
	}
	if err := gw.Zero(ctx, o, 1000, 9000, false); err != nil {
		t.Fatal(err)
	}
	clear(want[1000:10000])
	checkStrips(t, c, o, want)

	gone := Object{OID: proto.DataOID(7, 99), Red: red, Size: testObjSize}
	if err := gw.Zero(ctx, gone, 0, gone.Size, false); !errors.Is(err, proto.ResNoObj) {
		t.Fatalf("zero of an object nobody holds: %v, want ResNoObj", err)
	}
}

// TestECSettlesStripsBeforeMutating: while recovery of the epoch is still
// running somewhere, an EC mutation has every strip holder settle its
// strip (a read through its recovery guard) before any strip changes, so
// a holder rebuilding a strip never finds its siblings half way through
// the mutation. Once recovery is complete, mutations go straight to the
// strips.
func TestECSettlesStripsBeforeMutating(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 21)
	var mu sync.Mutex
	var ops []string
	c.hook = func(n *fakeNode, op string, k store.Key) error {
		mu.Lock()
		ops = append(ops, op)
		mu.Unlock()
		return nil
	}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := ops
		ops = nil
		return out
	}
	for _, tc := range []struct {
		name       string
		recovering bool
		do         func() error
	}{
		{"whole-stripe write", true, func() error { return c.nodes[2].gw.Write(ctx, o, 0, want[:8192], false) }},
		{"partial write", true, func() error { return c.nodes[3].gw.Write(ctx, o, 100, want[100:200], false) }},
		{"zero", true, func() error { return c.nodes[4].gw.Zero(ctx, o, 4096, 4096, false) }},
		{"create", true, func() error { return c.nodes[0].gw.Create(ctx, o, 0, want, false) }},
		{"write after recovery", false, func() error { return c.nodes[2].gw.Write(ctx, o, 0, want[:8192], false) }},
	} {
		c.recovering.Store(tc.recovering)
		take()
		if err := tc.do(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := take()
		settles := 0
		for _, op := range got {
			if op != "read" {
				break
			}
			settles++
		}
		switch {
		case tc.recovering && settles < 6:
			t.Errorf("%s while recovering: %v; want every strip read (settled) before any strip changes", tc.name, got)
		case !tc.recovering && settles != 0:
			t.Errorf("%s after recovery: %v; want no settling reads", tc.name, got)
		}
	}
	checkStrips(t, c, o, want) // the create put back what the zero took
}

// TestECNoPartialWriteDuringRecovery: while recovery runs, a mutation that
// finds fewer than Data strips in place writes nothing (and is retried),
// rather than turning the only decodable version of the stripe into one
// too few to decode.
func TestECNoPartialWriteDuringRecovery(t *testing.T) {
	c := newFakeCluster(t, 6)
	o, want := ecObject(t, c, shape(t, "4:2"), 1, 31)
	c.recovering.Store(true)
	for i := range 3 {
		h := c.holder(o, i)
		if err := h.st.Remove(context.Background(), key(o, i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := c.nodes[0].gw.Write(ctx, o, 0, randBytes(32, 8192), false)
	if err == nil {
		t.Fatal("write with 3 of 6 strips in place succeeded")
	}
	t.Logf("write refused: %v", err)
	codec, err := c.codecs.Get(4, 2)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := codec.EncodeRange(want)
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 6; i++ {
		got := make([]byte, o.Size/4)
		if err := c.holder(o, i).st.Read(context.Background(), key(o, i), 0, got); err != nil || !bytes.Equal(got, enc[i]) {
			t.Fatalf("strip %d changed by the refused write (err %v)", i, err)
		}
	}
}
