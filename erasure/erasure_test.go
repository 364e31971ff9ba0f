package erasure

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/reedsolomon"

	"github.com/gosheep/gosheep/proto"
)

func allShapes() [][2]int {
	var s [][2]int
	for _, x := range []int{2, 4, 8, 16} {
		for y := 1; y <= proto.MaxParity; y++ {
			s = append(s, [2]int{x, y})
		}
	}
	return s
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func mustCodec(t testing.TB, x, y int) *Codec {
	t.Helper()
	c, err := New(x, y)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGoldenDigests checks that the golden table covers every supported
// shape exactly once and that SelfTest passes. With
// GOSHEEP_ERASURE_GOLDEN=print it prints a fresh table instead (run once
// when the table is first recorded; a changed table means strips written
// by older builds no longer decode).
func TestGoldenDigests(t *testing.T) {
	if os.Getenv("GOSHEEP_ERASURE_GOLDEN") == "print" {
		data := selfTestData()
		var b strings.Builder
		for _, s := range allShapes() {
			strips, err := mustCodec(t, s[0], s[1]).EncodeObject(data)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "\t\t{%d, %d, %q},\n", s[0], s[1], stripsDigest(strips))
		}
		t.Logf("golden table:\n%s", b.String())
		return
	}
	seen := map[[2]int]bool{}
	for _, g := range goldenDigests() {
		k := [2]int{g.data, g.parity}
		if seen[k] || !validShape(g.data, g.parity) || len(g.sha256) != 64 {
			t.Fatalf("bad or duplicate golden entry %+v", g)
		}
		seen[k] = true
	}
	if len(seen) != len(allShapes()) {
		t.Fatalf("golden table has %d shapes, want %d", len(seen), len(allShapes()))
	}
	if err := SelfTest(); err != nil {
		t.Fatal(err)
	}
}

// TestSelfTestPortablePaths runs the self-test with klauspost's SIMD code
// paths switched off: the golden digests must not depend on the CPU.
func TestSelfTestPortablePaths(t *testing.T) {
	for name, opts := range map[string][]reedsolomon.Option{
		"no-avx512": {reedsolomon.WithAVX512(false), reedsolomon.WithGFNI(false), reedsolomon.WithAVXGFNI(false)},
		"ssse3-only": {reedsolomon.WithAVX512(false), reedsolomon.WithGFNI(false), reedsolomon.WithAVXGFNI(false),
			reedsolomon.WithAVX2(false)},
		"pure-go": {reedsolomon.WithAVX512(false), reedsolomon.WithGFNI(false), reedsolomon.WithAVXGFNI(false),
			reedsolomon.WithAVX2(false), reedsolomon.WithSSSE3(false), reedsolomon.WithSSE2(false),
			reedsolomon.WithNEON(false), reedsolomon.WithSVE(false)},
		"one-goroutine": {reedsolomon.WithMaxGoroutines(1)},
	} {
		if err := selfTest(goldenDigests(), opts...); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSelfTestDetectsWrongGolden(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 5 {
		golden := goldenDigests()
		i := rng.IntN(len(golden))
		d := []byte(golden[i].sha256)
		p := rng.IntN(len(d))
		d[p] = "0123456789abcdef"[(strings.IndexByte("0123456789abcdef", d[p])+1)%16]
		golden[i].sha256 = string(d)
		err := selfTest(golden)
		if !errors.Is(err, ErrSelfTest) || !errors.Is(err, proto.ResSystemError) {
			t.Fatalf("corrupted digest for %d:%d: err = %v", golden[i].data, golden[i].parity, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%d:%d", golden[i].data, golden[i].parity)) {
			t.Errorf("error does not name the shape: %v", err)
		}
	}
	// An unsupported shape in the table fails too.
	if err := selfTest([]goldenDigest{{3, 1, strings.Repeat("0", 64)}}); !errors.Is(err, ErrSelfTest) {
		t.Fatalf("bad shape: %v", err)
	}
}

// TestLayout checks sheepdog's strip layout independently: data strip j
// holds bytes [j·512/x, (j+1)·512/x) of every stripe, and parity strip
// chunk k is Reed-Solomon over stripe k's data chunks alone.
func TestLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, s := range [][2]int{{2, 1}, {4, 2}, {8, 3}, {16, 4}, {16, 15}, {2, 15}} {
		x, y := s[0], s[1]
		c := mustCodec(t, x, y)
		obj := randBytes(rng, 7*StripeSize)
		strips, err := c.EncodeObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		w := StripeSize / x
		if len(strips) != x+y || len(strips[0]) != len(obj)/x || c.StripSize(len(obj)) != len(obj)/x {
			t.Fatalf("%v: %d strips of %d bytes", c, len(strips), len(strips[0]))
		}
		raw, err := reedsolomon.New(x, y)
		if err != nil {
			t.Fatal(err)
		}
		for k := range 7 {
			shards := make([][]byte, x+y)
			for j := range x {
				shards[j] = obj[k*StripeSize+j*w : k*StripeSize+(j+1)*w]
				if !bytes.Equal(strips[j][k*w:(k+1)*w], shards[j]) {
					t.Fatalf("%v: stripe %d data strip %d misplaced", c, k, j)
				}
			}
			for j := x; j < x+y; j++ {
				shards[j] = make([]byte, w)
			}
			if err := raw.Encode(shards); err != nil {
				t.Fatal(err)
			}
			for j := x; j < x+y; j++ {
				if !bytes.Equal(strips[j][k*w:(k+1)*w], shards[j]) {
					t.Fatalf("%v: stripe %d parity strip %d differs from per-stripe RS", c, k, j)
				}
			}
		}
	}
}

// combos calls f with every subset of {0..n-1} of size k.
func combos(n, k int, f func([]int)) {
	idx := make([]int, k)
	var rec func(start, depth int)
	rec = func(start, depth int) {
		if depth == k {
			f(idx)
			return
		}
		for i := start; i <= n-(k-depth); i++ {
			idx[depth] = i
			rec(i+1, depth+1)
		}
	}
	rec(0, 0)
}

// TestEveryLossPattern, in MinIO's style: every combination of up to y lost
// strips decodes and reconstructs exactly; every combination of y+1 lost
// strips fails with ErrTooFewStrips and no data.
func TestEveryLossPattern(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, s := range [][2]int{{2, 1}, {4, 2}, {8, 3}, {16, 4}} {
		x, y := s[0], s[1]
		c := mustCodec(t, x, y)
		obj := randBytes(rng, 3*StripeSize)
		strips, err := c.EncodeObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		tried := 0
		for lost := 1; lost <= y+1; lost++ {
			combos(x+y, lost, func(missing []int) {
				tried++
				work := slices.Clone(strips)
				for _, m := range missing {
					work[m] = nil
				}
				got, err := c.DecodeObject(slices.Clone(work), len(obj))
				if lost > y {
					if !errors.Is(err, ErrTooFewStrips) || got != nil {
						t.Fatalf("%v lost %v: got %d bytes, err %v; want ErrTooFewStrips", c, missing, len(got), err)
					}
					if err := c.Reconstruct(work); !errors.Is(err, ErrTooFewStrips) {
						t.Fatalf("%v lost %v: reconstruct err %v", c, missing, err)
					}
					return
				}
				if err != nil || !bytes.Equal(got, obj) {
					t.Fatalf("%v lost %v: decode err %v, equal %v", c, missing, err, bytes.Equal(got, obj))
				}
				if err := c.Reconstruct(work); err != nil {
					t.Fatalf("%v lost %v: reconstruct: %v", c, missing, err)
				}
				for i := range strips {
					if !bytes.Equal(work[i], strips[i]) {
						t.Fatalf("%v lost %v: strip %d rebuilt wrong", c, missing, i)
					}
				}
			})
		}
		t.Logf("%v: %d loss patterns checked", c, tried)
	}
}

func TestReconstructSome(t *testing.T) {
	c := mustCodec(t, 4, 2)
	obj := randBytes(rand.New(rand.NewPCG(9, 9)), 4*StripeSize)
	strips, _ := c.EncodeObject(obj)
	work := slices.Clone(strips)
	work[1], work[5] = nil, nil
	want := make([]bool, 6)
	want[5] = true
	if err := c.ReconstructSome(work, want); err != nil {
		t.Fatal(err)
	}
	if work[1] != nil || !bytes.Equal(work[5], strips[5]) {
		t.Fatalf("rebuilt strip 1: %v, strip 5 correct: %v", work[1] != nil, bytes.Equal(work[5], strips[5]))
	}
	if err := c.ReconstructSome(work, want[:3]); !errors.Is(err, ErrSize) {
		t.Fatalf("short want: %v", err)
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 11))
	for _, s := range [][2]int{{2, 1}, {4, 2}, {8, 3}, {16, 4}} {
		c := mustCodec(t, s[0], s[1])
		strips, _ := c.EncodeObject(randBytes(rng, 5*StripeSize))
		if ok, err := c.Verify(strips); !ok || err != nil {
			t.Fatalf("%v: clean strips: %v %v", c, ok, err)
		}
		for i := range strips {
			for range 4 {
				bad := slices.Clone(strips)
				bad[i] = slices.Clone(strips[i])
				p := rng.IntN(len(bad[i]))
				bad[i][p] ^= byte(1 << rng.IntN(8))
				if ok, err := c.Verify(bad); ok || err != nil {
					t.Fatalf("%v: flipped byte %d of strip %d: ok=%v err=%v", c, p, i, ok, err)
				}
			}
		}
		missing := slices.Clone(strips)
		missing[0] = nil
		if _, err := c.Verify(missing); !errors.Is(err, ErrTooFewStrips) {
			t.Fatalf("%v: verify with a missing strip: %v", c, err)
		}
	}
}

// TestRangeMatchesObject: for random stripe-aligned ranges, EncodeRange
// gives exactly the strips' bytes [off/x, (off+n)/x), and DecodeRange of
// those chunks with up to y of them lost gives the object's bytes back.
func TestRangeMatchesObject(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 13))
	for _, s := range [][2]int{{2, 1}, {4, 2}, {8, 3}, {16, 4}, {16, 15}} {
		x, y := s[0], s[1]
		c := mustCodec(t, x, y)
		const stripes = 64
		obj := randBytes(rng, stripes*StripeSize)
		strips, err := c.EncodeObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			a := rng.IntN(stripes + 1)
			b := a + rng.IntN(stripes-a+1)
			off, n := a*StripeSize, (b-a)*StripeSize
			chunks, err := c.EncodeRange(obj[off : off+n])
			if err != nil {
				t.Fatal(err)
			}
			for i := range chunks {
				if !bytes.Equal(chunks[i], strips[i][off/x:(off+n)/x]) {
					t.Fatalf("%v [%d,+%d): chunk %d differs from whole-object strip", c, off, n, i)
				}
			}
			for _, m := range rng.Perm(x + y)[:rng.IntN(y+1)] {
				chunks[m] = nil
			}
			got, err := c.DecodeRange(chunks, n)
			if err != nil || !bytes.Equal(got, obj[off:off+n]) {
				t.Fatalf("%v [%d,+%d): decode err %v", c, off, n, err)
			}
		}
	}
}

