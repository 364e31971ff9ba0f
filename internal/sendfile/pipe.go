package sendfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gosheep/gosheep/internal/sockopt"
)

// PipeSize is the capacity a pooled pipe asks for (at most 1 MiB, the
// most an unprivileged process may set by default: fs.pipe-max-size),
// and the part of a relayed read each pipe stages.
const PipeSize = 512 << 10

// ErrPipeOrder: a Pipe was read out of order; it is a stream.
var ErrPipeOrder = errors.New("sendfile: pipe read out of order")

// Pipe relays a payload from one connection to another without copying
// it through this process: Fill splices it from the socket it arrives
// on into a kernel pipe (the pipe takes references to the socket's
// pages), and Send (through Try) splices it from the pipe into the
// socket it leaves by. The payload is read as a stream from offset 0, in
// order. Bytes the pipe cannot hold (it is counted in pages, and a
// payload arriving in segments that split pages takes more of them than
// its length) are read into memory and follow the piped ones.
type Pipe struct {
	r, w   int    // the pipe's descriptors, non-blocking
	inPipe int    // staged bytes still in the pipe
	tail   []byte // staged bytes that did not fit in the pipe
	pos    int64  // stream offset of the next byte to hand out
	n      int    // bytes staged by the last Fill
	pool   *Pipes
}

// Pipes is a pool of Pipes, bounded so that a busy node cannot pin an
// unbounded share of the kernel's pipe memory (pipes are accounted per
// user: fs.pipe-user-pages-soft).
type Pipes struct {
	mu   sync.Mutex
	free []*Pipe
	open int
	max  int
}

// NewPipes is a pool of at most max pipes.
func NewPipes(max int) *Pipes { return &Pipes{max: max} }

// Get takes an empty pipe from the pool or opens one; nil when the pool
// is exhausted or the kernel will not give a pipe of PipeSize, and the
// caller then copies.
func (ps *Pipes) Get() *Pipe {
	if ps == nil {
		return nil
	}
	ps.mu.Lock()
	if n := len(ps.free); n > 0 {
		p := ps.free[n-1]
		ps.free = ps.free[:n-1]
		ps.mu.Unlock()
		return p
	}
	if ps.open >= ps.max {
		ps.mu.Unlock()
		return nil
	}
	ps.open++
	ps.mu.Unlock()
	p, err := openPipe()
	if err != nil {
		// Over the user's pipe budget (or out of memory): make do with
		// the pipes open now.
		ps.mu.Lock()
		ps.open--
		ps.max = ps.open
		ps.mu.Unlock()
		return nil
	}
	p.pool = ps
	return p
}

// Close closes the idle pipes; pipes in use close on Release.
func (ps *Pipes) Close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.free {
		p.close()
	}
	ps.open -= len(ps.free)
	ps.free = nil
	ps.max = 0
}

func openPipe() (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	p := &Pipe{r: fds[0], w: fds[1]}
	if sz, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, PipeSize); err != nil || sz < PipeSize {
		p.close()
		if err == nil {
			err = fmt.Errorf("pipe of %d bytes", sz)
		}
		return nil, fmt.Errorf("sendfile: size pipe: %w", err)
	}
	return p, nil
}

