package native

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
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

// errShortTail: the file ended before the bytes the response announced.
var errShortTail = errors.New("native: response tail source ended early")

// sendTail writes tl to the connection. The header already announced its
// length, so any failure must break the connection.
func (c *conn) sendTail(tl tail) error {
	n, err, handled := sendFile(c.nc, tl)
	if handled {
		return err
	}
	tl.off, tl.n = tl.off+n, tl.n-int(n)
	b, h := c.s.bufs.get(min(tl.n, 256<<10))
	defer c.s.bufs.put(h)
	for tl.n > 0 {
		chunk := b[:min(tl.n, len(b))]
		if _, err := tl.src.ReadAt(chunk, tl.off); err != nil {
			if err == io.EOF {
				err = errShortTail
			}
			return fmt.Errorf("read response tail: %w", err)
		}
		if _, err := c.nc.Write(chunk); err != nil {
			return err
		}
		tl.off, tl.n = tl.off+int64(len(chunk)), tl.n-len(chunk)
	}
	return nil
}

// sendFile sends tl with sendfile(2) when both ends allow it. handled is
// false, with n bytes already sent, when the caller must copy the rest.
func sendFile(nc net.Conn, tl tail) (n int64, err error, handled bool) {
	dst, ok := nc.(syscall.Conn)
	if !ok {
		return 0, nil, false
	}
	src, ok := tl.src.(syscall.Conn)
	if !ok {
		return 0, nil, false
	}
	drc, err := dst.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	off, left := tl.off, tl.n
	var serr error
	unsupported := false
	cerr := srcRC.Control(func(sfd uintptr) {
		err = drc.Write(func(dfd uintptr) bool {
			for left > 0 {
				w, e := unix.Sendfile(int(dfd), int(sfd), &off, min(left, 1<<30))
				if w > 0 {
					left -= w
				}
				switch {
				case e == unix.EINTR:
					continue
				case e == unix.EAGAIN:
					return false // wait until the socket can take more
				case (e == unix.EINVAL || e == unix.ENOSYS) && left == tl.n:
					unsupported = true
					return true
				case e != nil:
					serr = e
					return true
				case w == 0:
					serr = errShortTail
					return true
				}
			}
			return true
		})
	})
	sent := int64(tl.n - left)
	if unsupported {
		return sent, nil, false
	}
	if cerr != nil {
		return sent, cerr, true
	}
	if err == nil && serr != nil {
		err = fmt.Errorf("sendfile: %w", serr)
	}
	return sent, err, true
}
