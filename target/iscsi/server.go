package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/target/internal/serve"
	"github.com/gosheep/gosheep/target/iscsi/scsi"
	"github.com/gosheep/gosheep/volume"
)

// IQNPrefix is the prefix of derived target names.
const IQNPrefix = "iqn.2026-11.io.gosheep:"

// Errors returned by the management API.
var (
	ErrTargetExists  = errors.New("iscsi: target already exists")
	ErrNoTarget      = errors.New("iscsi: no such target")
	ErrServerClosed  = errors.New("iscsi: server closed")
	ErrBadTargetSpec = errors.New("iscsi: invalid target spec")
	ErrBadCHAP       = errors.New("iscsi: invalid CHAP settings")
)

// Config configures a Server. Zero values take the defaults noted.
type Config struct {
	// AdvertiseAddrs are the portals ("host:port") reported by
	// SendTargets. Default: each listener's address; for a listener on an
	// unspecified address, the address the discovery connection reached.
	AdvertiseAddrs []string
	// PortalGroupTag is the target portal group tag, and the relative
	// target port identifier (default 1), unless PortNumber is set.
	PortalGroupTag uint16
	// PortNumber, when set, is looked up at each login and discovery in
	// place of PortalGroupTag: the node's number in the cluster, so that
	// every node exporting a VDI is a target port of its own (a portal
	// group tag, a relative target port identifier and a target port name
	// of its own). ok false (no number yet) refuses logins to a target as
	// unavailable for now.
	PortNumber func() (n uint16, ok bool)
	// QueueDepth is the CmdSN window per session (default 128).
	QueueDepth int
	// MaxRecvDataSegmentLength is the largest data segment we accept
	// (default 256 KiB, at most 16 MiB - 1).
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength and FirstBurstLength are our offers (defaults 1 MiB
	// and 256 KiB); the initiator may lower them.
	MaxBurstLength   uint32
	FirstBurstLength uint32
	// MaxOutstandingR2T is our offer (default 16).
	MaxOutstandingR2T uint32
	// MaxTransfer caps one command's data in bytes (default 32 MiB).
	MaxTransfer uint32
	// PhysicalBlockSize is the physical block size reported to
	// initiators (default 4096; 512 reports no alignment preference).
	PhysicalBlockSize uint32
	// MaxBufferBytes bounds the data buffered for all commands of the
	// server at once (default 512 MiB).
	MaxBufferBytes int64
	// MaxConnections bounds open connections; more are closed at once
	// (default 4096).
	MaxConnections int
	// LoginTimeout bounds the login phase (default 15 s).
	LoginTimeout time.Duration
	// WriteTimeout bounds one write to an initiator (default 60 s).
	WriteTimeout time.Duration
	// LendTimeout bounds sending one Data-In segment of data lent by the
	// store (default 10 s, at most WriteTimeout): the lend pins its
	// object against writers, so an initiator that stops reading loses
	// its connection sooner.
	LendTimeout time.Duration
	Recorder    metrics.Recorder
	Logger      *slog.Logger
	// PortID names this target port (the node) in I_T nexus IDs, which
	// must be unique across every node exporting a VDI when Reservations
	// is set.
	PortID string
	// Reservations orders SCSI reservation changes with the other nodes
	// exporting the same VDIs; nil keeps them per target.
	Reservations scsi.Reservations
	// Resolve, when set, is called before an initiator is told that a
	// target does not exist (a login or SendTargets=<iqn> naming one this
	// server does not export, with that IQN) and before SendTargets=All
	// (with ""). It may add the targets that exist elsewhere and not here
	// yet (AddTarget): a VDI created through another node a moment ago.
	// The lookup is made again after it returns; ctx bounds it.
	Resolve func(ctx context.Context, iqn string)
}

// resolveTimeout bounds one Resolve call.
const resolveTimeout = 5 * time.Second

func (c *Config) fill() {
	if c.PortalGroupTag == 0 {
		c.PortalGroupTag = 1
	}
	if c.QueueDepth <= 0 {
		c.QueueDepth = 128
	}
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 256 << 10
	}
	c.MaxRecvDataSegmentLength = min(max(c.MaxRecvDataSegmentLength, 512), 1<<24-1)
	if c.MaxBurstLength == 0 {
		c.MaxBurstLength = 1 << 20
	}
	c.MaxBurstLength = min(max(c.MaxBurstLength, 512), 1<<24-1)
	if c.FirstBurstLength == 0 {
		c.FirstBurstLength = 256 << 10
	}
	c.FirstBurstLength = min(max(c.FirstBurstLength, 512), c.MaxBurstLength)
	if c.MaxOutstandingR2T == 0 {
		c.MaxOutstandingR2T = 16
	}
	if c.MaxTransfer == 0 {
		c.MaxTransfer = scsi.DefaultMaxTransfer
	}
	if c.MaxBufferBytes <= 0 {
		c.MaxBufferBytes = 512 << 20
	}
	c.MaxBufferBytes = max(c.MaxBufferBytes, 2*int64(c.MaxTransfer))
	if c.MaxConnections <= 0 {
		c.MaxConnections = 4096
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 15 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 60 * time.Second
	}
	if c.LendTimeout <= 0 {
		c.LendTimeout = 10 * time.Second
	}
	c.LendTimeout = min(c.LendTimeout, c.WriteTimeout)
	if c.Recorder == nil {
		c.Recorder = metrics.Nop{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// TargetSpec describes a target to export. The caller keeps ownership of
// Device: RemoveTarget and Close do not close it.
type TargetSpec struct {
	Name     string // VDI name; the management key
	IQN      string // derived from Name when empty
	VID      uint32 // VDI id: source of the NAA identifier and serial
	Device   volume.Device
	ReadOnly bool
	// CHAP, when set, is required from the first login on (SetCHAP
	// after AddTarget would leave a moment without it).
	CHAP *CHAP
}

// CHAP holds a target's CHAP secrets (RFC 7143 §12.1.3, MD5). User and
// Secret authenticate the initiator; MutualUser and MutualSecret, when
// set, are what the target answers with when the initiator asks to
// authenticate the target.
type CHAP struct {
	User, Secret             string
	MutualUser, MutualSecret string
}

type target struct {
	name string
	iqn  string
	lu   *scsi.LU
	dev  volume.Device

	mu       sync.Mutex
	chap     *CHAP
	sessions map[*session]struct{}
	removed  bool
}

// Server is an iSCSI target server.
type Server struct {
	cfg    Config
	log    *slog.Logger
	rec    metrics.Recorder
	budget *budget
	bufs   bufPool
	work   *serve.Workers
	watch  *serve.Watch // passes reading on from slow inline commands

	mu        sync.Mutex
	closed    bool
	targets   map[string]*target // by name
	byIQN     map[string]*target
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	tsih      map[uint16]*session
	nextTSIH  uint16
	connWG    sync.WaitGroup

	panics atomic.Int64
}

// New returns a Server; call Serve to accept connections.
func New(cfg Config) *Server {
	cfg.fill()
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		rec:       cfg.Recorder,
		budget:    newBudget(cfg.MaxBufferBytes),
		work:      serve.NewWorkers(),
		watch:     serve.NewWatch(serve.Tick),
		targets:   map[string]*target{},
		byIQN:     map[string]*target{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		tsih:      map[uint16]*session{},
	}
}

// IQN returns the target name derived from a VDI name: lower-case, and
// characters an IQN may not hold (RFC 3722) replaced by '-'.
func IQN(name string) string {
	var b strings.Builder
	b.WriteString(IQNPrefix)
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == ':':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}

// Panics counts connections ended by a recovered panic.
func (s *Server) Panics() int64 { return s.panics.Load() }

// Serve accepts connections on ln until ctx is done, Close is called or
// ln fails. It closes ln when it returns; connections already accepted
// run until Close or RemoveTarget. It may be called for several
// listeners (each one's address is advertised unless AdvertiseAddrs).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		delay = 0
		c := newConn(s, nc, ln.Addr())
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.shutdown()
			return nil
		}
		if len(s.conns) >= s.cfg.MaxConnections {
			s.mu.Unlock()
			s.log.Warn("iscsi: too many connections", "remote", nc.RemoteAddr().String())
			c.shutdown()
			continue
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.connWG.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops every listener and connection and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown()
	}
	s.connWG.Wait()
	s.work.Close()
	s.watch.Close()
	return nil
}

// AddTarget exports a device as a target with LUN 0.
func (s *Server) AddTarget(spec TargetSpec) error {
	if spec.Name == "" || spec.Device == nil {
		return ErrBadTargetSpec
	}
	iqn := spec.IQN
	if iqn == "" {
		iqn = IQN(spec.Name)
	}
	if len(iqn) > 223 {
		return fmt.Errorf("%w: name longer than 223 bytes", ErrBadTargetSpec)
	}
	chap, err := checkCHAP(spec.CHAP)
	if err != nil {
		return err
	}
	t := &target{
		name:     spec.Name,
		iqn:      iqn,
		dev:      spec.Device,
		sessions: map[*session]struct{}{},
		chap:     chap,
	}
	t.lu = scsi.New(scsi.Config{
		Device: spec.Device, ReadOnly: spec.ReadOnly, VID: spec.VID,
		Name: spec.Name, TargetIQN: iqn, MaxTransfer: s.cfg.MaxTransfer,
		PhysicalBlockSize: s.cfg.PhysicalBlockSize, Reservations: s.cfg.Reservations,
		Abort: t.abortNexus,
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if _, ok := s.targets[spec.Name]; ok {
		return fmt.Errorf("%w: %s", ErrTargetExists, spec.Name)
	}
	if _, ok := s.byIQN[iqn]; ok {
		return fmt.Errorf("%w: %s", ErrTargetExists, iqn)
	}
	s.targets[spec.Name] = t
	s.byIQN[iqn] = t
	return nil
}

// abortNexus aborts the commands in flight of the target's sessions of
// one I_T nexus (PREEMPT AND ABORT) and waits for them, without status
// (TAS 0).
func (t *target) abortNexus(id string) {
	t.mu.Lock()
	var conns []*conn
	for se := range t.sessions {
		if se.nexus != nil && se.nexus.ID == id {
			se.mu.Lock()
			if se.conn != nil {
				conns = append(conns, se.conn)
			}
			se.mu.Unlock()
		}
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.abortAll()
	}
}

// WaitAborts returns once the PREEMPT AND ABORT aborts running on every
// target have ended, or with ctx's error.
func (s *Server) WaitAborts(ctx context.Context) error {
	s.mu.Lock()
	lus := make([]*scsi.LU, 0, len(s.targets))
	for _, t := range s.targets {
		lus = append(lus, t.lu)
	}
	s.mu.Unlock()
	for _, lu := range lus {
		if err := lu.WaitAborts(ctx); err != nil {
			return err
		}
	}
	return nil
}

// InstallResv gives the targets of VDI vid their reservation state, as
// the cluster applied it (see scsi.LU.Install).
func (s *Server) InstallResv(vid uint32, st *resv.State) {
	if st == nil {
		return
	}
	s.mu.Lock()
	var lus []*scsi.LU
	for _, t := range s.targets {
		if t.lu.VID() == vid {
			lus = append(lus, t.lu)
		}
	}
	s.mu.Unlock()
	for _, lu := range lus {
		lu.Install(st)
	}
}

// RemoveTarget stops exporting a target: new logins are refused, its
// sessions are closed (in-flight commands are aborted and waited for) and
// their TSIHs freed.
func (s *Server) RemoveTarget(name string) error {
	s.mu.Lock()
	t, ok := s.targets[name]
	if ok {
		delete(s.targets, name)
		delete(s.byIQN, t.iqn)
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoTarget, name)
	}
	t.mu.Lock()
	t.removed = true
	sess := make([]*session, 0, len(t.sessions))
	for se := range t.sessions {
		sess = append(sess, se)
	}
	t.mu.Unlock()
	for _, se := range sess {
		se.close()
	}
	for _, se := range sess {
		se.wait()
	}
	return nil
}

// Resized tells the target its device changed size: READ CAPACITY sees the
// new size and every I_T nexus of the LUN gets CAPACITY DATA HAS CHANGED.
func (s *Server) Resized(name string) error {
	t := s.target(name)
	if t == nil {
		return fmt.Errorf("%w: %s", ErrNoTarget, name)
	}
	t.lu.Resized()
	return nil
}

// SetCHAP sets (or with nil clears) the CHAP secrets of a target. New
// logins must authenticate; existing sessions are not affected.
func (s *Server) SetCHAP(name string, c *CHAP) error {
	c, err := checkCHAP(c)
	if err != nil {
		return err
	}
	t := s.target(name)
	if t == nil {
		return fmt.Errorf("%w: %s", ErrNoTarget, name)
	}
	t.mu.Lock()
	t.chap = c
	t.mu.Unlock()
	return nil
}

// checkCHAP validates c and returns a copy of it (nil: no CHAP).
func checkCHAP(c *CHAP) (*CHAP, error) {
	if c == nil {
		return nil, nil
	}
	if c.User == "" || c.Secret == "" || (c.MutualUser == "") != (c.MutualSecret == "") {
		return nil, ErrBadCHAP
	}
	if c.MutualSecret != "" && c.MutualSecret == c.Secret {
		// RFC 7143 §12.1.3: the two directions must use different secrets.
		return nil, fmt.Errorf("%w: mutual secret equals initiator secret", ErrBadCHAP)
	}
	cp := *c
	return &cp, nil
}

// Targets lists exported target names (VDI names).
func (s *Server) Targets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.targets))
	for n := range s.targets {
		out = append(out, n)
	}
	return out
}

