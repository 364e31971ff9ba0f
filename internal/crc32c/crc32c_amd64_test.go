package crc32c

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/cpu"
)

// TestFastPathPresent fails if the CPU has the features but Update does
// not use the fast path (for example because a feature check went wrong).
func TestFastPathPresent(t *testing.T) {
	t.Logf("AVX512F=%v AVX512VL=%v AVX512VPCLMULQDQ=%v PCLMULQDQ=%v SSE42=%v",
		cpu.X86.HasAVX512F, cpu.X86.HasAVX512VL, cpu.X86.HasAVX512VPCLMULQDQ, cpu.X86.HasPCLMULQDQ, cpu.X86.HasSSE42)
	features := cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VPCLMULQDQ &&
		cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE42
	if features != hasFast {
		t.Fatalf("hasFast = %v, but CPU features say %v", hasFast, features)
	}
	if !features {
		t.Log("CPU lacks the features: fast path correctly off")
	}
}

// TestAssemblyDirect calls the assembly for every length it accepts up to
// a few KiB, whatever minFast is.
func TestAssemblyDirect(t *testing.T) {
	if !hasFast {
		t.Log("CPU lacks AVX-512 VPCLMULQDQ: cannot run the assembly; nothing to test")
		return
	}
	rng := rand.New(rand.NewPCG(9, 10))
	buf := make([]byte, 5000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for off := range 17 {
		for n := 256; off+n <= len(buf); n++ {
			c := rng.Uint32()
			p := buf[off : off+n]
			if got, want := updateAVX512(c, p), ref(c, p); got != want {
				t.Fatalf("updateAVX512(%#08x, buf[%d:%d]) = %#08x, want %#08x", c, off, off+n, got, want)
			}
		}
	}
}

// BenchmarkCutover compares the assembly with hash/crc32 at small sizes,
// to choose minFast.
func BenchmarkCutover(b *testing.B) {
	if !hasFast {
		b.Skip("no AVX-512 VPCLMULQDQ")
	}
	for _, n := range []int{256, 272, 320, 384, 448, 512, 768, 1024} {
		p := make([]byte, n)
		for _, impl := range []struct {
			name string
			f    func(uint32, []byte) uint32
		}{{"hash-crc32", ref}, {"avx512", updateAVX512}} {
			b.Run(fmt.Sprintf("%d/%s", n, impl.name), func(b *testing.B) {
				b.SetBytes(int64(n))
				var c uint32
				for b.Loop() {
					c = impl.f(c, p)
				}
			})
		}
	}
}
