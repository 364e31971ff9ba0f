package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/target/iscsi/scsi"
	"github.com/gosheep/gosheep/volume"
)

// maxImmediateTasks bounds immediate commands (outside the CmdSN window)
// in flight on a connection.
const maxImmediateTasks = 16

// task is one SCSI command of a connection.
type task struct {
	c     *conn
	hdr   pdu.Header
	itt   uint32
	edtl  uint32
	read  bool
	write bool
	cdb   []byte
	ctx   context.Context
	abort context.CancelFunc
	done  chan struct{}

	mu sync.Mutex
	// Data-Out state (under mu).
	aborted    bool
	protoErr   bool
	unsolLimit uint32   // bytes the initiator may send unsolicited (incl. immediate)
	unsolDone  bool     // F seen on the unsolicited sequence
	unsolSN    uint32   // next DataSN of the unsolicited sequence
	received   uint32   // contiguous bytes received
	pieces     [][]byte // Data-Out before collect: pooled buffers, in order
	pre        int64    // pieces[0]'s room beyond its data, counted in c.presized
	buf        []byte   // pooled, allocated once the command knows its length
	want       uint32
	reading    bool         // the reader is filling buf outside mu
	freed      bool         // run is over: buf belongs to whoever clears reading
	dataIn     []byte       // pooled Data-In buffer of a read
	lent       *volume.Lent // a read's data lent by the store
	r2ts       []*r2t
	nextR2TOff uint32
	r2tSN      uint32
	wake       chan struct{}
	statusSent bool // under mu
	collecting bool // waiting for Data-Out (under mu)
}

type r2t struct {
	ttt        uint32
	off, end   uint32
	nextOff    uint32
	nextDataSN uint32
}

