package placement

import (
	"cmp"
	"fmt"
	"math"
	mathrand "math/rand"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"testing/quick"

	"github.com/gosheep/gosheep/proto"
)

const tib = 1 << 40

// node returns data node i at 10.0.x.y:7000 in its own zone, weight 1 TiB.
func node(i int) Node {
	a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	return Node{ID: fmt.Sprintf("n%d", i), Addr: netip.AddrPortFrom(a, proto.DefaultPort), Zone: uint32(i), Weight: tib}
}

func equalNodes(n int) []Node {
	ns := make([]Node, n)
	for i := range ns {
		ns[i] = node(i + 1)
	}
	return ns
}

// testOIDs returns realistic object ids: data objects of many VDIs, with
// sequential indexes, plus their inodes.
func testOIDs(t testing.TB) []proto.OID {
	n := 1 << 20
	if testing.Short() || raceEnabled {
		n = 1 << 18
	}
	rng := rand.New(rand.NewPCG(1, 2))
	oids := make([]proto.OID, 0, n)
	for len(oids) < n {
		vid := rng.Uint32N(proto.NrVDIs-1) + 1
		oids = append(oids, proto.InodeOID(vid))
		for idx := range uint32(4095) {
			if len(oids) == n {
				break
			}
			oids = append(oids, proto.DataOID(vid, idx))
		}
	}
	return oids
}

// shares counts, per node ID, primaries and all copies over oids.
func shares(r *Ring, oids []proto.OID, copies int) (prim, all map[string]int) {
	prim, all = map[string]int{}, map[string]int{}
	var buf []Node
	for _, o := range oids {
		buf = r.AppendTargets(buf[:0], o, copies)
		prim[buf[0].ID]++
		for _, n := range buf {
			all[n.ID]++
		}
	}
	return prim, all
}

// maxDev is the largest relative deviation of count[id] from want[id].
func maxDev(count map[string]int, want map[string]float64) float64 {
	d := 0.0
	for id, w := range want {
		d = max(d, math.Abs(float64(count[id])-w)/w)
	}
	return d
}

func TestDeterministicAnyOrder(t *testing.T) {
	f := func(seed uint64, nn uint8, oid uint64) bool {
		rng := rand.New(rand.NewPCG(seed, 7))
		ns := randomNodes(rng, int(nn%20)+1)
		a := New(ns, Options{Vnodes: 64})
		shuffled := slices.Clone(ns)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		// A duplicated entry must not change anything either.
		shuffled = append(shuffled, shuffled[0])
		b := New(shuffled, Options{Vnodes: 64})
		if !slices.Equal(a.Nodes(), b.Nodes()) || !slices.Equal(a.ring, b.ring) {
			return false
		}
		sorted := slices.IsSortedFunc(a.ring, func(x, y vnode) int {
			return cmp.Or(cmp.Compare(x.hash, y.hash), cmp.Compare(x.node, y.node))
		})
		if !sorted {
			t.Log("ring not sorted by (hash, node)")
			return false
		}
		for k := range 5 {
			o := proto.OID(oid + uint64(k))
			if !slices.Equal(a.Targets(o, 31), b.Targets(o, 31)) {
				return false
			}
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 200, Rand: newQuickRand(1)}); err != nil {
		t.Fatal(err)
	}
}

// randomNodes makes n nodes with random zones (often shared), weights
// (some gateway-only) and addresses (IPv4 and IPv6).
func randomNodes(rng *rand.Rand, n int) []Node {
	ns := make([]Node, n)
	for i := range ns {
		var a netip.Addr
		if rng.IntN(4) == 0 {
			var b [16]byte
			b[0], b[1], b[15] = 0xfd, 0x00, byte(i)
			b[14] = byte(i >> 8)
			a = netip.AddrFrom16(b)
		} else {
			a = netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})
		}
		w := uint64(rng.IntN(8)) * tib / 2
		if rng.IntN(6) == 0 {
			w = 0
		}
		ns[i] = Node{
			ID:     fmt.Sprintf("node-%d", i),
			Addr:   netip.AddrPortFrom(a, uint16(7000+rng.IntN(3))),
			Zone:   uint32(rng.IntN(n + 1)),
			Weight: w,
		}
	}
	return ns
}

