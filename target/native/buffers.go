package native

import (
	"context"
	"math/bits"
	"sync"
)

// Buffers come in power-of-two classes from minClass to maxClass bytes;
// larger ones are allocated and left to the GC.
const (
	minClassShift = 9  // 512 B
	maxClassShift = 24 // 16 MiB
	numClasses    = maxClassShift - minClassShift + 1
)

// bufPool recycles payload buffers by size class. Pools hold *[]byte so
// Put does not allocate.
type bufPool struct {
	classes [numClasses]sync.Pool
}

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length n and the handle to give back to put
// (nil when n is too large to pool).
func (p *bufPool) get(n int) ([]byte, *[]byte) {
	c := classOf(n)
	if c >= numClasses {
		return make([]byte, n), nil
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		return (*v)[:n], v
	}
	b := make([]byte, 1<<(c+minClassShift))
	return b[:n], &b
}

func (p *bufPool) put(h *[]byte) {
	if h == nil {
		return
	}
	c := classOf(cap(*h))
	if c < numClasses && cap(*h) == 1<<(c+minClassShift) {
		p.classes[c].Put(h)
	}
}

// taskKey finds the in-flight request of a handler's context.
type taskKey struct{}

// Alloc returns an n-byte buffer for building a response payload (for
// example the destination of an object read). The server recycles it after
// the response to the request of ctx has been written, so the handler must
// not use it after that. Outside a server request it is a plain make.
// Safe for concurrent use by the handler's goroutines.
func Alloc(ctx context.Context, n int) []byte {
	t, ok := ctx.Value(taskKey{}).(*task)
	if !ok || n < 0 {
		return make([]byte, max(n, 0))
	}
	b, h := t.srv.bufs.get(n)
	if h != nil {
		t.mu.Lock()
		t.owned = append(t.owned, h)
		t.mu.Unlock()
	}
	return b
}

// AfterReply registers fn to run once the response to the request of ctx
// has been written (or dropped because the connection broke): the place to
// release memory a handler returned as payload. It reports false, without
// registering, when ctx is not a server request context.
func AfterReply(ctx context.Context, fn func()) bool {
	t, ok := ctx.Value(taskKey{}).(*task)
	if !ok {
		return false
	}
	t.mu.Lock()
	t.after = append(t.after, fn)
	t.mu.Unlock()
	return true
}
