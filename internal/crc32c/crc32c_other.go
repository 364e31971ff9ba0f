//go:build !amd64

package crc32c

import "hash/crc32"

// hasFast reports whether the CPU can run the folding path; never on this
// architecture.
const hasFast = false

func update(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }

// setFastPath is a test hook; there is no fast path here.
func setFastPath(bool) {}

// fastPathEnabled reports whether Update uses the folding path.
func fastPathEnabled() bool { return false }