func newQuickRand(seed int64) *mathrand.Rand { return mathrand.New(mathrand.NewSource(seed)) }

func TestTargetsDistinctNodesAndZones(t *testing.T) {
	f := func(seed uint64, nn, copies uint8) bool {
		rng := rand.New(rand.NewPCG(seed, 9))
		ns := randomNodes(rng, int(nn%24)+1)
		r := New(ns, Options{Vnodes: 32})
		want := min(int(copies%12), len(r.Zones()))
		for range 50 {
			o := proto.OID(rng.Uint64())
			ts := r.Targets(o, int(copies%12))
			if len(ts) != want {
				t.Logf("got %d targets, want %d", len(ts), want)
				return false
			}
			seenID, seenZone := map[string]bool{}, map[uint32]bool{}
			for _, n := range ts {
				if n.Weight == 0 || seenID[n.ID] || seenZone[n.Zone] {
					t.Logf("bad target set %v", ts)
					return false
				}
				seenID[n.ID], seenZone[n.Zone] = true, true
			}
			if p, ok := r.Primary(o); want > 0 && (!ok || p != ts[0]) {
				t.Logf("primary %v, targets %v", p, ts)
				return false
			}
			for s, n := range ts {
				if r.Slot(o, int(copies%12), n.ID) != s {
					return false
				}
			}
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 300, Rand: newQuickRand(2)}); err != nil {
		t.Fatal(err)
	}
}

// TestManyZones exercises the walk's path for more than 256 zones.
func TestManyZones(t *testing.T) {
	r := New(equalNodes(300), Options{Vnodes: 4})
	if len(r.Zones()) != 300 {
		t.Fatalf("zones %d", len(r.Zones()))
	}
	for o := range proto.OID(200) {
		ts := r.Targets(o, 40)
		if len(ts) != 40 {
			t.Fatalf("got %d targets", len(ts))
		}
		seen := map[uint32]bool{}
		for _, n := range ts {
			if seen[n.Zone] {
				t.Fatalf("zone %d twice in %v", n.Zone, ts)
			}
			seen[n.Zone] = true
		}
	}
}

func TestEmptyAndGatewayOnly(t *testing.T) {
	for _, ns := range [][]Node{nil, {{ID: "gw", Addr: node(1).Addr}}} {
		r := New(ns, Options{})
		if ts := r.Targets(1, 3); len(ts) != 0 {
			t.Fatalf("targets %v on a ring without data nodes", ts)
		}
		if _, ok := r.Primary(1); ok {
			t.Fatal("primary on a ring without data nodes")
		}
		if r.Slot(1, 3, "gw") != -1 {
			t.Fatal("gateway holds a slot")
		}
	}
	gw := Node{ID: "gw", Addr: node(99).Addr, Zone: 99}
	r := New(append(equalNodes(3), gw), Options{})
	if r.Vnodes("gw") != 0 || len(r.Zones()) != 3 || len(r.Nodes()) != 4 {
		t.Fatalf("gateway: vnodes %d zones %v nodes %d", r.Vnodes("gw"), r.Zones(), len(r.Nodes()))
	}
	for _, n := range r.Nodes() {
		if !r.Has(n.ID) {
			t.Fatalf("member %s (vnodes %d) not found by Has", n.ID, r.Vnodes(n.ID))
		}
	}
	if r.Has("not-a-member") {
		t.Fatal("Has found a node that is not a member")
	}
}

