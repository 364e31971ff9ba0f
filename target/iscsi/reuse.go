package iscsi

import (
	"math/bits"
	"sync"
)

// bufPool recycles command data buffers (Data-Out collected for a write,
// Data-In read for a read). Fresh megabyte buffers per command were most
// of the target's allocations: the GC, page faults on new spans and the
// scavenger returning them cost more CPU than the copies themselves.
// Buffers come in power-of-two classes from minPooled to maxPooled bytes;
// larger ones are allocated and left to the GC.
type bufPool struct {
	classes [nClasses]sync.Pool
}

const (
	minPoolShift = 12 // 4 KiB
	maxPoolShift = 22 // 4 MiB
	nClasses     = maxPoolShift - minPoolShift + 1
)

// class returns the pool class for n bytes, or -1 when n is not pooled.
func class(n int) int {
	if n <= 0 || n > 1<<maxPoolShift {
		return -1
	}
	c := bits.Len(uint(n-1)) - minPoolShift
	return max(c, 0)
}

// capFor is the capacity get(n) returns.
func capFor(n int) int {
	c := class(n)
	if c < 0 {
		return n
	}
	return 1 << (c + minPoolShift)
}

// get returns a buffer of length n. Its contents are arbitrary: callers
// overwrite all of it before anyone reads it.
func (bp *bufPool) get(n int) []byte {
	c := class(n)
	if c < 0 {
		return make([]byte, n)
	}
	if v := bp.classes[c].Get(); v != nil {
		return (*(v.(*[]byte)))[:n]
	}
	return make([]byte, n, 1<<(c+minPoolShift))
}

// put returns a buffer obtained from get; nobody may use it afterwards.
func (bp *bufPool) put(b []byte) {
	c := class(cap(b))
	if c < 0 || cap(b) != 1<<(c+minPoolShift) {
		return
	}
	b = b[:cap(b)]
	bp.classes[c].Put(&b)
}