func (p *Pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// Len is the number of bytes the last Fill staged.
func (p *Pipe) Len() int { return p.n }

// Release returns the pipe to its pool, or closes it when bytes are left
// in it (a send that failed midway). The Pipe must not be used after it.
func (p *Pipe) Release() {
	ps := p.pool
	if p.inPipe != 0 || ps == nil {
		p.close()
		if ps != nil {
			ps.mu.Lock()
			ps.open--
			ps.mu.Unlock()
		}
		return
	}
	p.tail, p.pos, p.n = nil, 0, 0
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.open > ps.max { // the pool was closed meanwhile
		ps.open--
		p.close()
		return
	}
	ps.free = append(ps.free, p)
}

// Fill stages the next n bytes of the stream nc → br into p: first what
// br has buffered, then by splice(2) from nc's socket, and what the pipe
// cannot take into memory through br. br must read from nc. Any error
// leaves the stream's position unknown: the caller must drop the
// connection. On a connection that is not a socket everything is read
// into memory.
func (p *Pipe) Fill(nc net.Conn, br *bufio.Reader, n int) error {
	if p.inPipe != 0 {
		return fmt.Errorf("sendfile: fill of a pipe holding %d bytes", p.inPipe)
	}
	p.tail, p.pos, p.n = nil, 0, n
	left := n
	full := false
	if b := min(br.Buffered(), left); b > 0 {
		buf, _ := br.Peek(b)
		for len(buf) > 0 {
			k, err := unix.Write(p.w, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || k <= 0 { // full: the rest goes to the tail
				full = true
				break
			}
			p.inPipe += k
			buf = buf[k:]
		}
		k := b - len(buf)
		br.Discard(k)
		left -= k
	}
	if !full && left > 0 {
		k, err := p.spliceFrom(nc, left)
		left -= k
		if err != nil {
			return err
		}
	}
	if left > 0 {
		p.tail = make([]byte, left)
		if _, err := io.ReadFull(br, p.tail); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// spliceFrom moves up to n bytes from nc's socket into the pipe, until
// the pipe is full. It returns the bytes moved.
func (p *Pipe) spliceFrom(nc net.Conn, n int) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	moved, mark := 0, 1 // mark: the socket's receive low-water mark
	var serr error
	err = rc.Read(func(fd uintptr) bool {
		for moved < n {
			k, e := unix.Splice(int(fd), nil, p.w, nil, n-moved, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if k > 0 {
				moved += int(k)
				p.inPipe += int(k)
				continue
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				// Either the socket has nothing yet (wait for it) or the
				// pipe is full (stop: the rest goes to memory).
				if q, qerr := unix.IoctlGetInt(int(fd), unix.SIOCINQ); qerr == nil && q > 0 {
					return true
				}
				// Wake once when the rest is here, not for every loopback
				// segment (as sockopt.Lowat does for reads): the kernel
				// caps the mark below the receive buffer. A mark left
				// above what remains would never be reached.
				want := 1
				if rem := n - moved; rem >= sockopt.MinLowat {
					want = rem
				}
				if want != mark {
					if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, want); err != nil {
						serr = fmt.Errorf("set receive low-water mark: %w", err)
						return true
					}
					mark = want
				}
				return false
			case e == unix.EINVAL && moved == 0 && p.inPipe == 0:
				return true // splice not supported here: read into memory
			case e != nil:
				serr = e
				return true
			default: // k == 0: the peer closed the connection
				serr = io.ErrUnexpectedEOF
				return true
			}
		}
		return true
	})
	if mark != 1 {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) })
	}
	if err == nil && serr != nil {
		err = fmt.Errorf("sendfile: splice from socket: %w", serr)
	}
	return moved, err
}

// ReadAt implements io.ReaderAt for a stream: off must be the offset of
// the next unread byte. It copies; Try splices.
func (p *Pipe) ReadAt(b []byte, off int64) (int, error) {
	if off != p.pos {
		return 0, fmt.Errorf("%w: at %d, asked for %d", ErrPipeOrder, p.pos, off)
	}
	done := 0
	for done < len(b) && p.inPipe > 0 {
		k, err := unix.Read(p.r, b[done:min(len(b), done+p.inPipe)])
		if err == unix.EINTR {
			continue
		}
		if err != nil || k <= 0 {
			return done, fmt.Errorf("sendfile: read pipe: %w", errors.Join(err, ErrShort))
		}
		done += k
		p.inPipe -= k
		p.pos += int64(k)
	}
	if done < len(b) {
		k := copy(b[done:], p.unsentTail())
		done += k
		p.pos += int64(k)
	}
	if done < len(b) {
		return done, io.EOF
	}
	return done, nil
}

// unsentTail is the part of the tail not yet handed out; the pipe must
// be drained (the tail follows the piped bytes).
func (p *Pipe) unsentTail() []byte {
	return p.tail[int(p.pos)-(p.n-len(p.tail)):]
}