func TestAutoVnodes(t *testing.T) {
	ns := equalNodes(4)
	ns[0].Weight = 1 * tib
	ns[1].Weight = 2 * tib
	ns[2].Weight = 5 * tib
	ns[3].Weight = 1 // tiny but nonzero: still one vnode
	r := New(ns, Options{Vnodes: 100})
	// average = (8 TiB + 1) / 4, so counts are round(100 × w × 4 / Σw).
	for id, want := range map[string]int{"n1": 50, "n2": 100, "n3": 250, "n4": 1} {
		if got := r.Vnodes(id); got != want {
			t.Errorf("vnodes(%s) = %d, want %d", id, got, want)
		}
	}
	if r.Len() != 401 {
		t.Errorf("ring has %d vnodes, want 401", r.Len())
	}
	// Huge weights must not overflow.
	ns[0].Weight, ns[1].Weight = math.MaxUint64, math.MaxUint64
	r = New(ns, Options{Vnodes: 100})
	if r.Vnodes("n1") != r.Vnodes("n2") || r.Vnodes("n1") < 150 {
		t.Errorf("max weights: vnodes %d %d", r.Vnodes("n1"), r.Vnodes("n2"))
	}
	// Equal weights get exactly the base.
	r = New(equalNodes(5), Options{Vnodes: 77})
	for _, n := range r.Nodes() {
		if r.Vnodes(n.ID) != 77 {
			t.Errorf("equal node %s has %d vnodes", n.ID, r.Vnodes(n.ID))
		}
	}
}

// TestSheepdogHashing checks the vnode positions against sheepdog's scheme
// computed independently from the reference: FNV-1a over the 18-byte id,
// then one mix round for the seed, then one more per vnode.
func TestSheepdogHashing(t *testing.T) {
	n := node(7)
	r := New([]Node{n}, Options{Vnodes: 3})
	id := make([]byte, 18)
	id[12], id[13], id[14], id[15] = 10, 0, 0, 7
	id[16], id[17] = 7000&0xff, 7000>>8
	h := fnv(id, 0xcbf29ce484222325)
	var want []uint64
	for range 4 {
		h = mix(h)
		want = append(want, h)
	}
	want = want[1:]
	slices.Sort(want)
	var got []uint64
	for _, v := range r.ring {
		got = append(got, v.hash)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("vnode hashes %x, want %x", got, want)
	}
	// The primary is the first vnode at or after the object's hash.
	for o := range proto.OID(1000) {
		oh := mix(fnv([]byte{byte(o), byte(o >> 8), 0, 0, 0, 0, 0, 0}, 0xcbf29ce484222325))
		wi, _ := slices.BinarySearch(want, oh)
		if wi == len(want) {
			wi = 0
		}
		if r.ring[r.first(oh)].hash != want[wi] {
			t.Fatalf("oid %d: primary vnode %x, want %x", o, r.ring[r.first(oh)].hash, want[wi])
		}
	}
}

func fnv(b []byte, h uint64) uint64 {
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

func mix(h uint64) uint64 {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(h >> (8 * i))
	}
	return fnv(b, h)
}

// loopNodes is a local test cluster: 127.0.0.i:7000, sheep's default zones.
func loopNodes(n int) []Node {
	ns := make([]Node, n)
	for i := range ns {
		a := netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
		ns[i] = Node{ID: a.String(), Addr: netip.AddrPortFrom(a, proto.DefaultPort), Zone: proto.DefaultZone(a), Weight: tib}
	}
	return ns
}

func TestBalanceEqualNodes(t *testing.T) {
	oids := testOIDs(t)
	sizes := []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	layouts := map[string]func(int) []Node{"10.0.0.i": equalNodes, "127.0.0.i": loopNodes}
	if testing.Short() || raceEnabled {
		sizes = []int{3, 5, 8, 16}
	}
	if testing.Short() {
		delete(layouts, "10.0.0.i")
	}
	for name, layout := range layouts {
		for _, nn := range sizes {
			r := New(layout(nn), Options{})
			copies := min(3, nn)
			prim, all := shares(r, oids, copies)
			wantP, wantA := map[string]float64{}, map[string]float64{}
			for _, n := range r.Nodes() {
				wantP[n.ID] = float64(len(oids)) / float64(nn)
				wantA[n.ID] = float64(len(oids)*copies) / float64(nn)
			}
			dp, da := maxDev(prim, wantP), maxDev(all, wantA)
			t.Logf("%s N=%2d copies=%d: max deviation primaries %.2f%%, all copies %.2f%%", name, nn, copies, 100*dp, 100*da)
			if dp > 0.05 || da > 0.05 {
				t.Errorf("%s N=%d: deviation primaries %.2f%% copies %.2f%% > 5%%", name, nn, 100*dp, 100*da)
			}
		}
	}
}

