package crc32c

import "math/bits"

// The folding constants, and how to check them.
//
// Notation. P(x) = x^32 + 0x1EDC6F41 is the CRC-32C polynomial (bit i of
// 0x1EDC6F41 is the coefficient of x^i). CRC-32C is a "reflected" CRC:
// the first bit of the message (bit 0 of byte 0) is its highest-degree
// coefficient, and a 32-bit CRC value c stands for the polynomial
// c(x) = sum c_j x^(31-j) (bit j of c is the coefficient of x^(31-j)).
// With the register state s (the inverted crc), the CRC of message M of n
// bits is s(x)*x^n + M(x)*x^32 mod P. Since s(x)*x^n = (s(x)*x^(n-32))*x^32
// and s(x)*x^(n-32) is s written over the first 32 bits of M, we can XOR
// the inverted crc into the first four bytes and then start from state 0.
// From then on only M(x) mod P matters, so any transformation that keeps
// the message polynomial congruent mod P keeps the CRC.
//
// A 128-bit lane loaded little-endian from 16 message bytes has qwords
// lo (bytes 0..7) and hi (bytes 8..15); by the bit order above it stands
// for V(x) = lo(x)*x^64 + hi(x), with lo(x) = sum lo_i x^(63-i) and the
// same for hi.
//
// PCLMULQDQ multiplies integers without carries: bit k of a (x) b is
// XOR over i+j=k of a_i*b_j. For a 64-bit qword a and a 32-bit constant c
// in a lane of the product, read as a 128-bit lane as above:
//
//	sum_k (a (x) c)_k x^(127-k) = sum_{i,j} a_i c_j x^(127-i-j)
//	                           = a(x) * x^33 * c(x)        (c(x) = sum c_j x^(31-j)).
//
// The product has degree <= 63+64 = 127, so it fits the lane exactly.
//
// Folding. If lane V is followed D bits later (start to start) by lane W,
// the message contains V(x)*x^D + W(x) (times the same power of x), and
//
//	V(x)*x^D = lo(x)*x^(D+64) + hi(x)*x^D
//	        == lo(x)*x^33*(x^(D+31) mod P) + hi(x)*x^33*(x^(D-33) mod P)  (mod P)
//	        =  poly(lo (x) kLo) + poly(hi (x) kHi)
//
// with kLo = x^(D+31) mod P and kHi = x^(D-33) mod P, both as reflected
// 32-bit values. So lane W is replaced by
// clmul(lo, kLo) ^ clmul(hi, kHi) ^ W, which is congruent mod P and again
// 128 bits wide; V disappears. A pair (kLo, kHi) is stored as two qwords
// [kLo, kHi] so that VPCLMULQDQ selectors 0x00 (lo*lo) and 0x11 (hi*hi)
// pick the right constant for each half.
//
// Distances used (in bits):
//
//	2048  main loop: 4 ZMM = 16 lanes = 256 bytes per step, each lane
//	      folds onto the lane 256 bytes later
//	 512  one ZMM (64 bytes) onto the next: combining the 4 accumulators,
//	      and the 64-byte loop
//	 384, 256, 128
//	      the four lanes of the last ZMM onto its last lane
//	 128  the 16-byte loop
//
// After folding, the remaining message is one 16-byte lane plus < 16
// tail bytes; its CRC (from state 0) is the CRC of the whole input, and
// the assembly computes it with the SSE4.2 CRC32 instruction.
//
// TestFoldConstants recomputes every value below from P with xPowMod.

// Byte offsets into foldConsts, for the assembly.
const (
	offK2048 = 0  // [x^2079, x^2015] mod P
	offK512  = 16 // [x^543,  x^479]  mod P
	offK128  = 32 // [x^159,  x^95]   mod P
	offLanes = 48 // 4 lanes: fold by 384, 256, 128 bits, and 0 (lane 3 kept)
)

// foldConsts holds [kLo, kHi] qword pairs, one per 128-bit lane; see the
// comment above. It is read by crc32c_amd64.s as ·foldConsts(SB).
var foldConsts = [14]uint64{
	0xdcb17aa4, 0xb9e02b86, // D = 2048: x^(2048+31), x^(2048-33)
	0x740eef02, 0x9e4addf8, // D = 512:  x^(512+31),  x^(512-33)
	0xf20c0dfe, 0x493c7d27, // D = 128:  x^(128+31),  x^(128-33)
	0x1c291d04, 0xddc0152b, // lane 0, D = 384: x^415, x^351
	0x3da6d0cb, 0xba4fc28e, // lane 1, D = 256: x^287, x^223
	0xf20c0dfe, 0x493c7d27, // lane 2, D = 128: x^159, x^95
	0, 0, // lane 3: not multiplied, XORed in as it is
}

// polyCastagnoli is P(x) without its x^32 term, in normal bit order
// (bit i = coefficient of x^i); crc32.Castagnoli is the same polynomial
// bit-reversed.
const polyCastagnoli = 0x1EDC6F41

// xPowMod returns x^n mod P in normal bit order.
func xPowMod(n int) uint32 {
	r := uint32(1)
	for range n {
		top := r >> 31
		r <<= 1
		if top != 0 {
			r ^= polyCastagnoli
		}
	}
	return r
}

// foldConst returns x^n mod P as a reflected 32-bit value (bit j = coefficient
// of x^(31-j)), the form PCLMULQDQ needs (see above).
func foldConst(n int) uint64 { return uint64(bits.Reverse32(xPowMod(n))) }
