package crc32c

import (
	"hash/crc32"

	"golang.org/x/sys/cpu"
)

// minFast is the smallest length handed to updateAVX512. The assembly
// needs at least 256 bytes (it starts by loading four 64-byte registers);
// below that, hash/crc32 (SSE4.2 CRC32, 3-way) is used. 256 was chosen by
// measurement: see BenchmarkCutover.
const minFast = 256

// The assembly reads 256 bytes unconditionally: minFast must not go below.
const _ = uint(minFast - 256)

// hasFast reports whether the CPU and OS support the folding path.
// cpu.X86.HasAVX512F is only set if the OS saves the ZMM state (XGETBV).
// AVX-512F: ZMM loads, VPTERNLOGD, VBROADCASTI32X4, VEXTRACTI*; VL is
// required for good measure (the 128/256-bit ops are VEX-encoded here);
// VPCLMULQDQ: 512-bit carry-less multiply; PCLMULQDQ: the 128-bit one;
// SSE4.2: the CRC32 instruction for the finish.
var hasFast = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL &&
	cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE42

func update(crc uint32, p []byte) uint32 { return updateWith(hasFast, crc, p) }

// updateWith is update with the folding path on or off (tests run both;
// fast must only be true where hasFast is).
func updateWith(fast bool, crc uint32, p []byte) uint32 {
	if fast && len(p) >= minFast {
		return updateAVX512(crc, p)
	}
	return crc32.Update(crc, castagnoli, p)
}

// updateAVX512 is Update for len(p) >= 256 on CPUs where hasFast is true.
//
//go:noescape
func updateAVX512(crc uint32, p []byte) uint32
