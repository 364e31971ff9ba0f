package native

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/internal/sockopt"
	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/target/internal/serve"
)

// Defaults for Config fields left zero.
const (
	// DefaultMaxPayload fits two whole inodes plus slack: the largest
	// payloads sheepdog clients exchange.
	DefaultMaxPayload   = 2*proto.InodeSize + 1<<20
	DefaultMaxInflight  = 128
	DefaultWriteTimeout = time.Minute
	DefaultTailTimeout  = 10 * time.Second
	DefaultKeepAlive    = 30 * time.Second
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("native: server closed")

// Handler answers one request; see the package documentation for the
// contract.
type Handler interface {
	Handle(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte)

// Handle implements Handler.
func (f HandlerFunc) Handle(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	return f(ctx, req, data)
}

// Config configures a Server. Only Handler is required.
type Config struct {
	Handler Handler
	// MaxPayload bounds DataLength in both directions (default DefaultMaxPayload).
	MaxPayload uint32
	// MaxInflight bounds the requests of one connection that are being
	// handled or whose response is not yet written (default DefaultMaxInflight).
	MaxInflight int
	// WriteTimeout cuts off a peer that stops reading its responses
	// (default DefaultWriteTimeout; negative: never).
	WriteTimeout time.Duration
	// TailTimeout bounds writing a response with a ReplyTail, whose source
	// stays pinned (a store lock) until it is sent, so a peer that stops
	// reading cannot hold it for the whole WriteTimeout (default
	// DefaultTailTimeout, and never above WriteTimeout).
	TailTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time (default DefaultKeepAlive;
	// negative: leave the socket's setting alone).
	KeepAlive time.Duration
	Logger    *slog.Logger     // default: discard
	Recorder  metrics.Recorder // default: metrics.Nop
}

// Stats are the server's counters since NewServer.
type Stats struct {
	Requests  uint64 // requests answered by the Handler
	Rejected  uint64 // requests refused by the framework (version, size)
	Panics    uint64 // panics recovered (handlers and connection loops)
	Truncated uint64 // responses cut to the client's buffer (handler bugs)
}

// Server serves the sheepdog protocol. It is safe for concurrent use.
type Server struct {
	handler     Handler
	maxPayload  uint32
	maxInflight int
	wtimeout    time.Duration
	ttimeout    time.Duration
	keepAlive   time.Duration
	log         *slog.Logger
	rec         metrics.Recorder
	bufs        bufPool
	work        *serve.Workers
	watch       *serve.Watch // passes reading on from slow inline requests

	mu        sync.Mutex
	closed    bool
	listeners map[*net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // one per tracked connection

	active                          atomic.Int64
	nreq, nrejected, npanic, ntrunc atomic.Uint64
}

// NewServer returns a server for cfg. It panics if cfg.Handler is nil, a
// programming error.
func NewServer(cfg Config) *Server {
	if cfg.Handler == nil {
		panic("native: Config.Handler is nil")
	}
	s := &Server{
		handler:     cfg.Handler,
		maxPayload:  cfg.MaxPayload,
		maxInflight: cfg.MaxInflight,
		wtimeout:    cfg.WriteTimeout,
		ttimeout:    cfg.TailTimeout,
		keepAlive:   cfg.KeepAlive,
		log:         cfg.Logger,
		rec:         cfg.Recorder,
		listeners:   make(map[*net.Listener]struct{}),
		conns:       make(map[*conn]struct{}),
		work:        serve.NewWorkers(),
		watch:       serve.NewWatch(serve.Tick),
	}
	if s.maxPayload == 0 {
		s.maxPayload = DefaultMaxPayload
	}
	if s.maxInflight <= 0 {
		s.maxInflight = DefaultMaxInflight
	}
	if s.wtimeout == 0 {
		s.wtimeout = DefaultWriteTimeout
	}
	if s.ttimeout <= 0 {
		s.ttimeout = DefaultTailTimeout
	}
	if s.wtimeout > 0 {
		s.ttimeout = min(s.ttimeout, s.wtimeout)
	}
	if s.keepAlive == 0 {
		s.keepAlive = DefaultKeepAlive
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.rec == nil {
		s.rec = metrics.Nop{}
	}
	return s
}

// ActiveConns is the number of connections being served.
func (s *Server) ActiveConns() int { return int(s.active.Load()) }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.nreq.Load(), Rejected: s.nrejected.Load(), Panics: s.npanic.Load(), Truncated: s.ntrunc.Load()}
}

// Serve accepts connections on ln and serves each in its own goroutines
// until ctx is cancelled (then it returns ctx.Err()) or the server is
// closed (ErrServerClosed). It closes ln. Connections accepted here are
// closed when ctx is cancelled.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	key := &ln
	s.listeners[key] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, key)
		s.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) || !isTemporary(err) {
				return fmt.Errorf("native: accept: %w", err)
			}
			// EMFILE and friends: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("native: accept failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		go s.ServeConn(ctx, nc)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// ServeConn serves one connection until the peer closes it, a protocol
// error, ctx is cancelled or the server closes; it then closes nc. It
// returns once every handler of the connection has returned.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	c := s.newConn(ctx, nc)
	defer c.inline.Close()
	if !s.track(c) {
		nc.Close()
		c.cancel()
		return
	}
	defer s.untrack(c)
	s.active.Add(1)
	s.rec.Sessions("native", 1)
	defer func() {
		s.active.Add(-1)
		s.rec.Sessions("native", -1)
	}()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		if s.keepAlive > 0 {
			tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: s.keepAlive, Interval: s.keepAlive / 3, Count: 3})
		}
	}
	stop := context.AfterFunc(c.ctx, func() { nc.Close() })
	defer stop()

	c.readRole()
	<-c.readDone
	// Reading has stopped: let the handlers finish and write their
	// responses (the last writer flushes), then hang up.
	c.handlers.Wait()
	c.cancel()
	nc.Close()
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// stopAccepting marks the server closed, closes its listeners and returns
// the live connections.
func (s *Server) stopAccepting() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		(*l).Close()
	}
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	return cs
}

