package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/internal/sockopt"
	"github.com/gosheep/gosheep/target/internal/serve"
	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/target/iscsi/scsi"
)

// errProtocol ends a connection after a protocol violation.
var errProtocol = errors.New("iscsi: protocol error")

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDataDigest     = 0x02
	rejectSNACK          = 0x03
	rejectProtocol       = 0x04
	rejectNotSupported   = 0x05
	rejectImmediateCmd   = 0x06
	rejectTaskInProgress = 0x07
	rejectInvalidData    = 0x08
	rejectInvalidField   = 0x09
	rejectWaitingLogout  = 0x0b
)

// session is an iSCSI session: one connection (MaxConnections=1), the
// CmdSN window and the I_T nexus.
type session struct {
	srv       *Server
	tgt       *target // nil for discovery
	tsih      uint16
	isid      uint64
	initiator string
	nexus     *scsi.Nexus
	params    sessParams

	mu       sync.Mutex
	expCmdSN uint32
	inflight int
	window   int
	conn     *conn
	closed   bool
	done     chan struct{}
}

// sessParams are the negotiated session-wide values.
type sessParams struct {
	initialR2T       bool
	immediateData    bool
	maxBurst         uint32
	firstBurst       uint32
	maxOutstandingR2 uint32
	maxSendData      uint32 // initiator's MaxRecvDataSegmentLength
	headerDigest     bool
	dataDigest       bool
}

// cmdSNs returns ExpCmdSN and MaxCmdSN for a response.
func (se *session) cmdSNs() (uint32, uint32) {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.expCmdSN, se.expCmdSN + uint32(se.window-se.inflight) - 1
}

// close ends the session's connection (it tears the session down).
func (se *session) close() {
	se.mu.Lock()
	c := se.conn
	se.mu.Unlock()
	if c != nil {
		c.shutdown()
	}
}

func (se *session) wait() { <-se.done }

// conn is one TCP connection.
type conn struct {
	srv    *Server
	nc     net.Conn
	lnAddr net.Addr
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once

	// write side
	wmu     sync.Mutex
	bw      *pdu.Writer
	waiters atomic.Int32
	statSN  uint32
	werr    error

	sess *session
	cid  uint16
	lim  pdu.Limits // what ReadPDU accepts

	tmu      sync.Mutex
	tasks    map[uint32]*task // by ITT
	nextTTT  uint32
	taskWG   sync.WaitGroup
	pending  map[uint32]*pdu.PDU // commands held for a CmdSN gap
	textResp *textContinuation
	logout   bool

	// read side, owned by the goroutine holding the reading role
	ready    []*task       // commands to start once the PDU is handled
	readErr  error         // why reading ended; read after readDone
	readDone chan struct{} // closed when reading has ended
	readFn   func()        // c.readRole, made once: a method value allocates
	inline   *serve.Handoff[*task]
	lowat    sockopt.Lowat
	lastData int // the last PDU's data segment length (sockopt.HeaderFrom)
	// presized: bytes of immediate-data buffers sized beyond their data
	// for the rest of a write (readOne), not yet covered by a task's
	// budget. A command dropped before it becomes a task (a CmdSN gap
	// never filled, a rejection) keeps its share: later writes on this
	// connection are then only copied, as before presizing.
	presized atomic.Int64
}

// maxPresized bounds conn.presized.
const maxPresized = 8 << 20

func newConn(s *Server, nc net.Conn, lnAddr net.Addr) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c := &conn{
		srv: s, nc: nc, lnAddr: lnAddr, ctx: ctx, cancel: cancel,
		br:       bufio.NewReaderSize(nc, 64<<10),
		bw:       pdu.NewWriter(nc, 64<<10),
		tasks:    map[uint32]*task{},
		pending:  map[uint32]*pdu.PDU{},
		lim:      pdu.Limits{MaxData: 8192},
		readDone: make(chan struct{}),
	}
	c.readFn = c.readRole
	c.lowat = sockopt.NewLowat(nc)
	c.inline = serve.NewHandoff(s.watch, (*task).run, func() { c.srv.work.Run(c.readFn) })
	return c
}

