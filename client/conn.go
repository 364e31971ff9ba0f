// Package client speaks sheepdog's native protocol to a sheep (ours or the
// original): a Conn multiplexes many requests over one TCP connection and
// matches responses by id, a Pool keeps a few Conns per peer, and typed
// helpers build the requests dog, tests and the gateway send.
package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/internal/sockopt"
	"github.com/gosheep/gosheep/proto"
)

// Sentinel errors. Both map to proto.ResNetworkError, which the gateway
// treats as "retry elsewhere or later".
var (
	// ErrConnClosed fails every call on a connection that broke or was closed.
	ErrConnClosed = proto.NewError(proto.ResNetworkError, "client: connection closed")
	// ErrProtocol is a response the protocol forbids. Framing violations
	// (unknown id, payload longer than the request allowed) also break the
	// connection; a malformed payload (bad JSON, list) does not.
	ErrProtocol = proto.NewError(proto.ResNetworkError, "client: protocol violation")
)

// Option configures Dial.
type Option func(*options)

type options struct {
	dialer       net.Dialer
	maxAbandoned int
	log          *slog.Logger
}

// WithDialer sets the dialer (timeouts, keepalive, local address).
func WithDialer(d *net.Dialer) Option { return func(o *options) { o.dialer = *d } }

// WithMaxAbandoned bounds the requests whose caller gave up (context done)
// while their response is still owed; beyond it the peer is deemed stuck
// and the connection is closed. Default 1024.
func WithMaxAbandoned(n int) Option { return func(o *options) { o.maxAbandoned = n } }

// WithLogger sets the logger for connection failures (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

func buildOptions(opts []Option) options {
	o := options{
		dialer:       net.Dialer{KeepAlive: 30 * time.Second},
		maxAbandoned: 1024,
	}
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Conn is one connection to a sheep. Any number of goroutines may call Do
// concurrently; requests are pipelined and answered in any order.
type Conn struct {
	nc           net.Conn
	addr         string
	log          *slog.Logger
	maxAbandoned int

	wq chan *call // to the writer

	wmu  sync.Mutex // held while writing to nc
	ibuf []byte     // under wmu: sendInline's encoding buffer

	mu        sync.Mutex
	pending   map[uint32]*call // sent or queued, response not yet claimed
	nextID    uint32
	abandoned int   // pending calls whose caller left
	err       error // why the connection broke; set once

	done       chan struct{} // closed when broken
	readerDone chan struct{}
	writerDone chan struct{}
}

// Write states of a call: the writer and a leaving caller race for it.
const (
	wQueued int32 = iota
	wWriting
	wWritten
	wWithdrawn
)

type call struct {
	req   proto.Request
	wdata []byte
	wtail []byte // sent after wdata (DoTail)
	rhead []byte // filled first from the response payload (DoHead)
	rbuf  []byte
	rpipe *sendfile.Pipe // stages the response payload instead (DoPipe)
	limit uint32         // largest response payload accepted

	wstate atomic.Int32
	wdone  chan struct{} // closed once the writer no longer touches wdata

	done      chan struct{} // closed when rsp/data/err are set
	rsp       proto.Response
	data      []byte
	err       error
	abandoned bool // guarded by Conn.mu
}

// Dial connects to the sheep at addr ("host:port").
func Dial(ctx context.Context, addr string, opts ...Option) (*Conn, error) {
	o := buildOptions(opts)
	nc, err := o.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w: %w", addr, ErrConnClosed, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // latency over packet count: requests are small
	}
	return newConn(nc, addr, o), nil
}

// NewConn runs the protocol over an established connection (tests, UNIX
// sockets). The Conn owns nc.
func NewConn(nc net.Conn, opts ...Option) *Conn {
	return newConn(nc, nc.RemoteAddr().String(), buildOptions(opts))
}

func newConn(nc net.Conn, addr string, o options) *Conn {
	c := &Conn{
		nc:           nc,
		addr:         addr,
		log:          o.log,
		maxAbandoned: o.maxAbandoned,
		wq:           make(chan *call, 256),
		pending:      make(map[uint32]*call),
		done:         make(chan struct{}),
		readerDone:   make(chan struct{}),
		writerDone:   make(chan struct{}),
	}
	go c.readLoop()
	go c.writeLoop()
	return c
}