// Close stops accepting, closes every connection (cancelling its
// handlers' contexts) and waits until all handlers have returned.
func (s *Server) Close() error {
	for _, c := range s.stopAccepting() {
		c.abort()
	}
	s.wg.Wait()
	s.work.Close()
	s.watch.Close()
	return nil
}

// Shutdown stops accepting and stops reading new requests, lets the
// requests in flight complete and their responses be written, then closes
// the connections. If ctx ends first it falls back to Close and returns
// ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	for _, c := range s.stopAccepting() {
		c.stopReading()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.work.Close()
		s.watch.Close()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Frontend labels for the metrics Recorder.
func frontendOf(op proto.Opcode) string {
	switch op {
	case proto.OpCreateAndWritePeer, proto.OpReadPeer, proto.OpWritePeer, proto.OpRemovePeer, proto.OpSyncPeer,
		proto.OpWritePeerSums, proto.OpReadPeerSums, proto.OpHealPeer, proto.OpReplacePeer:
		return "peer"
	}
	return "native"
}

// task is one request in flight: from its header to its written response.
type task struct {
	srv  *Server
	req  proto.Request
	data []byte  // request payload (FlagWrite)
	dh   *[]byte // pool handle of data
	rsp  proto.Response
	out  []byte // response payload
	tl   tail   // response payload after out (ReplyTail)

	mu    sync.Mutex // guards owned, after and tl: handlers may fan out
	owned []*[]byte
	after []func()
}

// reqCtx is the handler's context: the connection's, plus the task for
// Alloc and AfterReply.
type reqCtx struct {
	context.Context
	t *task
}

func (c reqCtx) Value(key any) any {
	if key == (taskKey{}) {
		return c.t
	}
	return c.Context.Value(key)
}

// release returns the task's buffers and runs its AfterReply functions.
func (t *task) release() {
	t.srv.bufs.put(t.dh)
	t.data, t.dh, t.out = nil, nil, nil
	t.mu.Lock()
	t.tl = tail{}
	owned, after := t.owned, t.after
	t.owned, t.after = nil, nil
	t.mu.Unlock()
	for _, h := range owned {
		t.srv.bufs.put(h)
	}
	for _, fn := range after {
		fn()
	}
}

// Write batching: small payloads are copied into wbuf and flushed when no
// other response is ready; large ones go out with writev, uncopied.
const (
	smallPayload   = 16 << 10
	flushThreshold = 64 << 10
	readBufSize    = 32 << 10
)

type conn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc

	sem         chan struct{} // one token per request in flight
	handlers    sync.WaitGroup
	readDone    chan struct{} // closed when reading has ended
	readFn      func()        // c.readRole, made once: a method value allocates
	inline      *serve.Handoff[*task]
	lowat       sockopt.Lowat // raised while a large payload is read
	lastPayload int           // the reader's: the last request's payload length (sockopt.HeaderFrom)

	wmu     sync.Mutex // held while writing a response
	waiters atomic.Int32
	wbuf    []byte // under wmu
	werr    error  // under wmu
}