func TestBalanceWeighted(t *testing.T) {
	oids := testOIDs(t)
	ns := equalNodes(8)
	weights := []uint64{1, 1, 2, 2, 3, 3, 4, 4} // in TiB
	var sum uint64
	for i := range ns {
		ns[i].Weight = weights[i] * tib
		sum += weights[i]
	}
	r := New(ns, Options{})
	prim, all := shares(r, oids, 2)
	want := map[string]float64{}
	for i, n := range ns {
		want[n.ID] = float64(len(oids)) * float64(weights[i]) / float64(sum)
	}
	dp := maxDev(prim, want)
	t.Logf("weights 1,1,2,2,3,3,4,4 TiB: max deviation of primaries %.2f%%", 100*dp)
	if dp > 0.05 {
		t.Errorf("weighted primaries deviate %.2f%% > 5%%", 100*dp)
	}
	// Later copies skip nodes already chosen, which favours light nodes a
	// little (a heavy node is chosen first more often, then skipped); the
	// deviation from strict proportionality is inherent, so only bound it.
	for id := range want {
		want[id] *= 2
	}
	da := maxDev(all, want)
	t.Logf("weights 1,1,2,2,3,3,4,4 TiB, 2 copies: max deviation of all copies %.2f%%", 100*da)
	if da > 0.15 {
		t.Errorf("weighted copies deviate %.2f%% > 15%%", 100*da)
	}
}

// placements returns every oid's target IDs.
func placements(r *Ring, oids []proto.OID, copies int) [][]string {
	out := make([][]string, len(oids))
	var buf []Node
	for i, o := range oids {
		buf = r.AppendTargets(buf[:0], o, copies)
		ids := make([]string, len(buf))
		for j, n := range buf {
			ids[j] = n.ID
		}
		out[i] = ids
	}
	return out
}

func TestMovementOnAdd(t *testing.T) {
	oids := testOIDs(t)
	for _, tc := range []struct{ nodes, copies int }{{4, 1}, {8, 1}, {4, 3}, {8, 3}, {12, 3}, {8, 6}} {
		old := equalNodes(tc.nodes)
		added := node(tc.nodes + 1)
		before := placements(New(old, Options{}), oids, tc.copies)
		after := placements(New(append(old, added), Options{}), oids, tc.copies)
		moved, slotMoves := 0, 0
		for i := range oids {
			for s, id := range after[i] {
				if !slices.Contains(before[i], id) {
					moved++
					if id != added.ID {
						t.Fatalf("oid %v: copy moved to %s, not to the new node: %v -> %v", oids[i], id, before[i], after[i])
					}
				}
				if s >= len(before[i]) || before[i][s] != id {
					slotMoves++
				}
			}
		}
		total := float64(len(oids) * tc.copies)
		ideal := 1 / float64(tc.nodes+1)
		frac := float64(moved) / total
		t.Logf("%d→%d nodes, %d copies: %.2f%% of copies moved (ideal %.2f%%, ratio %.3f); EC strips changing slot %.2f%%",
			tc.nodes, tc.nodes+1, tc.copies, 100*frac, 100*ideal, frac/ideal, 100*float64(slotMoves)/total)
		if frac > 1.25*ideal {
			t.Errorf("moved %.2f%% > 1.25 × ideal %.2f%%", 100*frac, 100*ideal)
		}
		// EC strips are ordered: when the new node enters a walk at
		// position p, the strips from p on all change slot. With p uniform
		// over the n slots, the expected fraction of changed slots is
		// (n+1) / (2(N+1)), sheepdog's inherent churn.
		slotIdeal := float64(tc.copies+1) / float64(2*(tc.nodes+1))
		if slot := float64(slotMoves) / total; slot > 1.25*slotIdeal {
			t.Errorf("EC slot changes %.2f%% > 1.25 × expected %.2f%%", 100*slot, 100*slotIdeal)
		}
	}
}

