package erasure

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

const benchObject = 4 << 20 // sheepdog's default object size

var benchShapes = [][2]int{{4, 2}, {8, 3}}

// benchSetup returns a codec, a 4 MiB object and strip buffers for it.
func benchSetup(b *testing.B, x, y int) (*Codec, []byte, [][]byte) {
	c := mustCodec(b, x, y)
	obj := randBytes(rand.New(rand.NewPCG(1, 2)), benchObject)
	strips := make([][]byte, x+y)
	for i := range strips {
		strips[i] = make([]byte, benchObject/x)
	}
	if err := c.EncodeRangeInto(strips, obj); err != nil {
		b.Fatal(err)
	}
	return c, obj, strips
}

// BenchmarkEncode compares our object encode (de-interleave + RS) with
// klauspost's raw Encode of already split shards of the same size, so the
// cost of sheepdog's stripe layout shows as the ratio of the two. MB/s is
// object bytes. Run with -cpu 1 for per-core numbers.
func BenchmarkEncode(b *testing.B) {
	for _, s := range benchShapes {
		x, y := s[0], s[1]
		c, obj, strips := benchSetup(b, x, y)
		b.Run(fmt.Sprintf("%d:%d/EncodeRangeInto", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				if err := c.EncodeRangeInto(strips, obj); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d:%d/EncodeObject", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.EncodeObject(obj); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d:%d/raw-reedsolomon", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				if err := c.rs.Encode(strips); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecode: "all-data" is the normal read (interleave only);
// "degraded" loses y data strips and rebuilds them; raw-reedsolomon is the
// library's ReconstructData for the same loss.
func BenchmarkDecode(b *testing.B) {
	for _, s := range benchShapes {
		x, y := s[0], s[1]
		c, _, strips := benchSetup(b, x, y)
		out := make([]byte, benchObject)
		work := make([][]byte, x+y)
		scratch := make([][]byte, y)
		for i := range scratch {
			scratch[i] = make([]byte, 0, benchObject/x)
		}
		lose := func() {
			copy(work, strips)
			for i := range y {
				work[i] = scratch[i]
			}
		}
		b.Run(fmt.Sprintf("%d:%d/all-data", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				if err := c.DecodeRangeInto(out, strips); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d:%d/degraded", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				lose()
				if err := c.DecodeRangeInto(out, work); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d:%d/raw-reedsolomon-degraded", x, y), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				lose()
				if err := c.rs.ReconstructData(work); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInterleave measures the layout copies alone, fixed-size array
// moves against a copy() per chunk.
func BenchmarkInterleave(b *testing.B) {
	obj := randBytes(rand.New(rand.NewPCG(3, 4)), benchObject)
	out := randBytes(rand.New(rand.NewPCG(5, 6)), benchObject)
	for _, x := range []int{2, 4, 8, 16} {
		strips := make([][]byte, x)
		for i := range strips {
			strips[i] = make([]byte, benchObject/x)
		}
		chunk := StripeSize / x
		deinterleave(strips, obj, chunk) // fault the pages in before timing
		b.Run(fmt.Sprintf("x=%d/split", x), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				deinterleave(strips, obj, chunk)
			}
		})
		b.Run(fmt.Sprintf("x=%d/split-generic", x), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				deinterleaveGeneric(strips, obj, chunk)
			}
		})
		b.Run(fmt.Sprintf("x=%d/join", x), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				interleave(out, strips, chunk)
			}
		})
		b.Run(fmt.Sprintf("x=%d/join-generic", x), func(b *testing.B) {
			b.SetBytes(benchObject)
			for b.Loop() {
				interleaveGeneric(out, strips, chunk)
			}
		})
	}
}