// Addr is the peer address the Conn was dialled with.
func (c *Conn) Addr() string { return c.addr }

// Done is closed when the connection has broken or been closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the connection works, else why it broke (wrapping ErrConnClosed).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close fails the calls in flight with ErrConnClosed, closes the socket
// and waits for the connection's goroutines to exit.
func (c *Conn) Close() error {
	c.fail(errors.New("closed by the client"))
	<-c.readerDone
	<-c.writerDone
	return nil
}

// Do sends req and waits for its response.
//
// The Conn sets req.ID, and req.ProtoVer when zero (proto.ProtoVer for
// public opcodes, proto.SheepProtoVer for internal ones). With wdata, or
// with proto.FlagWrite set, the request carries wdata as payload and
// DataLength = len(wdata); otherwise DataLength is the size of the
// response wanted (len(rbuf) when left zero). The response payload is read
// into rbuf when it fits, else into a new buffer; it may not exceed
// req.ReplyLimit(), or the connection is closed with ErrProtocol.
//
// A response with a non-success result is returned together with an error
// wrapping its proto.Result. When ctx ends first Do returns ctx.Err() and
// the late response is discarded; a request already being transferred in
// either direction cannot be cut short, so the connection is closed then.
// Do does not use wdata or rbuf after it returns.
func (c *Conn) Do(ctx context.Context, req proto.Request, wdata []byte, rbuf []byte) (proto.Response, []byte, error) {
	return c.DoTail(ctx, req, wdata, nil, rbuf)
}

// DoTail is Do with a payload of wdata followed by tail, sent without
// joining them.
func (c *Conn) DoTail(ctx context.Context, req proto.Request, wdata, tail []byte, rbuf []byte) (proto.Response, []byte, error) {
	return c.do(ctx, req, wdata, tail, nil, rbuf, nil)
}

// DoHead is Do for a read whose response payload starts with a part of
// its own: its first len(head) bytes go to head, the rest to rbuf (the
// returned data). A payload shorter than head fills only its start:
// compare the response's DataLength.
func (c *Conn) DoHead(ctx context.Context, req proto.Request, head, rbuf []byte) (proto.Response, []byte, error) {
	if req.DataLength == 0 && req.Flags&proto.FlagWrite == 0 {
		req.DataLength = uint32(min(uint64(len(head))+uint64(len(rbuf)), math.MaxUint32))
	}
	return c.do(ctx, req, nil, nil, head, rbuf, nil)
}

// DoPipe is Do for a read whose response payload is staged in p
// (sendfile.Pipe.Fill: spliced from the socket into a kernel pipe) rather
// than read into memory, so that it can be relayed to another connection
// without passing through this process. req.DataLength is the size
// wanted. On success p holds the payload, p.Len() bytes. A failure while
// staging breaks the connection, as a failed read does.
func (c *Conn) DoPipe(ctx context.Context, req proto.Request, p *sendfile.Pipe) (proto.Response, error) {
	rsp, _, err := c.do(ctx, req, nil, nil, nil, nil, p)
	return rsp, err
}