func (s *Server) newConn(ctx context.Context, nc net.Conn) *conn {
	c := &conn{
		s:        s,
		nc:       nc,
		br:       bufio.NewReaderSize(nc, readBufSize),
		sem:      make(chan struct{}, s.maxInflight),
		readDone: make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.readFn = c.readRole
	c.lowat = sockopt.NewLowat(nc)
	c.inline = serve.NewHandoff(s.watch, c.run, func() { c.s.work.Run(c.readFn) })
	return c
}

// abort breaks the connection now: handlers see ctx cancelled, I/O fails.
func (c *conn) abort() {
	c.cancel()
	c.nc.Close()
}

// stopReading makes the reader stop at the next header (graceful close).
func (c *conn) stopReading() { c.nc.SetReadDeadline(time.Now()) }

// readRole reads requests until one needs its handler and serves that
// request itself: it goes to its handler without waiting for a goroutine
// to wake up, which on a loaded machine costs more than the handler.
// Reading passes to another goroutine first, unless the request is the
// only one in flight with nothing more read (the client waits for it, so
// reading meanwhile would find nothing) and has been for a while
// (serve.Handoff.Inline); then only if it turns out slow. Exactly one
// goroutine holds the role; the one that finds the stream ended closes
// readDone.
func (c *conn) readRole() {
	for {
		t := c.readUntilTask()
		if t == nil {
			return
		}
		if !c.inline.Inline(len(c.sem) == 1 && c.br.Buffered() == 0) {
			c.s.work.Run(c.readFn)
			c.run(t)
			return
		}
		if !c.inline.Run(t) {
			return
		}
	}
}

// readUntilTask returns the next request to hand to the handler, or nil
// once reading has ended (readDone is closed then). The returned task is
// counted in handlers.
func (c *conn) readUntilTask() (next *task) {
	defer func() {
		if r := recover(); r != nil {
			c.s.npanic.Add(1)
			c.s.log.Error("native: connection reader panic", "remote", c.nc.RemoteAddr(), "panic", r, "stack", string(debug.Stack()))
			next = nil
		}
		if next == nil {
			close(c.readDone)
		}
	}()
	var hdr [proto.HeaderSize]byte
	for {
		select {
		case c.sem <- struct{}{}:
		case <-c.ctx.Done():
			return nil
		}
		if _, err := io.ReadFull(sockopt.HeaderFrom(c.br, c.nc, c.lastPayload), hdr[:]); err != nil {
			<-c.sem
			if err != io.EOF {
				c.s.log.Debug("native: read header", "remote", c.nc.RemoteAddr(), "err", err)
			}
			return nil
		}
		t := &task{srv: c.s}
		t.req.Unmarshal(hdr[:]) // cannot fail: HeaderSize bytes
		c.lastPayload = 0
		if t.req.Flags&proto.FlagWrite != 0 {
			c.lastPayload = int(t.req.DataLength)
		}
		run, ok := c.admit(t)
		if !ok {
			return nil
		}
		if run {
			c.handlers.Add(1)
			return t
		}
	}
}

// admit validates a request and reads its payload, or answers it directly.
// It reports whether t is for the handler (run) and whether the stream can
// still be framed (ok). The caller holds a sem token, which now belongs to t.
func (c *conn) admit(t *task) (run, ok bool) {
	req := &t.req
	payload := req.Flags&proto.FlagWrite != 0 && req.DataLength > 0
	if req.DataLength > c.s.maxPayload {
		c.s.log.Warn("native: request too large", "remote", c.nc.RemoteAddr(), "req", req.String(), "max", c.s.maxPayload)
		c.reject(t, proto.ResInvalidParms)
		return false, !payload // we will not read that payload, so we cannot find the next header
	}
	if err := req.CheckVersion(); err != nil {
		if payload {
			if _, err := io.CopyN(io.Discard, c.br, int64(req.DataLength)); err != nil {
				<-c.sem
				return false, false
			}
		}
		c.s.log.Debug("native: protocol version mismatch", "remote", c.nc.RemoteAddr(), "req", req.String(), "proto_ver", req.ProtoVer)
		c.reject(t, proto.ResVerMismatch)
		return false, true
	}
	if payload {
		t.data, t.dh = c.s.bufs.get(int(req.DataLength))
		if _, err := c.lowat.ReadFull(c.br, t.data); err != nil {
			c.s.log.Debug("native: read payload", "remote", c.nc.RemoteAddr(), "req", req.String(), "err", err)
			t.release()
			<-c.sem
			return false, false
		}
	}
	return true, true
}

func (c *conn) reject(t *task, res proto.Result) {
	c.s.nrejected.Add(1)
	t.rsp = t.req.Reply(res)
	c.send(t)
}

// run calls the handler and queues its response.
func (c *conn) run(t *task) {
	defer c.handlers.Done()
	id, op, limit := t.req.ID, t.req.Opcode, min(t.req.ReplyLimit(), c.s.maxPayload)
	start := time.Now()
	rsp, payload := c.call(t)
	rsp.ID = id
	if rsp.Opcode == 0 {
		rsp.Opcode = op
	}
	t.mu.Lock()
	tl := t.tl
	if rsp.Result != proto.ResSuccess {
		tl = tail{}
	}
	t.tl = tl
	t.mu.Unlock()
	if total := uint64(len(payload)) + uint64(tl.n); total > uint64(limit) {
		c.s.ntrunc.Add(1)
		c.s.log.Error("native: handler returned more payload than the client's buffer; truncated",
			"op", op, "id", id, "len", total, "limit", limit)
		if tl.n > 0 {
			// A file tail cannot be cut short cleanly: answer an error.
			rsp, payload = t.req.Reply(proto.ResSystemError), nil
			rsp.ID = id
			t.mu.Lock()
			t.tl, tl = tail{}, tail{}
			t.mu.Unlock()
		} else {
			payload = payload[:limit]
		}
	}
	rsp.DataLength = uint32(len(payload) + tl.n)
	t.rsp, t.out = rsp, payload
	c.s.nreq.Add(1)
	c.s.rec.Request(frontendOf(op), op.String(), len(t.data)+len(payload)+tl.n, time.Since(start), rsp.Result.Err())
	c.send(t)
}

func (c *conn) call(t *task) (rsp proto.Response, payload []byte) {
	defer func() {
		if r := recover(); r != nil {
			c.s.npanic.Add(1)
			c.s.log.Error("native: handler panic", "op", t.req.Opcode, "id", t.req.ID, "panic", r, "stack", string(debug.Stack()))
			rsp, payload = t.req.Reply(proto.ResSystemError), nil
		}
	}()
	req := t.req // the handler may scribble on its copy
	return c.s.handler.Handle(reqCtx{c.ctx, t}, &req, t.data)
}

// send writes t's response from the goroutine that has it (a handler, or
// the reader for a rejection), without handing it to a writer goroutine:
// one wake-up less per request. Responses queue on wmu; the last in line
// flushes the batch, so small responses still go out together.
func (c *conn) send(t *task) {
	c.waiters.Add(1)
	c.wmu.Lock()
	c.waiters.Add(-1)
	if c.werr == nil && c.ctx.Err() != nil {
		c.werr = c.ctx.Err() // aborted: the connection is being closed
	}
	if c.werr == nil {
		c.werr = c.write(t)
		if c.werr == nil && c.waiters.Load() == 0 {
			c.werr = c.flush()
		}
		if c.werr != nil {
			c.s.log.Debug("native: write", "remote", c.nc.RemoteAddr(), "err", c.werr)
			c.abort()
		}
	}
	c.wmu.Unlock()
	t.release()
	<-c.sem
}

func (c *conn) write(t *task) error {
	var h [proto.HeaderSize]byte
	t.rsp.MarshalTo(h[:])
	c.wbuf = append(c.wbuf, h[:]...)
	if len(t.out) <= smallPayload && t.tl.n == 0 {
		c.wbuf = append(c.wbuf, t.out...)
		if len(c.wbuf) >= flushThreshold {
			return c.flush()
		}
		return nil
	}
	var err error
	if tl := t.tl; tl.n > 0 {
		// The header already announces the tail's length, so any
		// failure breaks the connection.
		c.nc.SetWriteDeadline(time.Now().Add(c.s.ttimeout))
		err = sendfile.WithHeader(c.nc, tl.src, tl.off, tl.n, c.wbuf, t.out)
	} else {
		c.setDeadline()
		bufs := net.Buffers{c.wbuf, t.out}
		_, err = bufs.WriteTo(c.nc)
	}
	c.wbuf = c.wbuf[:0]
	return err
}

func (c *conn) flush() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	c.setDeadline()
	_, err := c.nc.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

func (c *conn) setDeadline() {
	if c.s.wtimeout > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(c.s.wtimeout))
	}
}