func TestUnalignedObject(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 15))
	c := mustCodec(t, 8, 3)
	for _, size := range []int{0, 1, 100, 511, 512, 513, 4095, 10000} {
		obj := randBytes(rng, size)
		strips, err := c.EncodeObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range strips {
			if len(s) != c.StripSize(size) {
				t.Fatalf("size %d: strip of %d bytes, want %d", size, len(s), c.StripSize(size))
			}
		}
		if size > 0 {
			strips[0], strips[7] = nil, nil
		}
		got, err := c.DecodeObject(strips, size)
		if err != nil || !bytes.Equal(got, obj) {
			t.Fatalf("size %d: err %v equal %v", size, err, bytes.Equal(got, obj))
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, s := range [][2]int{{0, 1}, {3, 1}, {32, 1}, {2, 0}, {4, 16}, {-2, 1}} {
		if _, err := New(s[0], s[1]); !errors.Is(err, ErrShape) || !errors.Is(err, proto.ResInvalidParms) {
			t.Errorf("New(%d,%d): %v", s[0], s[1], err)
		}
	}
	c := mustCodec(t, 4, 2)
	strips, _ := c.EncodeObject(make([]byte, 2*StripeSize))
	cases := map[string]func() error{
		"unaligned range": func() error { _, err := c.EncodeRange(make([]byte, 100)); return err },
		"unaligned decode": func() error {
			_, err := c.DecodeRange(strips, 100)
			return err
		},
		"wrong strip count": func() error { _, err := c.DecodeObject(strips[:5], 1024); return err },
		"short strip": func() error {
			bad := slices.Clone(strips)
			bad[2] = bad[2][:10]
			_, err := c.DecodeObject(bad, 1024)
			return err
		},
		"wrong object size": func() error { _, err := c.DecodeObject(strips, 4096); return err },
		"negative size":     func() error { _, err := c.DecodeObject(strips, -1); return err },
		"negative range":    func() error { _, err := c.DecodeRange(strips, -512); return err },
		"small buffers": func() error {
			dst := make([][]byte, 6)
			return c.EncodeRangeInto(dst, make([]byte, 512))
		},
		"wrong buffer count": func() error { return c.EncodeRangeInto(make([][]byte, 3), make([]byte, 512)) },
		"reconstruct odd size": func() error {
			bad := [][]byte{make([]byte, 7), make([]byte, 7), make([]byte, 7), make([]byte, 7), nil, nil}
			return c.Reconstruct(bad)
		},
	}
	for name, f := range cases {
		if err := f(); !errors.Is(err, ErrSize) {
			t.Errorf("%s: %v, want ErrSize", name, err)
		}
	}
}

func TestZeroLengthRange(t *testing.T) {
	c := mustCodec(t, 4, 2)
	chunks, err := c.EncodeRange(nil)
	if err != nil || len(chunks) != 6 || len(chunks[0]) != 0 {
		t.Fatalf("%v %v", chunks, err)
	}
	got, err := c.DecodeRange(make([][]byte, 6), 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("%v %v", got, err)
	}
}

// TestIntoVariantsDoNotAllocate: the hot paths work in caller buffers.
func TestIntoVariantsDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	c, err := newCodec(8, 3, reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(rand.New(rand.NewPCG(1, 1)), 64*StripeSize)
	dst := make([][]byte, 11)
	for i := range dst {
		dst[i] = make([]byte, len(data)/8)
	}
	out := make([]byte, len(data))
	chunks := make([][]byte, 11)
	scratch := make([][]byte, 3)
	for i := range scratch {
		scratch[i] = make([]byte, 0, len(data)/8)
	}
	encode := testing.AllocsPerRun(20, func() {
		if err := c.EncodeRangeInto(dst, data); err != nil {
			t.Fatal(err)
		}
	})
	fast := testing.AllocsPerRun(20, func() {
		if err := c.DecodeRangeInto(out, dst); err != nil {
			t.Fatal(err)
		}
	})
	degraded := testing.AllocsPerRun(20, func() {
		copy(chunks, dst)
		chunks[0], chunks[3], chunks[6] = scratch[0], scratch[1], scratch[2]
		if err := c.DecodeRangeInto(out, chunks); err != nil {
			t.Fatal(err)
		}
	})
	if !bytes.Equal(out, data) {
		t.Fatal("degraded decode gave wrong data")
	}
	// klauspost itself allocates a little bookkeeping per call (never the
	// strips): our layer must add nothing on top of the raw library calls.
	rawEncode := testing.AllocsPerRun(20, func() {
		if err := c.rs.Encode(dst); err != nil {
			t.Fatal(err)
		}
	})
	rawDegraded := testing.AllocsPerRun(20, func() {
		copy(chunks, dst)
		chunks[0], chunks[3], chunks[6] = scratch[0], scratch[1], scratch[2]
		if err := c.rs.ReconstructData(chunks); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocs: encode %.0f (library %.0f), decode %.0f, degraded decode %.0f (library %.0f)",
		encode, rawEncode, fast, degraded, rawDegraded)
	if encode > rawEncode || fast != 0 || degraded > rawDegraded {
		t.Errorf("allocations: encode %.0f > %.0f, decode %.0f > 0, or degraded %.0f > %.0f",
			encode, rawEncode, fast, degraded, rawDegraded)
	}
}

func TestCodecsCache(t *testing.T) {
	var cs Codecs
	var wg sync.WaitGroup
	got := make([]*Codec, 8)
	for i := range got {
		wg.Go(func() {
			c, err := cs.Get(8, 3)
			if err != nil {
				t.Error(err)
			}
			got[i] = c
		})
	}
	wg.Wait()
	for _, c := range got {
		if c != got[0] {
			t.Fatal("Codecs built two codecs for one shape")
		}
	}
	r, _ := proto.ParseRedundancy("8:3")
	if c, err := cs.For(r); err != nil || c != got[0] {
		t.Fatalf("For(8:3) = %v, %v", c, err)
	}
	for _, s := range allShapes() {
		c, err := cs.Get(s[0], s[1])
		if err != nil || c.Data() != s[0] || c.Parity() != s[1] || c.Strips() != s[0]+s[1] {
			t.Fatalf("Get(%d,%d) = %v, %v", s[0], s[1], c, err)
		}
	}
	if _, err := cs.Get(3, 1); !errors.Is(err, ErrShape) {
		t.Fatal(err)
	}
	if _, err := cs.For(proto.Redundancy{Copies: 3}); !errors.Is(err, ErrShape) {
		t.Fatal(err)
	}
}

// FuzzDecode feeds strips as they might come back from peers: any count,
// any lengths, any content. Decoding must never panic; when it succeeds
// from exactly consistent strips it must return the original data.
func FuzzDecode(f *testing.F) {
	f.Add(uint8(1), uint8(2), uint16(0b11), uint16(1024), []byte("hello"))
	f.Add(uint8(3), uint8(4), uint16(0xffff), uint16(512), []byte{})
	f.Add(uint8(2), uint8(3), uint16(0x5), uint16(7), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, shape, parity uint8, lost uint16, size uint16, seed []byte) {
		x := []int{2, 4, 8, 16}[shape%4]
		y := int(parity%15) + 1
		c := mustCodec(t, x, y)
		obj := make([]byte, int(size)%(8*StripeSize))
		for i := range obj {
			if len(seed) > 0 {
				obj[i] = seed[i%len(seed)] + byte(i)
			}
		}
		strips, err := c.EncodeObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		nlost := 0
		for i := range strips {
			if lost&(1<<(i%16)) != 0 {
				strips[i] = nil
				nlost++
			}
		}
		got, err := c.DecodeObject(slices.Clone(strips), len(obj))
		if err == nil && !bytes.Equal(got, obj) {
			t.Fatalf("%v lost %b: wrong data", c, lost)
		}
		if err == nil && nlost > y && len(obj) > 0 {
			t.Fatalf("%v: decoded with %d of %d strips lost", c, nlost, len(strips))
		}
		// Now garble the lengths: must fail or succeed, never panic.
		for i := range strips {
			if len(seed) > i && seed[i]%3 == 0 && strips[i] != nil {
				strips[i] = strips[i][:len(strips[i])/2]
			}
		}
		_, _ = c.DecodeObject(strips, len(obj))
		_ = c.Reconstruct(strips)
		_, _ = c.Verify(strips)
		_, _ = c.DecodeRange(strips, int(size))
	})
}

// TestConcurrentUse shares one Codec between goroutines that encode and
// decode with different loss patterns (run with -race).
func TestConcurrentUse(t *testing.T) {
	c := mustCodec(t, 8, 3)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			for range 20 {
				obj := randBytes(rng, 16*StripeSize)
				strips, err := c.EncodeObject(obj)
				if err != nil {
					t.Error(err)
					return
				}
				for _, m := range rng.Perm(11)[:3] {
					strips[m] = nil
				}
				got, err := c.DecodeObject(strips, len(obj))
				if err != nil || !bytes.Equal(got, obj) {
					t.Errorf("goroutine %d: decode err %v", g, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
