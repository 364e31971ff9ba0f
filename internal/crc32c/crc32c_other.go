//go:build !amd64

package crc32c

import "hash/crc32"

// hasFast reports whether the CPU can run the folding path; never on this
// architecture.
const hasFast = false

func update(crc uint32, p []byte) uint32 { return updateWith(false, crc, p) }

// updateWith is update with the folding path on or off; there is none here.
func updateWith(_ bool, crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }
