// Package sendfile writes a range of a file to a connection with
// sendfile(2), so the bytes go from the page cache to the socket without
// passing through this process's memory, and copies where either end has
// no descriptor.
package sendfile

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// splicer is a staged source (Pipe, Chain) that sends itself.
type splicer interface {
	spliceTo(drc syscall.RawConn, off int64, n int) (int64, error)
}

// ErrShort: the file ended before the bytes the caller asked to send.
var ErrShort = errors.New("sendfile: source ended early")

// Send writes n bytes of src from off to nc: by sendfile when both are
// operating system descriptors, else by copying through buf (any size
// above zero; nil allocates). The caller sets nc's write deadline. Any
// error may leave part of the range sent.
func Send(nc net.Conn, src io.ReaderAt, off int64, n int, buf []byte) error {
	sent, err, handled := Try(nc, src, off, n)
	if handled {
		return err
	}
	off, n = off+sent, n-int(sent)
	if len(buf) == 0 {
		buf = make([]byte, min(n, 256<<10))
	}
	for n > 0 {
		chunk := buf[:min(n, len(buf))]
		if _, err := src.ReadAt(chunk, off); err != nil {
			if err == io.EOF {
				err = ErrShort
			}
			return fmt.Errorf("sendfile: read source: %w", err)
		}
		if _, err := nc.Write(chunk); err != nil {
			return err
		}
		off, n = off+int64(len(chunk)), n-len(chunk)
	}
	return nil
}

// Try sends with sendfile(2) when both ends allow it (splice(2) from a
// Pipe). handled is false,
// with sent bytes already gone, when the caller must copy the rest.
func Try(nc net.Conn, src io.ReaderAt, off int64, n int) (sent int64, err error, handled bool) {
	dst, ok := nc.(syscall.Conn)
	if !ok {
		return 0, nil, false
	}
	drc, err := dst.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	if sp, ok := src.(splicer); ok {
		sent, err := sp.spliceTo(drc, off, n)
		return sent, err, true
	}
	sc, ok := src.(syscall.Conn)
	if !ok {
		return 0, nil, false
	}
	srcRC, err := sc.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	left := n
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
				case (e == unix.EINVAL || e == unix.ENOSYS) && left == n:
					unsupported = true
					return true
				case e != nil:
					serr = e
					return true
				case w == 0:
					serr = ErrShort
					return true
				}
			}
			return true
		})
	})
	sent = int64(n - left)
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

// WithHeader writes head to nc (WriteMore), then n bytes of src from off
// (Send, copying through a buffer of its own only when a descriptor is
// missing): a response header and the file data it announces. The caller
// sets nc's write deadline. Any error may leave part of it sent.
func WithHeader(nc net.Conn, src io.ReaderAt, off int64, n int, head ...[]byte) error {
	if err := WriteMore(nc, head...); err != nil {
		return err
	}
	return Send(nc, src, off, n, nil)
}

// WriteMore writes bufs to nc, telling the kernel that more follows at
// once (MSG_MORE): a header written before file data then leaves in the
// same segments as the data, not alone (with TCP_NODELAY a header alone
// is a small segment and a wake-up of its own on the receiver). The next
// write without MSG_MORE (sendfile's last chunk) pushes it out. The
// caller sets nc's write deadline.
func WriteMore(nc net.Conn, bufs ...[]byte) error {
	sc, ok := nc.(syscall.Conn)
	var rc syscall.RawConn
	var err error
	if ok {
		rc, err = sc.SyscallConn()
	}
	if !ok || err != nil {
		nb := net.Buffers(bufs)
		_, err := nb.WriteTo(nc)
		return err
	}
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			for len(bufs) > 0 && len(bufs[0]) == 0 {
				bufs = bufs[1:]
			}
			if len(bufs) == 0 {
				return true
			}
			n, e := unix.SendmsgBuffers(int(fd), bufs, nil, nil, unix.MSG_MORE)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false // wait until the socket can take more
			case e != nil:
				werr = e
				return true
			}
			for n > 0 {
				if n >= len(bufs[0]) {
					n -= len(bufs[0])
					bufs = bufs[1:]
				} else {
					bufs[0] = bufs[0][n:]
					n = 0
				}
			}
		}
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("sendfile: write: %w", werr)
	}
	return nil
}
