// Package placement maps objects to nodes: a consistent-hash ring of
// virtual nodes with zones, in the manner of sheepdog (ref §4.1). A Ring is
// a pure, deterministic function of a node list (the members of one epoch):
// every node that builds a Ring from the same list, in any order, places
// every object on the same nodes in the same order.
//
// Hashing follows sheepdog: a node's seed is FNV-1a-64 over its 18-byte
// node_id (address as 16 bytes, IPv4 as 12 zero bytes + 4, then the port
// little-endian) plus one mix round; vnode k sits at the seed mixed k+1
// times; an object sits at proto.HashOID(oid). The first copy goes to the
// first vnode at or after the object's position, further copies to the next
// vnodes clockwise whose zone is not yet used.
package placement

import (
	"bytes"
	"cmp"
	"fmt"
	"math/big"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/gosheep/gosheep/proto"
)

// DefaultVnodes is the base number of virtual nodes given to a node of
// average weight. Sheepdog uses 128, which leaves a node's share of the data
// about 1/sqrt(128) ≈ 9% (one standard deviation) off its fair share; 4096
// brings that to ≈1.6%, so that with 3..16 equal nodes every node is within
// 5% of fair (see TestBalanceEqualNodes). The ring costs 16 bytes per vnode
// (1 MiB for 16 nodes) and lookups stay O(1) thanks to the bucket index.
const DefaultVnodes = 8192

// maxVnodesBase bounds Options.Vnodes so that a hostile or mistaken
// configuration cannot make New allocate without limit: the ring holds about
// base × (number of data nodes) vnodes.
const maxVnodesBase = 1 << 16

// Node is one cluster member as placement sees it.
type Node struct {
	// ID names the node across epochs (the membership name). Empty means
	// Addr.String().
	ID string
	// Addr is the node's protocol address; its bytes seed the node's vnodes.
	Addr netip.AddrPort
	// Zone is the failure domain; no two copies of an object share a zone.
	// Sheep's default is proto.DefaultZone(addr), one zone per host.
	Zone uint32
	// Weight is the node's capacity in bytes. 0 means gateway-only: the node
	// is a member but holds no data and owns no vnodes.
	Weight uint64
}

// Options tune a Ring. The zero value is sheepdog's auto-vnodes mode with
// DefaultVnodes.
type Options struct {
	// Vnodes is the number of virtual nodes of a node of average weight; a
	// node gets round(Vnodes × Weight / average weight), at least 1. Values
	// <= 0 mean DefaultVnodes; values above 65536 are clamped.
	Vnodes int
}

// vnode is one point on the ring. Node and zone indexes are stored inline so
// that the clockwise walk touches one array only.
type vnode struct {
	hash uint64
	node uint32 // index into Ring.nodes
	zone uint32 // dense zone index into Ring.zones
}

// Ring is an immutable placement ring; it is safe for concurrent use.
type Ring struct {
	nodes  []Node   // canonical order: by node_id bytes, then ID
	counts []int    // vnodes per node, parallel to nodes
	zones  []uint32 // distinct zones of data nodes, ascending
	byID   map[string]int
	ring   []vnode  // ascending by (hash, node)
	bucket []uint32 // bucket[b] = first ring index whose hash>>shift >= b
	shift  uint     // 64 - log2(len(bucket)-1)
}

// New builds the ring of a node list. The order of nodes does not matter;
// exact duplicates are dropped. New never fails: use Validate to reject
// lists that would place poorly (duplicate IDs or addresses).
func New(nodes []Node, opts Options) *Ring {
	base := opts.Vnodes
	if base <= 0 {
		base = DefaultVnodes
	}
	base = min(base, maxVnodesBase)

	// Sort by the node_id bytes first, as sheep orders its node list; the
	// rest of the fields only make the order total.
	type keyed struct {
		key [18]byte
		n   Node
	}
	ks := make([]keyed, len(nodes))
	for i, n := range nodes {
		if n.ID == "" {
			n.ID = n.Addr.String()
		}
		ks[i] = keyed{nodeKey(n.Addr), n}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		return cmp.Or(
			bytes.Compare(a.key[:], b.key[:]),
			strings.Compare(a.n.ID, b.n.ID),
			cmp.Compare(a.n.Zone, b.n.Zone),
			cmp.Compare(a.n.Weight, b.n.Weight))
	})
	ks = slices.Compact(ks)
	ns := make([]Node, len(ks))
	for i := range ks {
		ns[i] = ks[i].n
	}

	r := &Ring{nodes: ns, counts: make([]int, len(ns)), byID: make(map[string]int, len(ns))}
	for i, n := range ns {
		if _, dup := r.byID[n.ID]; !dup {
			r.byID[n.ID] = i
		}
		if n.Weight > 0 {
			r.zones = append(r.zones, n.Zone)
		}
	}
	slices.Sort(r.zones)
	r.zones = slices.Compact(r.zones)

	total := 0
	vnodeCounts(ns, base, r.counts)
	for _, c := range r.counts {
		total += c
	}
	r.ring = make([]vnode, 0, total)
	for i, n := range ns {
		if r.counts[i] == 0 {
			continue
		}
		z, _ := slices.BinarySearch(r.zones, n.Zone)
		k := nodeKey(n.Addr)
		h := proto.HashMix(proto.FNV1a64(k[:], proto.FNV64Basis))
		for range r.counts[i] {
			h = proto.HashMix(h)
			r.ring = append(r.ring, vnode{hash: h, node: uint32(i), zone: uint32(z)})
		}
	}
	// Vnodes were appended in node order, so a stable sort by hash leaves
	// ties (practically never seen) ordered by node: the order is total.
	radixSort(r.ring)
	r.buildBuckets()
	return r
}