func TestMovementOnRemove(t *testing.T) {
	oids := testOIDs(t)
	for _, tc := range []struct{ nodes, copies int }{{5, 1}, {9, 3}, {13, 3}} {
		all := equalNodes(tc.nodes)
		gone := all[2]
		rest := slices.Delete(slices.Clone(all), 2, 3)
		before := placements(New(all, Options{}), oids, tc.copies)
		after := placements(New(rest, Options{}), oids, tc.copies)
		touched := 0
		for i := range oids {
			held := slices.Contains(before[i], gone.ID)
			if !held {
				// Not even the order may change: EC strips stay put too.
				if !slices.Equal(before[i], after[i]) {
					t.Fatalf("oid %v not on the removed node moved: %v -> %v", oids[i], before[i], after[i])
				}
				continue
			}
			touched++
			// Replicas: only the removed node's copy is replaced.
			lost := 0
			for _, id := range before[i] {
				if !slices.Contains(after[i], id) {
					lost++
				}
			}
			if lost != 1 {
				t.Fatalf("oid %v: %v -> %v", oids[i], before[i], after[i])
			}
		}
		t.Logf("%d→%d nodes, %d copies: %.2f%% of objects touched (ideal %.2f%%)", tc.nodes, tc.nodes-1, tc.copies,
			100*float64(touched)/float64(len(oids)), 100*float64(tc.copies)/float64(tc.nodes))
	}
}

func TestMovedHelper(t *testing.T) {
	old := New(equalNodes(6), Options{Vnodes: 64})
	new := New(append(equalNodes(6), node(7)), Options{Vnodes: 64})
	var fetches, drops, ecFetches int
	for o := range proto.OID(5000) {
		bt, at := old.Targets(o, 3), new.Targets(o, 3)
		for _, n := range append(equalNodes(6), node(7)) {
			m := Moved(old, new, o, 3, n.ID, false)
			inB, inA := slices.Contains(bt, n), slices.Contains(at, n)
			wantFetch, wantDrop := inA && !inB, inB && !inA
			if (m.Fetch >= 0) != wantFetch || (m.Drop >= 0) != wantDrop {
				t.Fatalf("oid %v node %s: %+v; before %v after %v", o, n.ID, m, bt, at)
			}
			if m.Fetch >= 0 {
				fetches++
				if at[m.Fetch].ID != n.ID {
					t.Fatalf("fetch slot %d is not %s's", m.Fetch, n.ID)
				}
			}
			if m.Drop >= 0 {
				drops++
			}
			e := Moved(old, new, o, 3, n.ID, true)
			if e.Fetch >= 0 {
				ecFetches++
				if at[e.Fetch].ID != n.ID || (e.Fetch < len(bt) && bt[e.Fetch].ID == n.ID) {
					t.Fatalf("EC fetch %+v for %s: %v -> %v", e, n.ID, bt, at)
				}
			}
			if e.None() != (old.Slot(o, 3, n.ID) == new.Slot(o, 3, n.ID)) {
				t.Fatalf("EC move %+v for unchanged slot", e)
			}
		}
	}
	if fetches == 0 || fetches != drops || ecFetches < fetches {
		t.Fatalf("fetches %d drops %d ec fetches %d", fetches, drops, ecFetches)
	}
}

// TestZonesOneCopyEach: 3 zones of 4 nodes and 3 copies put exactly one copy
// in every zone; with 2 copies, never two in one zone.
func TestZonesOneCopyEach(t *testing.T) {
	var ns []Node
	for z := range 3 {
		for k := range 4 {
			n := node(z*10 + k + 1)
			n.Zone = uint32(100 + z)
			ns = append(ns, n)
		}
	}
	r := New(ns, Options{})
	if got := r.Zones(); !slices.Equal(got, []uint32{100, 101, 102}) {
		t.Fatalf("zones %v", got)
	}
	perNode := map[string]int{}
	oids := testOIDs(t)[:1<<17]
	for _, o := range oids {
		ts := r.Targets(o, 5) // capped at 3 zones
		if len(ts) != 3 {
			t.Fatalf("%d targets", len(ts))
		}
		zs := []uint32{ts[0].Zone, ts[1].Zone, ts[2].Zone}
		slices.Sort(zs)
		if !slices.Equal(zs, []uint32{100, 101, 102}) {
			t.Fatalf("oid %v: zones %v", o, zs)
		}
		for _, n := range ts {
			perNode[n.ID]++
		}
	}
	// Within a zone the 4 nodes share that zone's copies evenly.
	want := map[string]float64{}
	for _, n := range ns {
		want[n.ID] = float64(len(oids)) / 4
	}
	d := maxDev(perNode, want)
	t.Logf("3 zones × 4 nodes, 3 copies: max deviation %.2f%%", 100*d)
	if d > 0.05 {
		t.Errorf("zone members deviate %.2f%%", 100*d)
	}
}

