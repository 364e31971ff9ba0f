#include "go_asm.h"
#include "textflag.h"

// CRC-32C by carry-less multiplication folding; the mathematics and the
// constants are explained in consts.go.
//
// Register use:
//	AX      CRC state (32 bits)
//	SI      next input byte
//	CX      bytes left
//	Z0-Z3   the four 512-bit accumulators (16 lanes of 128 bits)
//	Z4-Z7   products
//	Z8      folding constants, one [kLo, kHi] pair per 128-bit lane
//
// VPCLMULQDQ $0x00 multiplies the low qwords of each lane (lo * kLo),
// $0x11 the high qwords (hi * kHi). VPTERNLOGD $0x96 is a three-way XOR.

// FOLD(k, acc, tmp) replaces acc by lo(acc)*kLo ^ hi(acc)*kHi in each lane,
// leaving the other product in tmp; the caller XORs tmp and the next data in.
#define FOLD(k, acc, tmp) \
	VPCLMULQDQ $0x00, k, acc, tmp \
	VPCLMULQDQ $0x11, k, acc, acc

// func updateAVX512(crc uint32, p []byte) uint32
// Requires len(p) >= 256.
TEXT ·updateAVX512(SB), NOSPLIT, $0-36
	MOVL crc+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX

	// State s = ^crc, XORed into the first 4 bytes; from here on the
	// state is 0 (see consts.go).
	NOTL AX
	VMOVD AX, X4 // VEX: zeroes bits 32..511 of Z4
	VMOVDQU64 0(SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VPXORQ Z4, Z0, Z0
	ADDQ $256, SI
	SUBQ $256, CX

	// Main loop: each lane folds 2048 bits forward onto the lane at the
	// same position in the next 256-byte block.
	VBROADCASTI32X4 ·foldConsts+const_offK2048(SB), Z8
	CMPQ CX, $256
	JB   combine

loop256:
	FOLD(Z8, Z0, Z4)
	FOLD(Z8, Z1, Z5)
	FOLD(Z8, Z2, Z6)
	FOLD(Z8, Z3, Z7)
	VPTERNLOGD $0x96, 0(SI), Z4, Z0
	VPTERNLOGD $0x96, 64(SI), Z5, Z1
	VPTERNLOGD $0x96, 128(SI), Z6, Z2
	VPTERNLOGD $0x96, 192(SI), Z7, Z3
	ADDQ $256, SI
	SUBQ $256, CX
	CMPQ CX, $256
	JAE  loop256

combine:
	// Z0 covers the 64 bytes just before Z1, Z1 just before Z2, and so
	// on: fold each 512 bits forward onto the next, ending in Z3.
	VBROADCASTI32X4 ·foldConsts+const_offK512(SB), Z8
	FOLD(Z8, Z0, Z4)
	VPTERNLOGD $0x96, Z4, Z0, Z1
	FOLD(Z8, Z1, Z5)
	VPTERNLOGD $0x96, Z5, Z1, Z2
	FOLD(Z8, Z2, Z6)
	VPTERNLOGD $0x96, Z6, Z2, Z3
	CMPQ CX, $64
	JB   lanes

loop64:
	FOLD(Z8, Z3, Z4)
	VPTERNLOGD $0x96, 0(SI), Z4, Z3
	ADDQ $64, SI
	SUBQ $64, CX
	CMPQ CX, $64
	JAE  loop64

lanes:
	// Lanes L0..L3 of Z3 are consecutive 16-byte lanes. Fold L0 by 384,
	// L1 by 256, L2 by 128 bits onto L3 (the constant for lane 3 is 0).
	VMOVDQU64  ·foldConsts+const_offLanes(SB), Z8
	VPCLMULQDQ $0x00, Z8, Z3, Z4
	VPCLMULQDQ $0x11, Z8, Z3, Z5
	VPXORQ     Z5, Z4, Z4     // T0, T1, T2, 0
	VEXTRACTI64X4 $1, Z4, Y5  // T2, 0
	VPXOR      Y5, Y4, Y4     // T0^T2, T1
	VEXTRACTI128 $1, Y4, X5   // T1
	VPXOR      X5, X4, X4     // T0^T1^T2
	VEXTRACTI32X4 $3, Z3, X5  // L3
	VPXOR      X5, X4, X0     // one lane, congruent to all input so far

	VMOVDQU ·foldConsts+const_offK128(SB), X8
	CMPQ CX, $16
	JB   finish

loop16:
	VPCLMULQDQ $0x00, X8, X0, X4
	VPCLMULQDQ $0x11, X8, X0, X0
	VPXOR X4, X0, X0
	VPXOR 0(SI), X0, X0
	ADDQ  $16, SI
	SUBQ  $16, CX
	CMPQ  CX, $16
	JAE   loop16

finish:
	// CRC (from state 0) of the last lane and the < 16 tail bytes.
	XORL    AX, AX
	VMOVQ   X0, DX
	CRC32Q  DX, AX
	VPEXTRQ $1, X0, DX
	CRC32Q  DX, AX
	VZEROUPPER
	CMPQ    CX, $8
	JB      tail
	CRC32Q  0(SI), AX
	ADDQ    $8, SI
	SUBQ    $8, CX

tail:
	TESTQ CX, CX
	JZ    done

tailloop:
	CRC32B 0(SI), AX
	INCQ   SI
	DECQ   CX
	JNZ    tailloop

done:
	NOTL AX
	MOVL AX, ret+32(FP)
	RET
