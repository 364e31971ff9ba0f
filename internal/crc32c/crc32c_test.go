package crc32c

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// ref is the reference implementation.
func ref(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }

// forEachPath runs f once with the folding path off ("fallback") and
// once with it on where the CPU has it ("fast"), passing the Update to
// test. On a CPU without the features the "fast" subtest says so and runs
// the fallback again.
func forEachPath(t *testing.T, f func(t *testing.T, update func(uint32, []byte) uint32)) {
	t.Run("fallback", func(t *testing.T) {
		f(t, func(crc uint32, p []byte) uint32 { return updateWith(false, crc, p) })
	})
	t.Run("fast", func(t *testing.T) {
		if !hasFast {
			t.Log("CPU lacks AVX-512/VPCLMULQDQ (or not amd64): testing the fallback path")
		}
		f(t, func(crc uint32, p []byte) uint32 { return updateWith(hasFast, crc, p) })
	})
}

func testLengths() []int {
	var ls []int
	for n := 0; n <= 8192; n++ {
		ls = append(ls, n)
	}
	return append(ls, 65536-1, 65536, 65536+17, 1<<20, 1<<20+255, 4<<20)
}

func TestUpdateMatchesHashCRC32(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const maxOff = 64
	buf := make([]byte, 4<<20+256+maxOff)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	offsets := []int{0, 1, 3, 7, 8, 15, 31, 63}
	forEachPath(t, func(t *testing.T, update func(uint32, []byte) uint32) {
		for _, off := range offsets {
			for _, n := range testLengths() {
				p := buf[off : off+n]
				crc := rng.Uint32()
				if n%7 == 0 {
					crc = 0
				}
				if got, want := update(crc, p), ref(crc, p); got != want {
					t.Fatalf("Update(%#08x, buf[%d:%d]) = %#08x, want %#08x", crc, off, off+n, got, want)
				}
			}
		}
		for n := range 600 {
			if got, want := update(0, buf[:n]), crc32.Checksum(buf[:n], castagnoli); got != want {
				t.Fatalf("Checksum(%d bytes) = %#08x, want %#08x", n, got, want)
			}
		}
	})
}

// TestSpecialInputs covers data patterns random data might miss.
func TestSpecialInputs(t *testing.T) {
	zeros := make([]byte, 1<<16)
	ones := bytes.Repeat([]byte{0xff}, 1<<16)
	forEachPath(t, func(t *testing.T, update func(uint32, []byte) uint32) {
		for _, p := range [][]byte{zeros, ones} {
			for _, n := range []int{0, 1, 255, 256, 257, 4096, 4097, 1 << 16} {
				for _, crc := range []uint32{0, 0xffffffff, 0x80000000, 1} {
					if got, want := update(crc, p[:n]), ref(crc, p[:n]); got != want {
						t.Fatalf("Update(%#08x, %d x %#02x) = %#08x, want %#08x", crc, n, p[0], got, want)
					}
				}
			}
		}
		// Known answer: CRC-32C("123456789") = 0xE3069283.
		if got := update(0, []byte("123456789")); got != 0xE3069283 {
			t.Fatalf("Checksum(123456789) = %#08x", got)
		}
	})
}

// TestSplit checks update(update(c, a), b) == update(c, a||b).
func TestSplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 1<<17)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	forEachPath(t, func(t *testing.T, update func(uint32, []byte) uint32) {
		for range 3000 {
			n := rng.IntN(len(buf) + 1)
			if rng.IntN(2) == 0 {
				n = rng.IntN(5000)
			}
			off := rng.IntN(len(buf) - n + 1)
			p := buf[off : off+n]
			k := rng.IntN(n + 1)
			c := rng.Uint32()
			whole := update(c, p)
			if split := update(update(c, p[:k]), p[k:]); split != whole {
				t.Fatalf("n=%d split at %d: %#08x != %#08x", n, k, split, whole)
			}
			if want := ref(c, p); whole != want {
				t.Fatalf("n=%d: %#08x, want %#08x", n, whole, want)
			}
		}
	})
}

func FuzzUpdate(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 15, 16, 255, 256, 257, 300, 511, 512, 1000, 4096, 4111} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		f.Add(rng.Uint32(), p)
	}
	f.Fuzz(func(t *testing.T, crc uint32, p []byte) {
		if got, want := Update(crc, p), ref(crc, p); got != want {
			t.Fatalf("Update(%#08x, %d bytes) = %#08x, want %#08x", crc, len(p), got, want)
		}
		// The same bytes at a shifted address.
		q := make([]byte, len(p)+3)
		copy(q[3:], p)
		if got, want := Update(crc, q[3:]), ref(crc, p); got != want {
			t.Fatalf("misaligned Update(%#08x, %d bytes) = %#08x, want %#08x", crc, len(p), got, want)
		}
	})
}

