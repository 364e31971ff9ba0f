// Package nbd is gosheep's NBD server: fixed-newstyle negotiation with
// structured replies and the base:allocation metadata context, one export
// per VDI, written from the NBD protocol document
// (github.com/NetworkBlockDevice/nbd, doc/proto.md).
//
// Choices the protocol leaves open:
//   - Only fixed newstyle: a client that does not set NBD_FLAG_C_FIXED_NEWSTYLE
//     is disconnected; oldstyle is never offered.
//   - The default export "" is the only export when exactly one exists;
//     otherwise it is unknown.
//   - No TLS: NBD_OPT_STARTTLS is answered with NBD_REP_ERR_POLICY.
//   - Size constraints: minimum block 1, preferred 4096, maximum payload
//     Config.MaxPayload. READ/WRITE larger than that fail with EOVERFLOW
//     (the write payload is drained when it is at most 32 MiB, the size the
//     protocol says is never a denial of service; larger ones hang up).
//   - Out-of-range WRITE/WRITE_ZEROES fail with ENOSPC, other commands with
//     EINVAL, as the protocol document recommends.
//   - CAN_MULTI_CONN is advertised: volume.Device.Flush makes every
//     completed write to the volume durable, whichever connection made it.
package nbd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/volume"
)

// ExportInfo describes one export.
type ExportInfo struct {
	Name        string // the canonical export name (the VDI name)
	Description string // shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION
	ReadOnly    bool   // writes fail with EPERM; NBD_FLAG_READ_ONLY is set
}

// Exports is the catalog the server serves from.
type Exports interface {
	// List returns every export, for NBD_OPT_LIST and the default export.
	List(ctx context.Context) ([]ExportInfo, error)
	// Open returns a device for the named export. Errors matching
	// volume.ErrNoVolume mean the export does not exist. The server
	// calls Close on the device when it is done with it.
	Open(ctx context.Context, name string) (volume.Device, ExportInfo, error)
}

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Exports  Exports
	Logger   *slog.Logger     // default: discard
	Recorder metrics.Recorder // default: metrics.Nop; frontend "nbd"
	// MaxPayload is the largest READ/WRITE payload, advertised as the
	// maximum block size (default and upper bound 32 MiB, at least 4096).
	MaxPayload uint32
	// MaxInflight bounds the requests of one connection executed at once
	// (default 64).
	MaxInflight int
	// MaxInflightBytes bounds the payload bytes one connection holds in
	// memory for requests in flight (default 64 MiB, at least MaxPayload).
	MaxInflightBytes int64
	// HandshakeTimeout bounds the wait for each option during negotiation
	// (default 30 s). The transmission phase has no idle timeout.
	HandshakeTimeout time.Duration
	// LendTimeout bounds sending a read's data lent by the store (default
	// 10 s): the lend pins its object against writers, so a client that
	// stops reading loses its connection instead.
	LendTimeout time.Duration
}

const (
	defaultMaxPayload = 32 << 20
	defaultInflight   = 64
	defaultInflightB  = 64 << 20
	defaultHandshake  = 30 * time.Second
	defaultLend       = 10 * time.Second
	// drainLimit is the largest oversized WRITE payload read and thrown
	// away so the connection survives; the protocol says payloads up to
	// 32 MiB must not be treated as a denial of service.
	drainLimit = 32 << 20
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server is an NBD server. Create it with New.
type Server struct {
	cfg  Config
	log  *slog.Logger
	rec  metrics.Recorder
	bufs bufPool
	zero []byte // read-only zeros for WRITE_ZEROES with NO_HOLE

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	dropSeq   uint64 // bumped by Drop; see openExport
	wg        sync.WaitGroup

	panics atomic.Uint64
}

// New returns a server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Recorder == nil {
		cfg.Recorder = metrics.Nop{}
	}
	if cfg.MaxPayload == 0 || cfg.MaxPayload > defaultMaxPayload {
		cfg.MaxPayload = defaultMaxPayload
	}
	cfg.MaxPayload = max(cfg.MaxPayload, 4096)
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = defaultInflight
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = defaultInflightB
	}
	cfg.MaxInflightBytes = max(cfg.MaxInflightBytes, int64(cfg.MaxPayload))
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshake
	}
	if cfg.LendTimeout <= 0 {
		cfg.LendTimeout = defaultLend
	}
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		rec:       cfg.Recorder,
		bufs:      newBufPool(int(cfg.MaxPayload)),
		zero:      make([]byte, min(int(cfg.MaxPayload), 1<<20)),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
}

// Serve accepts connections on ln until ctx is done or Close is called,
// then closes ln, drops the connections it accepted, waits for them and
// returns nil (ErrServerClosed if the server was already closed). Other
// Accept errors are returned as is, leaving accepted connections running.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var mine sync.WaitGroup
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil {
				cancel()
				mine.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept", "err", err)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			return err
		}
		backoff = 0
		mine.Add(1)
		go func() {
			defer mine.Done()
			s.serveConn(ctx, nc)
		}()
	}
}

// Close stops every Serve, drops all connections and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Drop hard-disconnects every connection using export name (for a VDI that
// was deleted) and returns how many there were. Requests in flight on them
// are cancelled. Connections that open the export while Drop runs re-open
// it, and so fail if it is gone.
func (s *Server) Drop(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropSeq++
	n := 0
	for c := range s.conns {
		if c.export == name {
			c.abort()
			n++
		}
	}
	return n
}

// Panics reports how many connections ended in a recovered panic.
func (s *Server) Panics() uint64 { return s.panics.Load() }

// track registers c; it fails once the server is closed.
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

// bufPool recycles payload buffers in power-of-two size classes so large
// reads and writes don't churn the garbage collector.
type bufPool struct {
	classes []sync.Pool // class i holds buffers of minBuf << i bytes
}

const minBuf = 4096

func newBufPool(maxSize int) bufPool {
	n := 1
	for minBuf<<(n-1) < maxSize {
		n++
	}
	return bufPool{classes: make([]sync.Pool, n)}
}

func (p *bufPool) class(n int) int {
	c := 0
	for minBuf<<c < n {
		c++
	}
	return c
}

// get returns a buffer of length n; its contents are arbitrary.
func (p *bufPool) get(n int) *[]byte {
	c := p.class(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, minBuf<<c)
	return &b
}

func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	c := p.class(cap(*b))
	if c < len(p.classes) && cap(*b) == minBuf<<c {
		p.classes[c].Put(b)
	}
}