// scsiCommand handles a SCSI Command PDU (in the goroutine reading).
func (c *conn) scsiCommand(p *pdu.PDU) error {
	se := c.sess
	f := p.Flags()
	cdb := p.CDB()
	if p.AHSLen() > 0 {
		// Extended CDB AHS (type 1): the CDB continues in the AHS.
		if ext := extendedCDB(p.AHS); ext != nil {
			cdb = append(append([]byte(nil), cdb...), ext...)
		}
	}
	t := &task{
		c: c, hdr: p.Header, itt: p.ITT(), edtl: p.EDTL(),
		read: f&pdu.FlagRead != 0, write: f&pdu.FlagWrite != 0,
		cdb: append([]byte(nil), cdb...), done: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	t.ctx, t.abort = context.WithCancel(c.ctx)
	// drop gives back the immediate data of a command that will not run.
	drop := func() {}
	if len(p.Data) > 0 {
		pre := presizeOf(p.Data) // readOne's room for the rest
		drop = func() { c.discard(p) }
		if !t.write || !se.params.immediateData || uint32(len(p.Data)) > se.params.firstBurst {
			drop()
			se.done1(&p.Header)
			return c.sendReject(rejectProtocol, &p.Header)
		}
		t.pieces = [][]byte{p.Data[:min(uint32(len(p.Data)), t.edtl)]}
		t.received = uint32(len(t.pieces[0]))
		t.pre = pre
	}
	t.unsolLimit = t.received
	if t.write && !se.params.initialR2T {
		t.unsolLimit = min(se.params.firstBurst, t.edtl)
	}
	t.unsolDone = f&pdu.FlagFinal != 0 || t.received >= t.unsolLimit
	c.tmu.Lock()
	if _, busy := c.tasks[t.itt]; busy || t.itt == pdu.ReservedTag {
		c.tmu.Unlock()
		drop()
		se.done1(&p.Header)
		return c.sendReject(rejectTaskInProgress, &p.Header)
	}
	if len(c.tasks) >= se.window+maxImmediateTasks {
		// Immediate commands bypass the CmdSN window; bound them.
		c.tmu.Unlock()
		drop()
		t.sendStatus(scsi.Result{Status: scsi.StatusTaskSetFull}, 0, 0)
		t.abort()
		return nil
	}
	c.tasks[t.itt] = t
	c.taskWG.Add(1)
	c.tmu.Unlock()
	c.ready = append(c.ready, t) // started by the reader once the PDU is handled
	return nil
}

// extendedCDB returns the additional CDB bytes of an Extended CDB AHS.
func extendedCDB(ahs []byte) []byte {
	for len(ahs) >= 4 {
		l := int(binary.BigEndian.Uint16(ahs))
		typ := ahs[2]
		total := (3 + l + 3) &^ 3
		if total > len(ahs) || l < 1 {
			return nil
		}
		if typ == 1 {
			return ahs[4 : 3+l]
		}
		ahs = ahs[total:]
	}
	return nil
}

// dataOut places a Data-Out PDU whose data segment is still unread (in
// the reader goroutine). Once the command's buffer exists, the data is
// read from the socket straight into it; the sequence checks happen
// before, the accounting (received) after, so the collecting goroutine
// never sees bytes that are not there yet.
func (c *conn) dataOut(p *pdu.PDU) error {
	n := p.DataLen()
	c.tmu.Lock()
	t := c.tasks[p.ITT()]
	c.tmu.Unlock()
	if t == nil {
		return c.discardData(n) // a late PDU of a finished or unknown command
	}
	t.mu.Lock()
	if t.aborted || t.protoErr || t.freed {
		t.mu.Unlock()
		return c.discardData(n)
	}
	off, sn := p.BufferOffset(), p.DataSN()
	unsolEnd := false
	// The collecting goroutine is woken only when it has something to do
	// (solicit more, finish, fail), not for every segment.
	wake := false
	if p.TTT() == pdu.ReservedTag {
		if t.unsolDone || sn != t.unsolSN || off != t.received || uint64(off)+uint64(n) > uint64(t.unsolLimit) {
			t.protoErr = true
			t.kick()
			t.mu.Unlock()
			return c.discardData(n)
		}
		t.unsolSN++
		// The sequence is done only once this segment's bytes count as
		// received (below): collect, seeing it done while they are still
		// being read, would solicit them again (an R2T overlapping the
		// unsolicited data). This reader reads the connection's next PDU
		// only after this one, so no unsolicited PDU can follow meanwhile.
		unsolEnd = p.Final()
		wake = unsolEnd
	} else {
		var r *r2t
		for _, x := range t.r2ts {
			if x.ttt == p.TTT() {
				r = x
			}
		}
		if r == nil || sn != r.nextDataSN || off != r.nextOff || uint64(off)+uint64(n) > uint64(r.end) || off != t.received {
			t.protoErr = true
			t.kick()
			t.mu.Unlock()
			return c.discardData(n)
		}
		r.nextDataSN++
		r.nextOff += n
		if r.nextOff == r.end {
			for i, x := range t.r2ts {
				if x == r {
					t.r2ts = append(t.r2ts[:i], t.r2ts[i+1:]...)
					break
				}
			}
			wake = true // collect may solicit the next burst
		} else if p.Final() {
			t.protoErr = true // F before the burst is complete
			wake = true
		}
	}
	var dst []byte
	direct := t.buf != nil && uint64(off)+uint64(n) <= uint64(t.want)
	if direct {
		dst = t.buf[off : off+n]
		t.reading = true
	}
	t.mu.Unlock()
	if !direct {
		dst = c.srv.bufs.get(int(n))
	}
	err := c.readData(dst)
	t.mu.Lock()
	defer t.mu.Unlock()
	if direct {
		t.reading = false
		if t.freed {
			// run ended (aborted) while we were reading: the buffer is ours.
			c.srv.bufs.put(t.buf)
			t.buf = nil
			return err
		}
	}
	if err != nil {
		return err
	}
	switch {
	case direct:
	case t.freed:
		c.srv.bufs.put(dst)
		return nil
	case t.buf != nil:
		// collect started meanwhile, or the data runs past what it wants.
		if off < t.want {
			copy(t.buf[off:t.want], dst)
		}
		c.srv.bufs.put(dst)
	default:
		t.pieces = append(t.pieces, dst)
	}
	t.received += n
	if unsolEnd {
		t.unsolDone = true
	}
	if wake || (t.want > 0 && t.received >= t.want) {
		t.kick()
	}
	return nil
}

// discardData reads and drops a data segment of n bytes (with padding and
// digest, checked).
func (c *conn) discardData(n uint32) error {
	if n == 0 {
		return nil
	}
	b := c.srv.bufs.get(int(n))
	err := c.readData(b)
	c.srv.bufs.put(b)
	return err
}

// allocDataIn hands a read command a pooled buffer for its Data-In.
func (t *task) allocDataIn(n int) []byte {
	b := t.c.srv.bufs.get(n)
	t.mu.Lock()
	t.dataIn = b
	t.mu.Unlock()
	return b
}

// release returns the task's buffers to the pool once run is over (the
// status, and any Data-In, has been written). A Data-Out buffer the
// reader is still filling is returned by the reader.
func (t *task) release() {
	bufs := &t.c.srv.bufs
	t.mu.Lock()
	defer t.mu.Unlock()
	t.freed = true
	if t.buf != nil && !t.reading {
		bufs.put(t.buf)
		t.buf = nil
	}
	for _, pc := range t.pieces {
		bufs.put(pc)
	}
	t.pieces = nil
	t.c.presized.Add(-t.pre)
	t.pre = 0
	if t.dataIn != nil {
		bufs.put(t.dataIn)
		t.dataIn = nil
	}
	if t.lent != nil {
		t.lent.Release()
		t.lent = nil
	}
}

func (t *task) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// residual computes the iSCSI residual flags and count.
func residual(expected, actual uint32) (byte, uint32) {
	switch {
	case actual > expected:
		return pdu.FlagOverflow, actual - expected
	case actual < expected:
		return pdu.FlagUnder, expected - actual
	}
	return 0, 0
}

var errAborted = errors.New("iscsi: task aborted")

// run executes the command and sends its status (on the goroutine that
// read it, or on a worker).
func (t *task) run() {
	c := t.c
	se := c.sess
	defer func() {
		if r := recover(); r != nil {
			c.srv.panics.Add(1)
			c.srv.log.Error("iscsi: panic in command", "panic", r)
			c.shutdown()
		}
		c.tmu.Lock()
		if c.tasks[t.itt] == t {
			delete(c.tasks, t.itt)
		}
		c.tmu.Unlock()
		if !t.statusSent {
			se.done1(&t.hdr)
		}
		t.abort()
		t.release()
		close(t.done)
		c.taskWG.Done()
	}()
	start := time.Now()
	lu := se.tgt.lu
	var res scsi.Result
	var name = "UNKNOWN"
	var bytes int
	inSent, spdtlOut := uint32(0), uint32(0)
	held := int64(0)
	defer func() { c.srv.budget.release(held) }()

	if lun := t.hdr.LUN(); lun != 0 {
		res = t.otherLUN(lun)
	} else if cmd, early := lu.Prepare(se.nexus, t.cdb); early != nil {
		res = *early
		name = lu.OpName(t.cdb)
	} else {
		name = cmd.Name()
		expOut := uint32(0)
		if t.write {
			expOut = t.edtl
		}
		want := min(cmd.OutLen, expOut)
		spdtlOut = cmd.OutLen
		if cmd.OutExact && expOut != cmd.OutLen {
			// EDTL above the CDB's length: only the CDB's is solicited;
			// below it: a plain write is cut to whole blocks, anything
			// else is refused. Either way the residual is reported.
			ok := expOut > cmd.OutLen && cmd.TruncateOut(cmd.OutLen)
			if !ok && expOut < cmd.OutLen {
				ok = cmd.TruncateOut(expOut)
			}
			if !ok {
				flags, count := residual(expOut, spdtlOut)
				t.sendStatus(cmd.OutMismatch(), flags, count)
				t.metrics(name, 0, start, errRejected)
				return
			}
			want = cmd.OutLen
		}
		need := min(int64(want)+int64(cmd.DataInLen()), c.srv.cfg.MaxBufferBytes)
		if need > 0 {
			if err := c.srv.budget.acquire(t.ctx, need); err != nil {
				return // aborted
			}
			held = need
		}
		var out []byte
		var ws *scsi.WriteStream
		if want > 0 && t.streams(want) {
			if s, ok := cmd.Stream(t.ctx); ok {
				ws = s
				defer ws.Close()
			}
		}
		if want > 0 {
			var err error
			out, err = t.collect(want, ws)
			if errors.Is(err, errAborted) {
				return
			}
			if err != nil {
				res = scsi.Aborted()
				t.sendStatus(res, 0, 0)
				t.metrics(name, 0, start, err)
				return
			}
		}
		cmd.DataIn = t.allocDataIn
		// Lent data goes by sendfile, which a data digest would have to
		// read after all.
		cmd.Lend = !c.lim.DataDigest
		if ws != nil {
			res = ws.Finish(t.ctx, out)
		} else {
			res = cmd.Execute(t.ctx, out)
		}
		if res.Lent != nil {
			t.mu.Lock()
			t.lent = res.Lent // released with the task's buffers
			t.mu.Unlock()
		}
		if t.ctx.Err() != nil {
			return // aborted: no status
		}
		bytes = int(want)
	}
	// Data-In and residuals.
	var flags byte
	var count uint32
	data := res.Data
	if n := uint32(res.DataLen()); n > 0 {
		expIn := uint32(0)
		if t.read {
			expIn = t.edtl
		}
		flags, count = residual(expIn, n)
		if n > expIn {
			if res.Lent != nil {
				res.Lent.N = int(expIn)
			} else {
				data = data[:expIn]
			}
			n = expIn
		}
		inSent = n
		bytes += int(inSent)
	} else if t.write {
		flags, count = residual(t.edtl, spdtlOut)
	} else if t.read {
		flags, count = residual(t.edtl, 0)
	}
	res.Data = data
	t.sendStatus(res, flags, count)
	var err error
	if res.Status != scsi.StatusGood {
		err = errCheckCondition
	}
	t.metrics(name, bytes, start, err)
}

var (
	errRejected       = errors.New("iscsi: command rejected")
	errCheckCondition = errors.New("iscsi: check condition")
)

func (t *task) metrics(op string, n int, start time.Time, err error) {
	t.c.srv.rec.Request("iscsi", op, n, time.Since(start), err)
}

// otherLUN answers commands to LUNs other than 0.
func (t *task) otherLUN(lun uint64) scsi.Result {
	switch t.cdb[0] {
	case 0x12: // INQUIRY: peripheral qualifier 3, no device
		if t.cdb[1]&1 != 0 {
			return scsi.Result{Status: scsi.StatusCheckCondition, Sense: (&scsi.Sense{Key: scsi.KeyIllegalRequest, ASC: 0x2500, BitPtr: -1}).Bytes()}
		}
		d := make([]byte, 36)
		d[0] = 0x7f
		d[2], d[3], d[4] = 0x06, 0x02, 31
		alloc := uint32(binary.BigEndian.Uint16(t.cdb[3:]))
		return scsi.Result{Status: scsi.StatusGood, Data: d[:min(alloc, 36)]}
	case 0xa0: // REPORT LUNS works on any LUN
		if cmd, early := t.c.sess.tgt.lu.Prepare(t.c.sess.nexus, t.cdb); early == nil {
			return cmd.Execute(t.ctx, nil)
		} else {
			return *early
		}
	}
	return scsi.Result{Status: scsi.StatusCheckCondition, Sense: (&scsi.Sense{Key: scsi.KeyIllegalRequest, ASC: 0x2500, BitPtr: -1}).Bytes()}
}

// streamUnit is the granularity of a streamed write's parts.
const streamUnit = 64 << 10

// streams reports whether a write of want bytes should be written in
// parts as they arrive (scsi.WriteStream): only when some of it must be
// solicited (there is a round trip to overlap) and the command is alone
// on its connection. With others in flight the round trips overlap with
// their work already, and parts would only add per-write costs.
func (t *task) streams(want uint32) bool {
	if want < 2*streamUnit {
		return false // small writes, the hot path, take no locks here
	}
	t.mu.Lock()
	unsol := t.unsolLimit
	t.mu.Unlock()
	if want <= unsol {
		return false
	}
	t.c.tmu.Lock()
	alone := len(t.c.tasks) == 1
	t.c.tmu.Unlock()
	return alone
}

// collect receives want bytes of Data-Out, soliciting with R2Ts what was
// not sent unsolicited. With ws, the part received so far (whole
// streamUnits, short of the end) is written while the initiator sends
// the next: after the R2Ts for it have gone out.
func (t *task) collect(want uint32, ws *scsi.WriteStream) ([]byte, error) {
	c := t.c
	p := &c.sess.params
	t.mu.Lock()
	var buf []byte
	pos := uint32(0)
	pieces := t.pieces
	if len(pieces) > 0 && cap(pieces[0]) >= int(want) {
		// The immediate data's buffer has room for it all (readOne);
		// run's budget covers it now.
		buf = pieces[0][:want]
		c.presized.Add(-t.pre)
		t.pre = 0
		pos = uint32(len(pieces[0]))
		pieces = pieces[1:]
	} else {
		buf = c.srv.bufs.get(int(want))
	}
	t.want = want
	for _, pc := range pieces {
		if pos < want {
			copy(buf[pos:], pc)
		}
		pos += uint32(len(pc))
		c.srv.bufs.put(pc)
	}
	t.pieces = nil
	t.buf = buf
	t.collecting = true
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.collecting = false
		t.mu.Unlock()
	}()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for {
		t.mu.Lock()
		if t.aborted {
			t.mu.Unlock()
			return nil, errAborted
		}
		if t.protoErr {
			t.mu.Unlock()
			return nil, errProtocol
		}
		if t.received >= want && t.unsolDone && len(t.r2ts) == 0 {
			t.mu.Unlock()
			return buf, nil
		}
		var send []r2t
		if t.unsolDone {
			if t.nextR2TOff < t.received {
				t.nextR2TOff = t.received
			}
			for uint32(len(t.r2ts)) < p.maxOutstandingR2 && t.nextR2TOff < want {
				l := min(p.maxBurst, want-t.nextR2TOff)
				c.tmu.Lock()
				c.nextTTT++
				if c.nextTTT == pdu.ReservedTag {
					c.nextTTT = 1
				}
				ttt := c.nextTTT
				c.tmu.Unlock()
				r := &r2t{ttt: ttt, off: t.nextR2TOff, end: t.nextR2TOff + l, nextOff: t.nextR2TOff}
				t.r2ts = append(t.r2ts, r)
				t.nextR2TOff += l
				send = append(send, *r)
			}
		}
		sn := t.r2tSN
		t.r2tSN += uint32(len(send))
		t.mu.Unlock()
		if len(send) > 0 {
			err := c.write(func() error {
				for i, r := range send {
					var h pdu.Header
					h.SetOpcode(pdu.OpR2T)
					h.SetFlags(0x80)
					h.SetLUN(t.hdr.LUN())
					h.SetITT(t.itt)
					h.SetField20(r.ttt)
					h.SetDataSN(sn + uint32(i))
					h.SetBufferOffset(r.off)
					h.SetDesiredLength(r.end - r.off)
					if err := c.writePDU(&h, nil, false); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return nil, errAborted
			}
		}
		if ws != nil {
			t.mu.Lock()
			ready := min(t.received, want-1) / streamUnit * streamUnit
			t.mu.Unlock()
			if ready > ws.Written() {
				ws.Write(t.ctx, buf[ws.Written():ready])
				continue // more may have arrived meanwhile
			}
		}
		select {
		case <-t.wake:
		case <-t.ctx.Done():
			return nil, errAborted
		case <-deadline.C:
			return nil, errProtocol
		}
	}
}

// sendStatus sends the result's data as Data-In (status in the last one
// when possible) and, when needed, a SCSI Response.
func (t *task) sendStatus(res scsi.Result, rflags byte, resid uint32) {
	c := t.c
	se := c.sess
	t.mu.Lock()
	if t.aborted {
		t.mu.Unlock()
		return
	}
	t.statusSent = true
	t.mu.Unlock()
	// The initiator may reuse the ITT as soon as it sees the status.
	c.tmu.Lock()
	if c.tasks[t.itt] == t {
		delete(c.tasks, t.itt)
	}
	c.tmu.Unlock()
	se.done1(&t.hdr)
	maxSeg := se.params.maxSendData
	burst := se.params.maxBurst
	c.write(func() error {
		dataSN := uint32(0)
		statusInData := res.Status == scsi.StatusGood && len(res.Sense) == 0
		total := uint32(res.DataLen())
		for off := uint32(0); off < total; {
			n := min(maxSeg, total-off)
			// Each sequence (burst) ends on a MaxBurstLength boundary.
			if b := burst - off%burst; n > b {
				n = b
			}
			last := off+n == total
			var h pdu.Header
			h.SetOpcode(pdu.OpDataIn)
			f := byte(0)
			if last || (off+n)%burst == 0 {
				f |= pdu.FlagFinal
			}
			withStatus := last && statusInData
			if withStatus {
				f |= pdu.FlagStatus | rflags
				h[3] = res.Status
				h.SetResidual(resid)
			}
			h.SetFlags(f)
			h.SetLUN(t.hdr.LUN())
			h.SetITT(t.itt)
			h.SetField20(pdu.ReservedTag)
			h.SetDataSN(dataSN)
			h.SetBufferOffset(off)
			dataSN++
			var err error
			if l := res.Lent; l != nil {
				err = c.writePDUFile(&h, l.Src, l.Off+int64(off), n, withStatus)
			} else {
				err = c.writePDU(&h, res.Data[off:off+n], withStatus)
			}
			if err != nil {
				return err
			}
			off += n
			if withStatus {
				return nil
			}
		}
		var h pdu.Header
		h.SetOpcode(pdu.OpSCSIResp)
		h.SetFlags(0x80 | rflags)
		h[2] = 0 // command completed at target
		h[3] = res.Status
		h.SetITT(t.itt)
		t.mu.Lock()
		expDataSN := dataSN + t.r2tSN
		t.mu.Unlock()
		h.SetDataSN(expDataSN) // ExpDataSN
		h.SetResidual(resid)
		var sense []byte
		if len(res.Sense) > 0 {
			sense = make([]byte, 2+len(res.Sense))
			binary.BigEndian.PutUint16(sense, uint16(len(res.Sense)))
			copy(sense[2:], res.Sense)
		}
		return c.writePDU(&h, sense, true)
	})
}
