// Package crc32c computes CRC-32C (Castagnoli) checksums.
//
// The results are identical to hash/crc32 with the Castagnoli table:
// Update(crc, p) == crc32.Update(crc, crc32.MakeTable(crc32.Castagnoli), p).
// On amd64 CPUs with AVX-512 and VPCLMULQDQ, buffers of at least
// minFast bytes are checksummed by carry-less multiplication folding on
// 512-bit registers (crc32c_amd64.s); everything else goes to hash/crc32.
package crc32c

import "hash/crc32"

// castagnoli is the hash/crc32 table used by the fallback path. It is set
// once at package initialisation and only read afterwards.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of p.
func Checksum(p []byte) uint32 { return Update(0, p) }

// Update returns the CRC-32C of p appended to the data whose CRC-32C is
// crc (the same as hash/crc32.Update with the Castagnoli table).
func Update(crc uint32, p []byte) uint32 { return update(crc, p) }