func TestValidate(t *testing.T) {
	ok := equalNodes(3)
	if err := Validate(ok); err != nil {
		t.Fatal(err)
	}
	dupID := append(equalNodes(3), node(9))
	dupID[3].ID = "n1"
	dupAddr := append(equalNodes(3), node(1))
	dupAddr[3].ID = "other"
	noAddr := append(equalNodes(3), Node{ID: "x", Weight: 1})
	for name, ns := range map[string][]Node{"dup id": dupID, "dup addr": dupAddr, "no addr": noAddr} {
		if err := Validate(ns); err == nil {
			t.Errorf("%s: no error", name)
		}
		// New still copes, deterministically.
		a, b := New(ns, Options{Vnodes: 8}), New(reversed(ns), Options{Vnodes: 8})
		if !slices.Equal(a.Targets(42, 3), b.Targets(42, 3)) {
			t.Errorf("%s: order-dependent", name)
		}
	}
}

func BenchmarkTargets(b *testing.B) {
	for _, tc := range []struct{ nodes, copies int }{{3, 3}, {16, 3}, {16, 6}, {64, 3}, {256, 20}} {
		b.Run(fmt.Sprintf("nodes=%d/copies=%d", tc.nodes, tc.copies), func(b *testing.B) {
			r := New(equalNodes(tc.nodes), Options{})
			dst := make([]Node, 0, tc.copies)
			b.ReportAllocs()
			o := proto.OID(0)
			for b.Loop() {
				dst = r.AppendTargets(dst[:0], o, tc.copies)
				o++
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	ns := equalNodes(16)
	for b.Loop() {
		New(ns, Options{})
	}
}

func reversed(ns []Node) []Node {
	r := slices.Clone(ns)
	slices.Reverse(r)
	return r
}

// TestMovementWithinZone: a node added to an existing zone takes only its
// fair part of that zone's copies, and only from nodes of that zone. (Its
// vnodes can come before the zone's old ones in a walk, so EC strip slots
// shift more; that churn is measured, not bounded.)
func TestMovementWithinZone(t *testing.T) {
	var ns []Node
	for z := range 3 {
		for k := range 3 {
			n := node(z*10 + k + 1)
			n.Zone = uint32(100 + z)
			ns = append(ns, n)
		}
	}
	added := node(99)
	added.Zone = 101
	oids := testOIDs(t)
	old, cur := New(ns, Options{}), New(append(slices.Clone(ns), added), Options{})
	moved, slotMoves := 0, 0
	var bt, at []Node
	for _, o := range oids {
		bt, at = old.AppendTargets(bt[:0], o, 3), cur.AppendTargets(at[:0], o, 3)
		for _, n := range at {
			if slices.Contains(bt, n) {
				continue
			}
			// The only newcomer is the new node, replacing its zone's node.
			if n.ID != added.ID || slices.ContainsFunc(bt, func(b Node) bool { return b.Zone == 101 && slices.Contains(at, b) }) {
				t.Fatalf("oid %v: %v -> %v", o, bt, at)
			}
			moved++
		}
		for s := range at {
			if at[s] != bt[s] {
				slotMoves++
			}
		}
	}
	frac, ideal := float64(moved)/float64(3*len(oids)), 1.0/4/3
	t.Logf("3 zones × 3 nodes, +1 node in zone 101: %.2f%% of copies moved (ideal %.2f%%); EC strips changing slot %.2f%%",
		100*frac, 100*ideal, 100*float64(slotMoves)/float64(3*len(oids)))
	if frac > 1.25*ideal {
		t.Errorf("moved %.2f%% > 1.25 × %.2f%%", 100*frac, 100*ideal)
	}
}