// spliceTo sends n bytes of the staged stream into dst's socket: the
// piped ones by splice, then any of the tail by write (they are in
// memory already).
func (p *Pipe) spliceTo(drc syscall.RawConn, off int64, n int) (int64, error) {
	if off != p.pos {
		return 0, fmt.Errorf("%w: at %d, asked for %d", ErrPipeOrder, p.pos, off)
	}
	if n > p.n-int(p.pos) {
		return 0, fmt.Errorf("sendfile: %d bytes asked of a pipe with %d left: %w", n, p.n-int(p.pos), ErrShort)
	}
	var sent int64
	left := min(n, p.inPipe)
	var serr error
	err := drc.Write(func(fd uintptr) bool {
		for left > 0 {
			k, e := unix.Splice(p.r, nil, int(fd), nil, left, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if k > 0 {
				left -= int(k)
				p.inPipe -= int(k)
				p.pos += k
				sent += k
				continue
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false // the socket is full: the pipe still holds bytes
			case e != nil:
				serr = e
				return true
			default:
				serr = ErrShort
				return true
			}
		}
		for int(sent) < n {
			k, e := unix.Write(int(fd), p.unsentTail()[:n-int(sent)])
			if k > 0 {
				p.pos += int64(k)
				sent += int64(k)
				continue
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				serr = e
			default:
				serr = ErrShort
			}
			return true
		}
		return true
	})
	if err == nil && serr != nil {
		err = fmt.Errorf("sendfile: splice to socket: %w", serr)
	}
	return sent, err
}

// Chain is a staged stream made of Pipes in order: a payload staged in
// parts concurrently (each part on a connection of its own), relayed as
// one. Like a Pipe it is read in order from offset 0.
type Chain struct {
	ps  []*Pipe
	i   int   // the pipe holding the next byte
	pos int64 // stream offset of the next byte
}

// NewChain chains ps, each already filled; Release releases them all.
func NewChain(ps ...*Pipe) *Chain { return &Chain{ps: ps} }

// Len is the bytes staged in all the chain's pipes.
func (c *Chain) Len() int {
	n := 0
	for _, p := range c.ps {
		n += p.n
	}
	return n
}

// Release releases every pipe (see Pipe.Release).
func (c *Chain) Release() {
	for _, p := range c.ps {
		p.Release()
	}
	c.ps = nil
}

// next skips the pipes already sent whole.
func (c *Chain) next() *Pipe {
	for c.i < len(c.ps) && int(c.ps[c.i].pos) == c.ps[c.i].n {
		c.i++
	}
	if c.i == len(c.ps) {
		return nil
	}
	return c.ps[c.i]
}

// ReadAt implements io.ReaderAt for the stream (off must be the next
// byte's offset), copying, as Pipe.ReadAt.
func (c *Chain) ReadAt(b []byte, off int64) (int, error) {
	if off != c.pos {
		return 0, fmt.Errorf("%w: at %d, asked for %d", ErrPipeOrder, c.pos, off)
	}
	done := 0
	for done < len(b) {
		p := c.next()
		if p == nil {
			return done, io.EOF
		}
		k, err := p.ReadAt(b[done:min(len(b), done+p.n-int(p.pos))], p.pos)
		done += k
		c.pos += int64(k)
		if err != nil && err != io.EOF {
			return done, err
		}
	}
	return done, nil
}

func (c *Chain) spliceTo(drc syscall.RawConn, off int64, n int) (int64, error) {
	if off != c.pos {
		return 0, fmt.Errorf("%w: at %d, asked for %d", ErrPipeOrder, c.pos, off)
	}
	var sent int64
	for int(sent) < n {
		p := c.next()
		if p == nil {
			return sent, fmt.Errorf("sendfile: %d bytes past the end of a chain: %w", n-int(sent), ErrShort)
		}
		k, err := p.spliceTo(drc, p.pos, min(n-int(sent), p.n-int(p.pos)))
		sent += k
		c.pos += k
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}