// SessionCount is the number of logged-in sessions (all targets and
// discovery), for tests and metrics.
func (s *Server) SessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tsih)
}

func (s *Server) target(name string) *target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

func (s *Server) targetByIQN(iqn string) *target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byIQN[iqn]
}

// findTarget is targetByIQN that, on a miss, lets Resolve add the target
// first.
func (s *Server) findTarget(ctx context.Context, iqn string) *target {
	if t := s.targetByIQN(iqn); t != nil || s.cfg.Resolve == nil {
		return t
	}
	s.resolve(ctx, iqn)
	return s.targetByIQN(iqn)
}

func (s *Server) resolve(ctx context.Context, iqn string) {
	if s.cfg.Resolve == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	s.cfg.Resolve(ctx, iqn)
}

// allocTSIH assigns a free TSIH to se (0 and 0xffff are reserved). It
// fails only when 65534 sessions are open.
func (s *Server) allocTSIH(se *session) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 0xfffe {
		s.nextTSIH++
		if s.nextTSIH == 0 || s.nextTSIH == 0xffff {
			s.nextTSIH = 1
		}
		if _, used := s.tsih[s.nextTSIH]; !used {
			s.tsih[s.nextTSIH] = se
			return s.nextTSIH, true
		}
	}
	return 0, false
}

