package native

import (
	"context"
	"io"
)

// tail is response payload that follows the handler's bytes, read from a
// file at write time.
type tail struct {
	src io.ReaderAt
	off int64
	n   int
}

// ReplyTail makes the response to the request of ctx end with n bytes of
// src from off, after the payload the handler returns; DataLength counts
// them. When src and the connection are operating system descriptors the
// bytes go with sendfile(2) and never pass through this process's memory.
// src must stay readable until the response is written or dropped:
// release it with AfterReply. The response is written within
// Config.TailTimeout, or the connection breaks. The tail is dropped if the
// handler answers with an error. It reports false outside a server
// request.
func ReplyTail(ctx context.Context, src io.ReaderAt, off int64, n int) bool {
	t, ok := ctx.Value(taskKey{}).(*task)
	if !ok || n < 0 {
		return false
	}
	t.mu.Lock()
	t.tl = tail{src: src, off: off, n: n}
	t.mu.Unlock()
	return true
}