func (c *Conn) do(ctx context.Context, req proto.Request, wdata, tail, rhead, rbuf []byte, rpipe *sendfile.Pipe) (proto.Response, []byte, error) {
	if err := ctx.Err(); err != nil {
		return proto.Response{}, nil, err
	}
	if req.ProtoVer == 0 {
		req.ProtoVer = proto.ProtoVer
		if req.Opcode.Internal() {
			req.ProtoVer = proto.SheepProtoVer
		}
	}
	if n := uint64(len(wdata)) + uint64(len(tail)); n > 0 || req.Flags&proto.FlagWrite != 0 {
		if n > math.MaxUint32 {
			return proto.Response{}, nil, fmt.Errorf("client: %s payload of %d bytes: %w", req.Opcode, n, proto.ResInvalidParms)
		}
		req.Flags |= proto.FlagWrite
		req.DataLength = uint32(n)
	} else if req.DataLength == 0 {
		req.DataLength = uint32(min(uint64(len(rbuf)), math.MaxUint32))
	}
	cl := &call{req: req, wdata: wdata, wtail: tail, rhead: rhead, rbuf: rbuf, rpipe: rpipe, limit: req.ReplyLimit(),
		wdone: make(chan struct{}), done: make(chan struct{})}

	if err := c.register(cl); err != nil {
		return proto.Response{}, nil, fmt.Errorf("client: %s to %s: %w", req.Opcode, c.addr, err)
	}
	if !c.sendInline(ctx, cl) {
		select {
		case c.wq <- cl:
		case <-ctx.Done():
			c.unregister(cl)
			return proto.Response{}, nil, ctx.Err()
		case <-c.done:
			c.unregister(cl)
			return proto.Response{}, nil, fmt.Errorf("client: %s to %s: %w", req.Opcode, c.addr, c.Err())
		}
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		if !c.abandon(cl) {
			return proto.Response{}, nil, ctx.Err()
		}
		// The response arrived meanwhile: deliver it.
	}
	c.settleWrite(ctx, cl)
	return cl.rsp, cl.data, cl.err
}

// sendInline writes cl from the caller's goroutine when it is the only
// request in flight on the connection: on a loaded machine waking the
// writer goroutine costs more than the write. With others in flight the
// writer goroutine sends cl, batching it with theirs (fewer syscalls,
// which measured better at queue depth 32 than writing each inline). It
// needs ctx's deadline to bound the write (a peer that stops reading);
// without one the writer sends cl too. A write cut off by the deadline
// breaks the connection, as a caller leaving mid-transfer does, and gets
// the same grace first.
func (c *Conn) sendInline(ctx context.Context, cl *call) bool {
	dl, ok := ctx.Deadline()
	if !ok || len(c.wq) > 0 {
		return false
	}
	c.mu.Lock()
	alone := len(c.pending) == 1
	c.mu.Unlock()
	if !alone || !c.wmu.TryLock() {
		return false
	}
	dl = later(dl, time.Now().Add(cancelGrace))
	defer c.wmu.Unlock()
	if !cl.wstate.CompareAndSwap(wQueued, wWriting) {
		return false
	}
	c.nc.SetWriteDeadline(dl)
	buf, err := c.encode(c.ibuf[:0], cl)
	if err == nil && len(buf) > 0 {
		_, err = c.nc.Write(buf)
	}
	c.ibuf = buf[:0]
	c.nc.SetWriteDeadline(time.Time{})
	cl.wstate.Store(wWritten)
	close(cl.wdone)
	if err != nil {
		c.fail(err)
	}
	return true
}

func (c *Conn) register(cl *call) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	for {
		c.nextID++
		if _, busy := c.pending[c.nextID]; !busy {
			break
		}
	}
	cl.req.ID = c.nextID
	c.pending[cl.req.ID] = cl
	return nil
}

func (c *Conn) unregister(cl *call) {
	c.mu.Lock()
	if c.pending[cl.req.ID] == cl {
		delete(c.pending, cl.req.ID)
	}
	c.mu.Unlock()
}