func (s *Server) freeTSIH(tsih uint16, se *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tsih[tsih] == se {
		delete(s.tsih, tsih)
	}
}

func (s *Server) sessionByTSIH(tsih uint16) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tsih[tsih]
}

// portTag returns this target port's portal group tag, which is also its
// relative target port identifier; ok is false while it is not known.
func (s *Server) portTag() (uint16, bool) {
	if s.cfg.PortNumber == nil {
		return s.cfg.PortalGroupTag, true
	}
	n, ok := s.cfg.PortNumber()
	return n, ok && n != 0
}

// portals returns the TargetAddress values for a connection: none while
// the portal group tag is not known (the initiator then uses the portal
// it reached).
func (s *Server) portals(c *conn) []string {
	t, ok := s.portTag()
	if !ok {
		return nil
	}
	tag := fmt.Sprintf(",%d", t)
	if len(s.cfg.AdvertiseAddrs) > 0 {
		out := make([]string, len(s.cfg.AdvertiseAddrs))
		for i, a := range s.cfg.AdvertiseAddrs {
			out[i] = a + tag
		}
		return out
	}
	s.mu.Lock()
	var addrs []net.Addr
	for ln := range s.listeners {
		addrs = append(addrs, ln.Addr())
	}
	s.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		ta, ok := a.(*net.TCPAddr)
		if ok && ta.IP.IsUnspecified() {
			// Reached through the connection's local address.
			if la, ok := c.nc.LocalAddr().(*net.TCPAddr); ok {
				ta = &net.TCPAddr{IP: la.IP, Port: ta.Port}
			}
		}
		str := a.String()
		if ok {
			str = ta.String()
		}
		if !seen[str] {
			seen[str] = true
			out = append(out, str+tag)
		}
	}
	return out
}

// budget is a byte semaphore bounding buffered command data.
type budget struct {
	mu      sync.Mutex
	avail   int64
	waiters int // acquirers blocked on wake
	wake    chan struct{}
}

func newBudget(n int64) *budget { return &budget{avail: n, wake: make(chan struct{})} }

func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.avail >= n {
			b.avail -= n
			b.mu.Unlock()
			return nil
		}
		w := b.wake
		b.waiters++
		b.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			b.mu.Lock()
			if b.wake == w {
				b.waiters--
			}
			b.mu.Unlock()
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	if b.waiters > 0 {
		// Wake every waiter; each re-checks. A new channel only then, not
		// on every command.
		close(b.wake)
		b.wake = make(chan struct{})
		b.waiters = 0
	}
	b.mu.Unlock()
}