// Validate reports why a node list would make a poor ring: an empty or
// duplicate ID, a duplicate address, or a data node without a valid address.
// The membership layer should refuse such a list rather than place data by it.
func Validate(nodes []Node) error {
	ids := make(map[string]bool, len(nodes))
	addrs := make(map[netip.AddrPort]bool, len(nodes))
	for _, n := range nodes {
		id := n.ID
		if id == "" {
			id = n.Addr.String()
		}
		if ids[id] {
			return fmt.Errorf("placement: duplicate node id %q: %w", id, proto.ResInvalidParms)
		}
		ids[id] = true
		if !n.Addr.IsValid() {
			if n.Weight > 0 {
				return fmt.Errorf("placement: data node %q has no address: %w", id, proto.ResInvalidParms)
			}
			continue
		}
		if addrs[n.Addr] {
			return fmt.Errorf("placement: duplicate node address %s: %w", n.Addr, proto.ResInvalidParms)
		}
		addrs[n.Addr] = true
	}
	return nil
}

// nodeKey is sheepdog's 18-byte node_id prefix that seeds the node's hash.
func nodeKey(a netip.AddrPort) [18]byte {
	id := proto.Node{Addr: a.Addr(), Port: a.Port()}.IDBytes()
	return [18]byte(id)
}

// vnodeCounts fills counts with round(base × weight × ndata / Σweight), at
// least 1 for a data node, computed exactly in integers so every platform
// agrees (floating point could differ through fused multiply-add).
func vnodeCounts(ns []Node, base int, counts []int) {
	var sum, ndata big.Int
	for _, n := range ns {
		if n.Weight > 0 {
			sum.Add(&sum, new(big.Int).SetUint64(n.Weight))
			ndata.Add(&ndata, big.NewInt(1))
		}
	}
	if ndata.Sign() == 0 {
		return
	}
	var num, q, rem, twice big.Int
	for i, n := range ns {
		if n.Weight == 0 {
			continue
		}
		num.SetUint64(n.Weight)
		num.Mul(&num, big.NewInt(int64(base)))
		num.Mul(&num, &ndata)
		q.QuoRem(&num, &sum, &rem)
		if twice.Lsh(&rem, 1).Cmp(&sum) >= 0 { // round half up
			q.Add(&q, big.NewInt(1))
		}
		// q <= base × ndata, which the bound on base keeps well inside int.
		counts[i] = max(int(q.Int64()), 1)
	}
}

// radixSort sorts vs stably by hash, 8 bits per pass: a comparison sort
// of a ring of 10^5..10^6 vnodes takes tens of milliseconds, this a few.
func radixSort(vs []vnode) {
	tmp := make([]vnode, len(vs))
	src, dst := vs, tmp
	for shift := 0; shift < 64; shift += 8 {
		var count [257]int
		for _, v := range src {
			count[(v.hash>>shift)&0xff+1]++
		}
		for i := 1; i < len(count); i++ {
			count[i] += count[i-1]
		}
		for _, v := range src {
			d := (v.hash >> shift) & 0xff
			dst[count[d]] = v
			count[d]++
		}
		src, dst = dst, src
	}
	// An even number of passes leaves the result in vs.
}

// buildBuckets indexes the ring by the top bits of the hash so that a
// lookup inspects about one vnode instead of binary-searching the ring.
func (r *Ring) buildBuckets() {
	if len(r.ring) == 0 {
		return
	}
	b := min(max(bits.Len(uint(len(r.ring))), 1), 20)
	r.shift = uint(64 - b)
	nb := 1 << b
	r.bucket = make([]uint32, nb+1)
	j := 0
	for i := range nb {
		for j < len(r.ring) && r.ring[j].hash>>r.shift < uint64(i) {
			j++
		}
		r.bucket[i] = uint32(j)
	}
	r.bucket[nb] = uint32(len(r.ring))
}

// first returns the ring index of the first vnode at or after h, wrapping.
func (r *Ring) first(h uint64) int {
	b := h >> r.shift
	lo, hi := int(r.bucket[b]), int(r.bucket[b+1])
	for lo < hi && r.ring[lo].hash < h {
		lo++
	}
	if lo == len(r.ring) {
		return 0
	}
	return lo
}