// shutdown aborts the connection: the reader and every task stop.
func (c *conn) shutdown() {
	c.once.Do(func() {
		c.cancel()
		c.nc.Close()
	})
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer func() {
		if r := recover(); r != nil {
			c.srv.panics.Add(1)
			c.srv.log.Error("iscsi: panic in connection", "remote", c.nc.RemoteAddr().String(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
		c.shutdown()
		c.taskWG.Wait()
		c.inline.Close()
		c.endSession()
	}()
	if err := c.login(); err != nil {
		c.srv.log.Debug("iscsi: login failed", "remote", c.nc.RemoteAddr().String(), "err", err)
		return
	}
	c.nc.SetReadDeadline(time.Time{})
	c.readRole()
	<-c.readDone
	if err := c.readErr; err != nil && !errors.Is(err, io.EOF) && c.ctx.Err() == nil {
		c.srv.log.Debug("iscsi: connection ended", "remote", c.nc.RemoteAddr().String(), "err", err)
	}
}

// readRole reads PDUs until a SCSI command is ready to run and runs that
// command itself: it starts without waiting for a goroutine to wake up,
// which on a loaded machine costs more than a small read or write. Reading
// passes to another goroutine first, unless the command is alone and the
// connection has been at queue depth 1 for a while (serve.Handoff.Inline);
// then only if it turns out slow. Exactly one goroutine holds the role;
// the one that finds the connection ended sets readErr and closes
// readDone.
func (c *conn) readRole() {
	for {
		t := c.readUntilTask()
		if t == nil {
			return
		}
		if !c.inline.Inline(c.alone(t)) {
			c.srv.work.Run(c.readFn)
			t.run()
			return
		}
		if !c.inline.Run(t) {
			return
		}
	}
}

// alone reports whether t is the connection's only command in flight,
// with all its data in and nothing more read: the initiator is waiting for
// it (queue depth 1), so reading meanwhile would only find nothing.
func (c *conn) alone(t *task) bool {
	if c.br.Buffered() > 0 {
		return false
	}
	c.tmu.Lock()
	n := len(c.tasks)
	c.tmu.Unlock()
	if n != 1 {
		return false
	}
	if !t.write {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unsolDone && t.received >= t.edtl
}

// readUntilTask returns the next command to run, or nil once reading has
// ended. Commands that became ready together (a CmdSN gap filled) start on
// workers, all but the last.
func (c *conn) readUntilTask() (next *task) {
	defer func() {
		if r := recover(); r != nil {
			c.srv.panics.Add(1)
			c.srv.log.Error("iscsi: panic in connection", "remote", c.nc.RemoteAddr().String(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.readErr, next = fmt.Errorf("iscsi: reader panic: %v", r), nil
			c.shutdown()
		}
		if next == nil {
			// Commands accepted before reading ended still run: they
			// answer, or see the connection closed; serve waits for them.
			c.startReady()
			close(c.readDone)
		}
	}()
	for {
		if err := c.readOne(); err != nil {
			c.readErr = err
			return nil
		}
		c.tmu.Lock()
		lo := c.logout
		c.tmu.Unlock()
		if lo {
			return nil
		}
		if n := len(c.ready); n > 0 {
			next = c.ready[n-1]
			c.ready[n-1] = nil
			c.ready = c.ready[:n-1]
			c.startReady()
			return next
		}
	}
}

// startReady starts the ready commands on workers.
func (c *conn) startReady() {
	for _, t := range c.ready {
		c.srv.work.Run(t.run)
	}
	clear(c.ready)
	c.ready = c.ready[:0]
}

// endSession releases what the connection's session holds.
func (c *conn) endSession() {
	se := c.sess
	if se == nil {
		return
	}
	se.mu.Lock()
	if se.closed {
		se.mu.Unlock()
		return
	}
	se.closed = true
	se.conn = nil
	se.mu.Unlock()
	if se.tgt != nil {
		// Bounded: a nexus holding an SPC-2 reservation releases it
		// through the cluster.
		ctx, cancel := context.WithTimeout(context.Background(), resvTimeout)
		if err := se.tgt.lu.Detach(ctx, se.nexus); err != nil {
			c.srv.log.Warn("iscsi: releasing the reservation of an ended session failed", "target", se.tgt.name, "initiator", se.nexus.InitiatorPort(), "err", err)
		}
		cancel()
		se.tgt.mu.Lock()
		delete(se.tgt.sessions, se)
		se.tgt.mu.Unlock()
	}
	c.srv.freeTSIH(se.tsih, se)
	c.srv.rec.Sessions("iscsi", -1)
	close(se.done)
}

// write serialises a group of PDUs on the socket. fn writes with
// c.writePDU; the buffer is flushed unless another writer is waiting.
func (c *conn) write(fn func() error) error {
	c.waiters.Add(1)
	c.wmu.Lock()
	c.waiters.Add(-1)
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	err := fn()
	if err == nil && c.waiters.Load() == 0 {
		err = c.bw.Flush()
	}
	if err != nil {
		c.werr = err
		go c.shutdown()
	}
	return err
}

// writePDU writes one PDU (under c.wmu). withStatus assigns the next
// StatSN and fills ExpCmdSN/MaxCmdSN.
func (c *conn) writePDU(h *pdu.Header, data []byte, withStatus bool) error {
	c.stamp(h, withStatus)
	return c.bw.WritePDU(h, data, c.lim.HeaderDigest, c.lim.DataDigest)
}

// writePDUFile writes one PDU (under c.wmu) whose n bytes of data are
// src's from off, sent by sendfile where the connection allows it.
// There is no data digest: callers send such PDUs only without one.
func (c *conn) writePDUFile(h *pdu.Header, src io.ReaderAt, off int64, n uint32, withStatus bool) error {
	c.stamp(h, withStatus)
	return c.bw.WritePDUFrom(h, n, c.lim.HeaderDigest, func(head []byte) error {
		// The next c.write sets its own deadline again.
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.LendTimeout))
		return sendfile.WithHeader(c.nc, src, off, int(n), head)
	})
}

// stamp fills h's sequence numbers; withStatus assigns the next StatSN.
func (c *conn) stamp(h *pdu.Header, withStatus bool) {
	if withStatus {
		h.SetStatSN(c.statSN)
		c.statSN++
	} else if h.Opcode() != pdu.OpDataIn {
		h.SetStatSN(c.statSN)
	}
	if c.sess != nil {
		exp, maxSN := c.sess.cmdSNs()
		h.SetExpCmdSN(exp)
		h.SetMaxCmdSN(maxSN)
	}
}

func (c *conn) sendReject(reason byte, bad *pdu.Header) error {
	var h pdu.Header
	h.SetOpcode(pdu.OpReject)
	h.SetFlags(0x80)
	h[2] = reason
	h.SetITT(pdu.ReservedTag)
	return c.write(func() error { return c.writePDU(&h, bad[:], true) })
}

// readData reads a data segment (with padding and digest) into dst; a
// large one with the receive low-water mark raised, so the reader wakes
// once rather than per loopback segment.
func (c *conn) readData(dst []byte) error {
	if _, err := c.lowat.ReadFull(c.br, dst); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return pdu.ReadDataTrailer(c.br, c.lim, dst)
}

// readOne reads and handles one full-feature-phase PDU. Data segments are
// read once the header says where they go: Data-Out straight into its
// command's buffer, a command's immediate data into a pooled buffer the
// command then owns.
func (c *conn) readOne() error {
	p := &pdu.PDU{}
	if err := pdu.ReadHeader(sockopt.HeaderFrom(c.br, c.nc, c.lastData), c.lim, p); err != nil {
		return err
	}
	c.lastData = int(p.DataLen())
	if p.Opcode() == pdu.OpDataOut && c.sess.tgt != nil {
		return c.dataOut(p)
	}
	if n := p.DataLen(); n > 0 {
		if p.Opcode() == pdu.OpSCSICmd {
			// Room for the whole write (pooled sizes only), so that
			// collect gathers the rest into this buffer instead of
			// copying the immediate data (a quarter of a 1 MiB write).
			// The room is not in the server's buffer budget until the
			// command's task takes it, so a connection holds at most
			// maxPresized of it (task.pre gives it back).
			size := int(n)
			if p.Flags()&pdu.FlagWrite != 0 && p.EDTL() > n {
				want := int(min(p.EDTL(), 1<<maxPoolShift))
				if extra := int64(capFor(want) - capFor(size)); c.presized.Add(extra) <= maxPresized {
					size = want
				} else {
					c.presized.Add(-extra)
				}
			}
			p.Data = c.srv.bufs.get(size)[:n]
		} else {
			p.Data = make([]byte, n)
		}
		if err := c.readData(p.Data); err != nil {
			return err
		}
	}
	return c.handle(p)
}

// discard gives back what a PDU that will not run holds: a SCSI
// command's pooled immediate-data buffer and its room counted in
// presized (readOne). Without it a connection that saw enough dropped
// writes would copy immediate data for the rest of its life.
func (c *conn) discard(p *pdu.PDU) {
	if p.Opcode() != pdu.OpSCSICmd || p.Data == nil {
		return
	}
	c.presized.Add(-presizeOf(p.Data))
	c.srv.bufs.put(p.Data)
	p.Data = nil
}

// presizeOf is the room readOne gave an immediate-data buffer beyond its
// data's own pool class (0 for one not presized).
func presizeOf(b []byte) int64 { return int64(cap(b) - capFor(len(b))) }

// isSequenced reports whether a PDU carries a CmdSN that advances.
func isSequenced(p *pdu.PDU) bool {
	switch p.Opcode() {
	case pdu.OpSCSICmd, pdu.OpNOPOut, pdu.OpTaskReq, pdu.OpTextReq, pdu.OpLogoutReq:
		return !p.Immediate()
	}
	return false
}

func (c *conn) handle(p *pdu.PDU) error {
	se := c.sess
	op := p.Opcode()
	if se.tgt == nil { // discovery session: text, NOP and logout only
		switch op {
		case pdu.OpTextReq, pdu.OpLogoutReq, pdu.OpNOPOut:
		default:
			c.discard(p)
			return c.sendReject(rejectProtocol, &p.Header)
		}
	}
	switch op {
	case pdu.OpDataOut:
		// Reached only from a discovery session, rejected above.
		return c.sendReject(rejectProtocol, &p.Header)
	case pdu.OpSNACKReq:
		// ErrorRecoveryLevel 0: SNACK is not supported.
		return c.sendReject(rejectSNACK, &p.Header)
	case pdu.OpSCSICmd, pdu.OpNOPOut, pdu.OpTaskReq, pdu.OpTextReq, pdu.OpLogoutReq:
	default:
		return c.sendReject(rejectNotSupported, &p.Header)
	}
	if !isSequenced(p) {
		return c.dispatch(p)
	}
	se.mu.Lock()
	sn, exp := p.CmdSN(), se.expCmdSN
	maxSN := exp + uint32(se.window-se.inflight) - 1
	if int32(sn-exp) < 0 || int32(maxSN-sn) < 0 {
		// Outside the window: silently ignored (RFC 7143 §4.2.2.1).
		se.mu.Unlock()
		c.discard(p)
		return nil
	}
	if sn != exp {
		// A gap: hold the command until the missing ones arrive.
		se.mu.Unlock()
		c.tmu.Lock()
		_, dup := c.pending[sn]
		held := !dup && len(c.pending) < se.window
		if held {
			c.pending[sn] = p
		}
		c.tmu.Unlock()
		if !held {
			c.discard(p)
		}
		return nil
	}
	se.mu.Unlock()
	for {
		se.mu.Lock()
		se.expCmdSN++
		se.inflight++
		se.mu.Unlock()
		if err := c.dispatch(p); err != nil {
			return err
		}
		se.mu.Lock()
		next := se.expCmdSN
		se.mu.Unlock()
		c.tmu.Lock()
		q, ok := c.pending[next]
		delete(c.pending, next)
		c.tmu.Unlock()
		if !ok {
			return nil
		}
		p = q
	}
}

// done releases a sequenced command's window slot; call it before the
// response is written so that the response opens the window.
func (se *session) done1(p *pdu.Header) {
	if p.Immediate() {
		return
	}
	se.mu.Lock()
	se.inflight--
	se.mu.Unlock()
}

func (c *conn) dispatch(p *pdu.PDU) error {
	switch p.Opcode() {
	case pdu.OpSCSICmd:
		return c.scsiCommand(p)
	case pdu.OpNOPOut:
		return c.nopOut(p)
	case pdu.OpTaskReq:
		return c.taskMgmt(p)
	case pdu.OpTextReq:
		return c.text(p)
	case pdu.OpLogoutReq:
		return c.logoutReq(p)
	}
	return nil
}

func (c *conn) nopOut(p *pdu.PDU) error {
	c.sess.done1(&p.Header)
	if p.ITT() == pdu.ReservedTag {
		return nil // a ping answer or a CmdSN-only update
	}
	var h pdu.Header
	h.SetOpcode(pdu.OpNOPIn)
	h.SetFlags(0x80)
	h.SetLUN(p.LUN())
	h.SetITT(p.ITT())
	h.SetField20(pdu.ReservedTag)
	echo := p.Data
	if uint32(len(echo)) > c.sess.params.maxSendData {
		echo = echo[:c.sess.params.maxSendData]
	}
	return c.write(func() error { return c.writePDU(&h, echo, true) })
}

func (c *conn) logoutReq(p *pdu.PDU) error {
	reason := p.Flags() & 0x7f
	resp := byte(0)
	switch reason {
	case 0, 1: // close session / close connection
		if reason == 1 && p.CID() != c.cid {
			resp = 1 // CID not found
		}
	case 2:
		resp = 2 // connection recovery not supported
	default:
		return c.sendReject(rejectInvalidField, &p.Header)
	}
	if resp == 0 {
		// Commands still waiting for Data-Out will not get it any more;
		// the others finish and send their status first.
		c.tmu.Lock()
		var stuck []*task
		for _, t := range c.tasks {
			t.mu.Lock()
			if t.collecting || !t.unsolDone {
				stuck = append(stuck, t)
			}
			t.mu.Unlock()
		}
		c.tmu.Unlock()
		for _, t := range stuck {
			t.abortAndWait()
		}
		c.taskWG.Wait()
	}
	c.sess.done1(&p.Header)
	var h pdu.Header
	h.SetOpcode(pdu.OpLogoutResp)
	h.SetFlags(0x80)
	h[2] = resp
	h.SetITT(p.ITT())
	err := c.write(func() error { return c.writePDU(&h, nil, true) })
	if resp == 0 {
		c.tmu.Lock()
		c.logout = true
		c.tmu.Unlock()
	}
	return err
}
