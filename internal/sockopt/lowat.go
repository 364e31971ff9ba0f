// Package sockopt sets the socket options the front ends and the peer
// client tune per transfer.
package sockopt

import (
	"bufio"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// MinLowat is the smallest payload worth raising the receive low-water
// mark for: below it the two setsockopt calls cost more than the wake-ups
// they save.
const MinLowat = 128 << 10

// Lowat is a connection whose receive low-water mark can be raised for one
// large payload. The runtime's poller then wakes the reader once most of
// the payload is queued, instead of once per loopback segment (64 KiB):
// a 1 MiB payload took a dozen wake-ups, each a partial read and a park.
// Linux still wakes the reader when the receive window is closing, so a
// payload larger than the socket's buffer cannot stall.
type Lowat struct {
	rc syscall.RawConn // nil: not a socket (net.Pipe in tests); a no-op
}

// NewLowat returns a Lowat for c.
func NewLowat(c net.Conn) Lowat {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Lowat{}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Lowat{}
	}
	return Lowat{rc: rc}
}

// ReadFull is io.ReadFull from r, a buffered reader of the connection.
// While at least MinLowat bytes are still to come the mark is the number
// still to come, so the reader sleeps until all of them are queued (the
// mark must never exceed that: the reader would sleep forever); the mark
// is back at one byte when ReadFull returns, so the next header wakes the
// reader as soon as it arrives. Linux wakes the reader early when the
// receive window closes, so a payload larger than the socket buffer cannot
// stall either. Setsockopt errors only lose the optimisation.
func (l Lowat) ReadFull(r *bufio.Reader, p []byte) (int, error) {
	if l.rc == nil || len(p)-r.Buffered() < MinLowat {
		return io.ReadFull(r, p)
	}
	n, raised, mark := 0, false, 0
	for n < len(p) {
		// A read that only drained r's buffer leaves the bytes to come,
		// and so the mark, as they were: no second setsockopt for it.
		if rem := len(p) - n - r.Buffered(); rem >= MinLowat {
			if rem != mark {
				if l.set(rem) {
					raised, mark = true, rem
				} else if raised {
					// The old, higher mark must not stay.
					l.set(1)
					raised, mark = false, 0
				}
			}
		} else if raised {
			l.set(1)
			raised, mark = false, 0
		}
		k, err := r.Read(p[n:])
		n += k
		if err != nil && n < len(p) {
			if raised {
				l.set(1)
			}
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	if raised {
		l.set(1)
	}
	return n, nil
}

func (l Lowat) set(n int) bool {
	var serr error
	err := l.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, n)
	})
	return err == nil && serr == nil
}

// HeaderFrom returns what to read a message's header from: the connection
// c itself when br, a buffered reader of c, is empty and the payload
// before the header (last bytes) was at least br's size, else br. Such a
// payload was read past br, straight into its buffer; a header read
// through br would fill br with what follows, behind a large payload
// mostly the next payload, to be copied out of br again (a quarter of an
// iSCSI 256 KiB data segment). Read alone, the header costs the same one
// syscall, and the payload is again read past br.
func HeaderFrom(br *bufio.Reader, c io.Reader, last int) io.Reader {
	if last >= br.Size() && br.Buffered() == 0 {
		return c
	}
	return br
}