// walk writes the node indexes of the first n distinct zones clockwise from
// h into out (len(out) >= n) and returns how many it wrote.
func (r *Ring) walk(h uint64, n int, out []int32) int {
	n = min(n, len(r.zones))
	if n <= 0 {
		return 0
	}
	i := r.first(h)
	var used [4]uint64 // zone bitmap when there are at most 256 zones
	small := len(r.zones) <= 256
	got := 0
	for range len(r.ring) {
		v := r.ring[i]
		if i++; i == len(r.ring) {
			i = 0
		}
		if small {
			w, m := v.zone>>6, uint64(1)<<(v.zone&63)
			if used[w]&m != 0 {
				continue
			}
			used[w] |= m
		} else if r.zoneTaken(out[:got], v.zone) {
			continue
		}
		out[got] = int32(v.node)
		if got++; got == n {
			break
		}
	}
	return got
}

func (r *Ring) zoneTaken(chosen []int32, zone uint32) bool {
	z := r.zones[zone]
	for _, c := range chosen {
		if r.nodes[c].Zone == z {
			return true
		}
	}
	return false
}

// idxBuf is large enough for the targets of any sheepdog redundancy.
const idxBuf = proto.MaxCopies + 1

// AppendTargets appends the nodes holding oid's n copies (or EC strips) to
// dst, in placement order: strip i of an erasure-coded object lives on the
// i-th node. n is capped at the number of zones that hold data. It does not
// allocate when dst has room.
func (r *Ring) AppendTargets(dst []Node, oid proto.OID, n int) []Node {
	var buf [idxBuf]int32
	idx := buf[:]
	if n > len(buf) {
		idx = make([]int32, min(n, len(r.zones)))
	}
	k := r.walk(proto.HashOID(oid), n, idx)
	for _, i := range idx[:k] {
		dst = append(dst, r.nodes[i])
	}
	return dst
}

// Targets returns oid's n targets in placement order (see AppendTargets).
func (r *Ring) Targets(oid proto.OID, n int) []Node {
	return r.AppendTargets(nil, oid, n)
}

// Primary returns the node of oid's first copy; false if no node holds data.
func (r *Ring) Primary(oid proto.OID) (Node, bool) {
	if len(r.ring) == 0 {
		return Node{}, false
	}
	return r.nodes[r.ring[r.first(proto.HashOID(oid))].node], true
}

// Slot returns the position of node id among oid's n targets (the replica
// number, or the EC strip index it holds), or -1 if it holds none.
func (r *Ring) Slot(oid proto.OID, n int, id string) int {
	me, ok := r.byID[id]
	if !ok {
		return -1
	}
	var buf [idxBuf]int32
	idx := buf[:]
	if n > len(buf) {
		idx = make([]int32, min(n, len(r.zones)))
	}
	k := r.walk(proto.HashOID(oid), n, idx)
	for s, i := range idx[:k] {
		if int(i) == me {
			return s
		}
	}
	return -1
}

// Has reports whether node id is a member (data or gateway-only).
func (r *Ring) Has(id string) bool {
	_, ok := r.byID[id]
	return ok
}

// Nodes returns every member (data and gateway-only) in canonical order.
func (r *Ring) Nodes() []Node { return slices.Clone(r.nodes) }

// Zones returns the distinct zones of the nodes that hold data, ascending.
// Its length is the most copies an object can have.
func (r *Ring) Zones() []uint32 { return slices.Clone(r.zones) }

// Len returns the number of vnodes on the ring.
func (r *Ring) Len() int { return len(r.ring) }

// Vnodes returns how many vnodes node id owns (0 for a gateway-only or
// unknown node), as `dog node list` shows.
func (r *Ring) Vnodes(id string) int {
	i, ok := r.byID[id]
	if !ok {
		return 0
	}
	return r.counts[i]
}

// Move is what one node must do for one object after the ring changed.
// Fetch and Drop are slot numbers (see Ring.Slot), -1 for nothing.
type Move struct {
	Fetch int // the node must obtain this copy / strip
	Drop  int // the node may discard this copy / strip once the new holders have it
}

// None reports whether the node has nothing to do.
func (m Move) None() bool { return m.Fetch < 0 && m.Drop < 0 }

// Moved tells node id what to do for oid (with n copies) when placement
// changes from old to new. For replicated objects (ordered=false) copies
// are interchangeable: a node that holds a copy under both rings keeps it
// even if its slot number changed. For erasure-coded objects (ordered=true)
// slot i is strip i, so a node whose slot changed must fetch (or rebuild)
// its new strip and may drop its old one.
func Moved(old, new *Ring, oid proto.OID, n int, id string, ordered bool) Move {
	was, is := old.Slot(oid, n, id), new.Slot(oid, n, id)
	switch {
	case was == is:
		return Move{Fetch: -1, Drop: -1}
	case !ordered && was >= 0 && is >= 0:
		return Move{Fetch: -1, Drop: -1}
	}
	return Move{Fetch: is, Drop: was}
}