// TestXPowMod checks xPowMod against hash/crc32 itself: from state 0 (crc
// argument 0xffffffff, result inverted) the CRC of a message whose only
// set bit has degree d is x^(d+32) mod P (see consts.go).
func TestXPowMod(t *testing.T) {
	if bits.Reverse32(polyCastagnoli) != crc32.Castagnoli {
		t.Fatalf("polyCastagnoli %#08x is not crc32.Castagnoli %#08x reversed", polyCastagnoli, uint32(crc32.Castagnoli))
	}
	if xPowMod(0) != 1 || xPowMod(31) != 1<<31 || xPowMod(32) != polyCastagnoli {
		t.Fatal("xPowMod wrong for n <= 32")
	}
	for nbytes := 1; nbytes <= 300; nbytes++ {
		msg := make([]byte, nbytes)
		for b := range 8 {
			clear(msg)
			msg[0] = 1 << b            // coefficient of x^(8*nbytes-1-b)
			d := 8*nbytes - 1 - b + 32 // times x^32
			raw := ^crc32.Update(0xffffffff, castagnoli, msg)
			if got := foldConst(d); got != uint64(raw) {
				t.Fatalf("foldConst(%d) = %#08x, hash/crc32 says %#08x", d, got, raw)
			}
		}
	}
}

// TestFoldConstants recomputes foldConsts from the polynomial.
func TestFoldConstants(t *testing.T) {
	pair := func(d int) [2]uint64 { return [2]uint64{foldConst(d + 31), foldConst(d - 33)} }
	want := map[int][2]uint64{
		offK2048:      pair(2048),
		offK512:       pair(512),
		offK128:       pair(128),
		offLanes:      pair(384),
		offLanes + 16: pair(256),
		offLanes + 32: pair(128),
		offLanes + 48: {0, 0},
	}
	if len(foldConsts)*8 != offLanes+64 {
		t.Fatalf("foldConsts has %d bytes, want %d", len(foldConsts)*8, offLanes+64)
	}
	for off, w := range want {
		if got := [2]uint64{foldConsts[off/8], foldConsts[off/8+1]}; got != w {
			t.Errorf("foldConsts at byte %d = %#08x, want %#08x", off, got, w)
		}
	}
}

// clmul is a software PCLMULQDQ: the carry-less product of a and b.
func clmul(a, b uint64) (hi, lo uint64) {
	for i := range 64 {
		if b>>i&1 != 0 {
			lo ^= a << i
			if i > 0 {
				hi ^= a >> (64 - i)
			}
		}
	}
	return hi, lo
}

type lane [2]uint64 // lo qword (bytes 0..7), hi qword (bytes 8..15)

func loadLane(p []byte) lane {
	return lane{binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])}
}

// fold returns lo(v)*kLo ^ hi(v)*kHi, k = foldConsts[i:i+2].
func fold(v lane, i int) lane {
	h1, l1 := clmul(v[0], foldConsts[i])
	h2, l2 := clmul(v[1], foldConsts[i+1])
	return lane{l1 ^ l2, h1 ^ h2}
}

func xor(a, b lane) lane { return lane{a[0] ^ b[0], a[1] ^ b[1]} }

// model is the assembly's algorithm in portable Go, with the same steps
// and constants; it checks the mathematics independently of the assembly.
func model(crc uint32, p []byte) uint32 {
	if len(p) < 256 {
		panic("short")
	}
	var acc [16]lane
	for i := range acc {
		acc[i] = loadLane(p[16*i:])
	}
	acc[0][0] ^= uint64(^crc)
	p = p[256:]
	for len(p) >= 256 {
		for i := range acc {
			acc[i] = xor(fold(acc[i], offK2048/8), loadLane(p[16*i:]))
		}
		p = p[256:]
	}
	for z := range 3 { // ZMM z onto ZMM z+1
		for l := range 4 {
			acc[4*z+4+l] = xor(fold(acc[4*z+l], offK512/8), acc[4*z+4+l])
		}
	}
	last := [4]lane(acc[12:])
	for len(p) >= 64 {
		for l := range 4 {
			last[l] = xor(fold(last[l], offK512/8), loadLane(p[16*l:]))
		}
		p = p[64:]
	}
	v := last[3]
	for l := range 3 {
		v = xor(v, fold(last[l], offLanes/8+2*l))
	}
	for len(p) >= 16 {
		v = xor(fold(v, offK128/8), loadLane(p))
		p = p[16:]
	}
	var tail [32]byte
	binary.LittleEndian.PutUint64(tail[0:], v[0])
	binary.LittleEndian.PutUint64(tail[8:], v[1])
	n := copy(tail[16:], p)
	// From state 0: hash/crc32 inverts its crc argument and its result.
	return crc32.Update(0xffffffff, castagnoli, tail[:16+n])
}

func TestModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	buf := make([]byte, 3000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for n := 256; n <= len(buf); n += 1 + n%5 {
		c := rng.Uint32()
		if got, want := model(c, buf[:n]), ref(c, buf[:n]); got != want {
			t.Fatalf("model(%#08x, %d bytes) = %#08x, want %#08x", c, n, got, want)
		}
	}
}

var benchSizes = []int{512, 4096, 65536, 1 << 20}

func benchmark(b *testing.B, f func(uint32, []byte) uint32) {
	for _, n := range benchSizes {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			var c uint32
			for b.Loop() {
				c = f(c, p)
			}
		})
	}
}

// BenchmarkUpdate measures this package; BenchmarkHashCRC32 the same sizes
// with hash/crc32 for comparison.
func BenchmarkUpdate(b *testing.B)    { benchmark(b, Update) }
func BenchmarkHashCRC32(b *testing.B) { benchmark(b, ref) }