// abandon detaches a call whose caller is leaving. It reports false when the
// caller may return at once, true when the call completed after all (its
// result is then valid). Either way Do has no further business with rbuf.
func (c *Conn) abandon(cl *call) bool {
	c.mu.Lock()
	if c.pending[cl.req.ID] == cl {
		if cl.wstate.CompareAndSwap(wQueued, wWithdrawn) {
			// Never sent: forget it; the writer will skip it.
			delete(c.pending, cl.req.ID)
			c.mu.Unlock()
			return false
		}
		// Sent or being sent: the reader will discard the response.
		cl.abandoned = true
		c.abandoned++
		stuck := c.abandoned > c.maxAbandoned
		c.mu.Unlock()
		if stuck {
			c.fail(fmt.Errorf("%d requests without response", c.maxAbandoned))
		}
		// We may not return while the writer still uses wdata.
		c.waitOrBreak(cl.wdone, "request cancelled while being sent")
		return false
	}
	c.mu.Unlock()
	// The reader owns the call (its payload is arriving into rbuf) or the
	// connection failed: the result is moments away.
	c.waitOrBreak(cl.done, "request cancelled while its response was being received")
	return cl.err == nil || !errors.Is(cl.err, ErrConnClosed)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// cancelGrace bounds how long a caller whose context ended waits for a
// transfer already under way (its payload being sent or received) before
// the connection is broken to free it. Normally the transfer ends in
// microseconds; only a peer that stalls mid-transfer costs the grace.
const cancelGrace = time.Second

// waitOrBreak waits for ch, breaking the connection after cancelGrace.
func (c *Conn) waitOrBreak(ch <-chan struct{}, why string) {
	select {
	case <-ch:
		return
	default:
	}
	t := time.NewTimer(cancelGrace)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		c.fail(errors.New(why))
		<-ch
	}
}

// settleWrite returns once the writer is done with cl.wdata.
func (c *Conn) settleWrite(ctx context.Context, cl *call) {
	if cl.wstate.CompareAndSwap(wQueued, wWithdrawn) {
		return // never taken by the writer (the connection failed first)
	}
	select {
	case <-cl.wdone:
	case <-ctx.Done():
		// Only a peer that answers before reading the whole request gets
		// here; don't let it hold us.
		c.waitOrBreak(cl.wdone, "request cancelled while being sent")
	}
}

// fail breaks the connection: every pending call fails with ErrConnClosed.
func (c *Conn) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = fmt.Errorf("%w: %w", ErrConnClosed, cause)
	pending := c.pending
	c.pending = nil
	close(c.done)
	c.mu.Unlock()
	c.log.Debug("client: connection failed", "addr", c.addr, "err", cause)
	c.nc.Close()
	for _, cl := range pending {
		if !cl.abandoned {
			cl.err = fmt.Errorf("client: %s to %s: %w", cl.req.Opcode, c.addr, c.err)
			close(cl.done)
		}
	}
}

func (c *Conn) readLoop() {
	defer close(c.readerDone)
	var claimed *call // taken out of pending, not yet finished
	defer func() {
		if r := recover(); r != nil { // recover must be called here, directly
			c.log.Error("client: connection reader panic", "addr", c.addr, "panic", r, "stack", string(debug.Stack()))
			c.fail(fmt.Errorf("reader panic: %v", r))
		}
		if claimed != nil {
			c.finish(claimed, proto.Response{}, nil, c.Err())
		}
	}()
	br := bufio.NewReaderSize(c.nc, 64<<10)
	lowat := sockopt.NewLowat(c.nc) // raised while a large payload is read
	var hdr [proto.HeaderSize]byte
	// Behind a large payload the header is read alone (sockopt.HeaderFrom),
	// so that the next payload is not copied out of br, or into a relay's
	// pipe instead of spliced.
	last := 0
	for {
		claimed = nil
		if _, err := io.ReadFull(sockopt.HeaderFrom(br, c.nc, last), hdr[:]); err != nil {
			c.fail(err)
			return
		}
		var rsp proto.Response
		rsp.Unmarshal(hdr[:]) // cannot fail: HeaderSize bytes
		last = int(rsp.DataLength)
		c.mu.Lock()
		cl, ok := c.pending[rsp.ID]
		if ok {
			delete(c.pending, rsp.ID)
			if cl.abandoned {
				c.abandoned--
			}
		}
		c.mu.Unlock()
		claimed = cl
		if !ok {
			c.fail(fmt.Errorf("%w: response %s to unknown request id %d", ErrProtocol, rsp.Opcode, rsp.ID))
			return
		}
		if rsp.DataLength > cl.limit {
			err := fmt.Errorf("%w: %s response carries %d bytes, the request allowed %d",
				ErrProtocol, cl.req.Opcode, rsp.DataLength, cl.limit)
			c.fail(err)
			claimed = nil
			c.finish(cl, rsp, nil, err)
			return
		}
		n := int(rsp.DataLength)
		if cl.abandoned {
			if _, err := br.Discard(n); err != nil {
				c.fail(err)
				return
			}
			continue
		}
		if h := min(n, len(cl.rhead)); h > 0 {
			if _, err := io.ReadFull(br, cl.rhead[:h]); err != nil {
				c.fail(err)
				return
			}
			n -= h
		}
		var data []byte
		if n > 0 && cl.rpipe != nil {
			if err := cl.rpipe.Fill(c.nc, br, n); err != nil {
				c.fail(err)
				return // the deferred finish fails the call
			}
		} else if n > 0 {
			if cap(cl.rbuf) >= n {
				data = cl.rbuf[:n]
			} else {
				data = make([]byte, n)
			}
			if _, err := lowat.ReadFull(br, data); err != nil {
				c.fail(err)
				return // the deferred finish fails the call
			}
		}
		var err error
		if rsp.Result != proto.ResSuccess {
			err = fmt.Errorf("client: %s to %s: %w", cl.req.Opcode, c.addr, rsp.Result)
		}
		claimed = nil
		c.finish(cl, rsp, data, err)
	}
}

func (c *Conn) finish(cl *call, rsp proto.Response, data []byte, err error) {
	if cl.abandoned {
		return
	}
	cl.rsp, cl.data, cl.err = rsp, data, err
	if err != nil && errors.Is(err, ErrConnClosed) {
		cl.err = fmt.Errorf("client: %s to %s: %w", cl.req.Opcode, c.addr, err)
	}
	close(cl.done)
}

// Writes are batched: everything queued when the writer wakes goes out in
// as few syscalls as possible; large payloads are not copied (writev).
const (
	smallPayload = 16 << 10
	flushAt      = 64 << 10
)

func (c *Conn) writeLoop() {
	defer close(c.writerDone)
	var cur *call // taken by the writer, wdone not yet closed
	defer func() {
		// Last line of defence: a bug costs the connection, not the process,
		// and no caller is left waiting for wdone.
		if r := recover(); r != nil {
			c.log.Error("client: connection writer panic", "addr", c.addr, "panic", r, "stack", string(debug.Stack()))
			c.fail(fmt.Errorf("writer panic: %v", r))
		}
		if cur != nil {
			close(cur.wdone)
		}
	}()
	buf := make([]byte, 0, flushAt+smallPayload+proto.HeaderSize)
	for {
		var cl *call
		select {
		case cl = <-c.wq:
		case <-c.done:
			return
		}
		var err error
		c.wmu.Lock()
	gather: // everything queued now goes out together
		for {
			if cl.wstate.CompareAndSwap(wQueued, wWriting) {
				cur = cl
				if err == nil {
					buf, err = c.encode(buf, cl)
				}
				// encode copied wdata or wrote it out: release it now, so a
				// caller leaving early need not wait for the flush.
				cl.wstate.Store(wWritten)
				cur = nil
				close(cl.wdone)
			}
			select {
			case cl = <-c.wq:
			default:
				break gather
			}
		}
		if err == nil && len(buf) > 0 {
			_, err = c.nc.Write(buf)
		}
		c.wmu.Unlock()
		buf = buf[:0]
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// encode appends cl's header (and small payload) to buf, writing out buf
// and a large payload directly when needed.
func (c *Conn) encode(buf []byte, cl *call) ([]byte, error) {
	var h [proto.HeaderSize]byte
	cl.req.MarshalTo(h[:])
	buf = append(buf, h[:]...)
	if len(cl.wdata)+len(cl.wtail) <= smallPayload {
		buf = append(buf, cl.wdata...)
		buf = append(buf, cl.wtail...)
		if len(buf) >= flushAt {
			_, err := c.nc.Write(buf)
			return buf[:0], err
		}
		return buf, nil
	}
	bufs := net.Buffers{buf, cl.wdata, cl.wtail}
	_, err := bufs.WriteTo(c.nc)
	return buf[:0], err
}
