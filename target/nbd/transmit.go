package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/internal/sockopt"
	"github.com/gosheep/gosheep/volume"
)

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
	data   *[]byte // WRITE payload
	hold   int64   // bytes of the inflight budget this request holds
	start  time.Time
}

// reply is everything sent for one request, in order.
type reply struct {
	parts [][]byte
	buf   *[]byte // returned to the pool once written
	hold  int64
	// lent is data lent by the store, sent after parts (by sendfile) and
	// released once written.
	lent *volume.Lent
}

// tx is the transmission-phase state of a connection.
type tx struct {
	*conn
	dev     volume.Device
	info    ExportInfo
	slots   *semaphore.Weighted // requests in flight
	budget  *semaphore.Weighted // payload bytes in flight
	workers sync.WaitGroup
	work    chan *request // to idle workers
	lowat   sockopt.Lowat // raised while a large payload is read

	wmu     sync.Mutex // one reply on the wire at a time
	werr    error      // first write error; guarded by wmu
	waiting atomic.Int32
}

// transmit serves requests until the client disconnects, breaks the
// protocol, or the connection is aborted. A reader (this goroutine) parses
// requests, a bounded set of workers executes them concurrently and sends
// the replies in completion order, one at a time.
func (c *conn) transmit(dev volume.Device, info ExportInfo) {
	c.nc.SetDeadline(time.Time{})
	t := &tx{
		conn:   c,
		dev:    dev,
		info:   info,
		slots:  semaphore.NewWeighted(int64(c.s.cfg.MaxInflight)),
		budget: semaphore.NewWeighted(c.s.cfg.MaxInflightBytes),
		work:   make(chan *request),
		lowat:  sockopt.NewLowat(c.nc),
	}

	clean := false
	defer func() {
		if !clean { // panicking: let serveConn's recover see it, but first stop everything
			c.cancel()
		}
		close(t.work)
		t.workers.Wait()
	}()
	if err := t.readLoop(); err != nil {
		// The client is gone or broke the protocol: nobody will read the
		// replies, so stop the device work too.
		c.log.Debug("nbd: transmission ended", "err", err)
		c.cancel()
	}
	clean = true
}

// readLoop reads requests until NBD_CMD_DISC (nil) or an error.
func (t *tx) readLoop() error {
	cfg := &t.s.cfg
	var h [requestSize]byte
	last := 0 // the last request's payload length (sockopt.HeaderFrom)
	for {
		if _, err := io.ReadFull(sockopt.HeaderFrom(t.br, t.nc, last), h[:]); err != nil {
			return err
		}
		last = 0
		if m := binary.BigEndian.Uint32(h[0:4]); m != magicRequest {
			return fmt.Errorf("%w: bad request magic %#x", errProtocol, m)
		}
		r := &request{
			flags:  binary.BigEndian.Uint16(h[4:6]),
			typ:    binary.BigEndian.Uint16(h[6:8]),
			cookie: binary.BigEndian.Uint64(h[8:16]),
			off:    binary.BigEndian.Uint64(h[16:24]),
			length: binary.BigEndian.Uint32(h[24:28]),
			start:  time.Now(),
		}
		if r.typ == cmdDisc {
			t.s.rec.Request("nbd", "disc", 0, 0, nil)
			return nil
		}
		if err := t.slots.Acquire(t.ctx, 1); err != nil {
			return err
		}
		switch r.typ {
		case cmdWrite:
			last = int(r.length)
			if r.length > cfg.MaxPayload {
				// Keep the stream in sync without buffering the payload,
				// or hang up if even reading it is unreasonable.
				if r.length > max(drainLimit, cfg.MaxPayload) {
					t.slots.Release(1)
					return fmt.Errorf("%w: WRITE of %d bytes", errProtocol, r.length)
				}
				if _, err := io.CopyN(io.Discard, t.br, int64(r.length)); err != nil {
					t.slots.Release(1)
					return err
				}
				const msg = "request exceeds the maximum payload"
				t.finish(r, t.fail(r, errOverflow, msg), errors.New(msg))
				continue
			}
			if errno, msg := t.check(r); errno != 0 {
				if _, err := io.CopyN(io.Discard, t.br, int64(r.length)); err != nil {
					t.slots.Release(1)
					return err
				}
				t.finish(r, t.fail(r, errno, msg), errors.New(msg))
				continue
			}
			r.hold = int64(r.length)
			if err := t.budget.Acquire(t.ctx, r.hold); err != nil {
				t.slots.Release(1)
				return err
			}
			r.data = t.s.bufs.get(int(r.length))
			if _, err := t.lowat.ReadFull(t.br, *r.data); err != nil {
				t.s.bufs.put(r.data)
				t.budget.Release(r.hold)
				t.slots.Release(1)
				return err
			}
		case cmdRead:
			if r.length <= cfg.MaxPayload {
				r.hold = int64(r.length)
				if err := t.budget.Acquire(t.ctx, r.hold); err != nil {
					t.slots.Release(1)
					return err
				}
			}
		}
		t.dispatch(r)
	}
}

// dispatch hands r to an idle worker, or starts one. Workers live as long
// as the connection, so a request costs no goroutine start or stack
// growth; there are never more than MaxInflight of them, because each
// busy worker holds a slot.
func (t *tx) dispatch(r *request) {
	select {
	case t.work <- r:
	default:
		t.workers.Add(1)
		go func() {
			defer t.workers.Done()
			t.exec(r)
			for r := range t.work {
				t.exec(r)
			}
		}()
	}
}

// send writes a reply and returns what it held. Replies are written under
// a mutex rather than by a writer goroutine, saving a hand-off per request;
// the buffer is flushed by the last of the senders queued on the mutex, so
// a burst of completions costs one syscall. After a write error replies
// are dropped (the connection is being torn down) but still released.
func (t *tx) send(r *reply) {
	defer t.release(r)
	t.waiting.Add(1)
	t.wmu.Lock()
	defer t.wmu.Unlock()
	last := t.waiting.Add(-1) == 0
	if t.werr != nil {
		return
	}
	total := 0
	for _, p := range r.parts {
		total += len(p)
	}
	if r.lent != nil {
		t.werr = t.sendLent(r)
	} else if total >= largeReply {
		// Big data goes straight from the pooled buffer to the socket in
		// one writev, not copied through the bufio buffer.
		if t.werr = t.bw.Flush(); t.werr == nil {
			bufs := net.Buffers(r.parts)
			_, t.werr = bufs.WriteTo(t.nc)
		}
	} else {
		for _, p := range r.parts {
			if _, t.werr = t.bw.Write(p); t.werr != nil {
				break
			}
		}
		if t.werr == nil && last {
			t.werr = t.bw.Flush()
		}
	}
	if t.werr != nil {
		t.log.Debug("nbd: write reply", "err", t.werr)
		t.cancel() // closes the socket, so the reader stops too
	}
}

// sendLent writes r's parts, then its lent data from the store's file,
// within LendTimeout.
func (t *tx) sendLent(r *reply) error {
	if err := t.bw.Flush(); err != nil {
		return err
	}
	t.nc.SetWriteDeadline(time.Now().Add(t.s.cfg.LendTimeout))
	defer t.nc.SetWriteDeadline(time.Time{})
	return sendfile.WithHeader(t.nc, r.lent.Src, r.lent.Off, r.lent.N, r.parts...)
}

// largeReply is the reply size above which send bypasses the bufio buffer.
const largeReply = 32 << 10

// release returns what a reply held: its buffer, budget and slot.
func (t *tx) release(r *reply) {
	t.s.bufs.put(r.buf)
	if r.lent != nil {
		r.lent.Release()
	}
	if r.hold > 0 {
		t.budget.Release(r.hold)
	}
	t.slots.Release(1)
}

// finish sends a request's reply, returns its resources and records it.
func (t *tx) finish(r *request, rep *reply, err error) {
	rep.hold += r.hold
	r.hold = 0
	if r.data != nil {
		t.s.bufs.put(r.data)
		r.data = nil
	}
	bytes := 0
	if err == nil && (r.typ == cmdRead || r.typ == cmdWrite) {
		bytes = int(r.length)
	}
	t.send(rep)
	t.s.rec.Request("nbd", cmdName(r.typ), bytes, time.Since(r.start), err)
}

// exec runs one request on a worker goroutine.
func (t *tx) exec(r *request) {
	sent := false
	defer func() {
		if p := recover(); p != nil {
			t.s.panics.Add(1)
			t.log.Error("nbd: panic in request", "op", cmdName(r.typ), "panic", p, "stack", string(debug.Stack()))
			t.abort()
			if !sent {
				// Only release the resources: the connection is going away.
				t.s.bufs.put(r.data)
				t.release(&reply{hold: r.hold})
			}
		}
	}()
	if errno, msg := t.check(r); errno != 0 {
		sent = true // finish owns the resources from here
		t.finish(r, t.fail(r, errno, msg), errors.New(msg))
		return
	}
	var rep *reply
	var err error
	switch r.typ {
	case cmdRead:
		rep, err = t.read(r)
	case cmdWrite:
		err = t.dev.WriteAt(t.ctx, *r.data, r.off, r.flags&cmdFlagFUA != 0)
	case cmdFlush:
		err = t.dev.Flush(t.ctx)
	case cmdTrim:
		if err = t.dev.Discard(t.ctx, r.off, uint64(r.length)); err == nil && r.flags&cmdFlagFUA != 0 {
			err = t.dev.Flush(t.ctx)
		}
	case cmdWriteZeroes:
		var errno uint32
		if errno, err = t.writeZeroes(r); errno != 0 {
			sent = true // finish owns the resources from here
			t.finish(r, t.fail(r, errno, "zeroing would not be faster than writing"), err)
			return
		}
	case cmdCache:
		// A hint; the volume layer has no cache to warm.
	case cmdBlockStatus:
		rep, err = t.blockStatus(r)
	}
	switch {
	case err != nil:
		if t.ctx.Err() == nil {
			t.log.Debug("nbd: request failed", "op", cmdName(r.typ), "off", r.off, "len", r.length, "err", err)
		}
		rep = t.fail(r, errnoOf(err), err.Error())
	case rep == nil:
		rep = &reply{parts: [][]byte{appendSimple(nil, 0, r.cookie)}}
	}
	sent = true // finish owns the resources from here
	t.finish(r, rep, err)
}

// fail builds an error reply: an error chunk when structured replies are
// on (it carries a message), a simple reply otherwise.
func (t *tx) fail(r *request, errno uint32, msg string) *reply {
	if t.structured {
		return &reply{parts: [][]byte{appendErrorChunk(nil, r.cookie, errno, msg)}}
	}
	return &reply{parts: [][]byte{appendSimple(nil, errno, r.cookie)}}
}

// check validates flags, permissions and range before any device work.
func (t *tx) check(r *request) (uint32, string) {
	allowed := uint16(cmdFlagFUA) // FUA is valid on every command
	switch r.typ {
	case cmdRead:
		if t.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdFlush, cmdTrim, cmdCache:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	default:
		return errInval, fmt.Sprintf("unknown command %d", r.typ)
	}
	if r.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("invalid flags %#x for %s", r.flags, cmdName(r.typ))
	}
	writes := r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes
	if writes && t.info.ReadOnly {
		return errPerm, "export is read-only"
	}
	switch r.typ {
	case cmdFlush:
		return 0, ""
	case cmdRead:
		if r.length > t.s.cfg.MaxPayload {
			return errOverflow, "request exceeds the maximum payload"
		}
	case cmdBlockStatus:
		if !t.structured || !t.meta {
			return errInval, "no metadata context was negotiated"
		}
		if r.length == 0 {
			return errInval, "zero-length block status"
		}
	}
	if end := r.off + uint64(r.length); end < r.off || end > t.dev.Size() {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errNoSpc, "request extends beyond the end of the export"
		}
		return errInval, "request extends beyond the end of the export"
	}
	return 0, ""
}

// read serves NBD_CMD_READ. With structured replies, holes are sent as
// OFFSET_HOLE chunks (unless DF asks for a single chunk), so they are
// neither read nor sent as zeros. Every byte sent was filled by ReadAt:
// pooled buffers may hold another connection's data.
func (t *tx) read(r *request) (*reply, error) {
	n := int(r.length)
	if n == 0 {
		if t.structured {
			return &reply{parts: [][]byte{appendChunk(nil, replyFlagDone, replyTypeNone, r.cookie, 0)}}, nil
		}
		return &reply{parts: [][]byte{appendSimple(nil, 0, r.cookie)}}, nil
	}
	if l, ok := t.dev.(volume.Lender); ok && n >= volume.LendMin {
		// Any failure (a hole, no copy here, rot) is ReadAt's to handle.
		if lent, err := l.ReadLent(t.ctx, r.off, uint64(n)); err == nil {
			return &reply{parts: [][]byte{t.dataHeader(r, n)}, lent: lent}, nil
		}
	}
	buf := t.s.bufs.get(n)
	data := *buf
	if !t.structured || r.flags&cmdFlagDF != 0 {
		if err := t.dev.ReadAt(t.ctx, data, r.off); err != nil {
			t.s.bufs.put(buf)
			return nil, err
		}
		return &reply{parts: [][]byte{t.dataHeader(r, n), data}, buf: buf}, nil
	}

	exts := t.readExtents(r.off, uint64(n))
	for _, e := range exts {
		if !e.Allocated {
			continue
		}
		lo := e.Offset - r.off
		if err := t.dev.ReadAt(t.ctx, data[lo:lo+e.Length], e.Offset); err != nil {
			t.s.bufs.put(buf)
			return nil, err
		}
	}
	// All device I/O is done, so the last content chunk can carry DONE.
	hdrs := make([]byte, 0, len(exts)*32)
	type span struct{ h0, h1, d0, d1 int }
	spans := make([]span, len(exts))
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 {
			flags = replyFlagDone
		}
		h0 := len(hdrs)
		lo := int(e.Offset - r.off)
		if e.Allocated {
			hdrs = appendChunk(hdrs, flags, replyTypeOffsetData, r.cookie, 8+int(e.Length))
			hdrs = binary.BigEndian.AppendUint64(hdrs, e.Offset)
			spans[i] = span{h0, len(hdrs), lo, lo + int(e.Length)}
		} else {
			hdrs = appendChunk(hdrs, flags, replyTypeOffsetHole, r.cookie, 12)
			hdrs = binary.BigEndian.AppendUint64(hdrs, e.Offset)
			hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(e.Length))
			spans[i] = span{h0, len(hdrs), lo, lo}
		}
	}
	parts := make([][]byte, 0, 2*len(exts))
	for _, s := range spans {
		parts = append(parts, hdrs[s.h0:s.h1])
		if s.d1 > s.d0 {
			parts = append(parts, data[s.d0:s.d1])
		}
	}
	return &reply{parts: parts, buf: buf}, nil
}

// dataHeader is the header of a read reply whose n bytes follow at once:
// a simple reply, or one OFFSET_DATA chunk that ends the reply.
func (t *tx) dataHeader(r *request, n int) []byte {
	if !t.structured {
		return appendSimple(make([]byte, 0, 16), 0, r.cookie)
	}
	hdr := appendChunk(make([]byte, 0, 28), replyFlagDone, replyTypeOffsetData, r.cookie, 8+n)
	return binary.BigEndian.AppendUint64(hdr, r.off)
}

// readExtents returns the allocation map of [off, off+n) as consecutive,
// merged extents covering it exactly. Anything odd from the device (an
// error, gaps, overlaps, a map so fragmented that chunk headers would cost
// more than the data) degrades to one data extent: holes are an
// optimisation, never a requirement.
func (t *tx) readExtents(off, n uint64) []volume.Extent {
	whole := []volume.Extent{{Offset: off, Length: n, Allocated: true}}
	exts, err := t.dev.Extents(t.ctx, off, n)
	if err != nil || len(exts) == 0 || uint64(len(exts)) > 1+n/4096 {
		return whole
	}
	out := exts[:0:0]
	pos := off
	for _, e := range exts {
		if e.Offset != pos || e.Length == 0 || e.Length > off+n-pos {
			return whole
		}
		if k := len(out) - 1; k >= 0 && out[k].Allocated == e.Allocated {
			out[k].Length += e.Length
		} else {
			out = append(out, e)
		}
		pos += e.Length
	}
	if pos != off+n {
		return whole
	}
	return out
}

// writeZeroes serves NBD_CMD_WRITE_ZEROES. A non-zero errno is a refusal
// (FAST_ZERO that would not be fast) made before touching the export.
func (t *tx) writeZeroes(r *request) (uint32, error) {
	fua := r.flags&cmdFlagFUA != 0
	n := uint64(r.length)
	if r.flags&cmdFlagFastZero != 0 {
		fast, err := t.fastZero(r.off, n, r.flags&cmdFlagNoHole != 0)
		if err != nil {
			return 0, err
		}
		if !fast {
			return errNotSup, errors.New("zeroing would not be faster than writing")
		}
	}
	if r.flags&cmdFlagNoHole == 0 {
		return 0, t.dev.WriteZeroes(t.ctx, r.off, n, fua)
	}
	// NO_HOLE: the range must stay provisioned, and Device.WriteZeroes may
	// free it, so write real zeros.
	for pos := r.off; pos < r.off+n; {
		k := min(uint64(len(t.s.zero)), r.off+n-pos)
		if err := t.dev.WriteAt(t.ctx, t.s.zero[:k], pos, false); err != nil {
			return 0, err
		}
		pos += k
	}
	if fua {
		return 0, t.dev.Flush(t.ctx)
	}
	return 0, nil
}

// fastZero reports whether zeroing [off, off+n) is cheaper than writing it:
// Device.WriteZeroes frees whole objects, which is cheap, but must write
// zeros into partial ones. So it is fast when every partial object piece is
// already a hole (zeroing it is a no-op), and never with NO_HOLE.
func (t *tx) fastZero(off, n uint64, noHole bool) (bool, error) {
	if noHole {
		return false, nil
	}
	os := uint64(t.dev.ObjectSize())
	if os == 0 {
		return false, nil
	}
	end := off + n
	a := (off + os - 1) / os * os // first object boundary at or after off
	b := end / os * os            // last object boundary at or before end
	var edges [][2]uint64
	if a >= b {
		edges = append(edges, [2]uint64{off, end})
	} else {
		edges = append(edges, [2]uint64{off, a}, [2]uint64{b, end})
	}
	for _, e := range edges {
		if e[1] <= e[0] {
			continue
		}
		exts, err := t.dev.Extents(t.ctx, e[0], e[1]-e[0])
		if err != nil {
			return false, err
		}
		for _, x := range exts {
			if x.Allocated {
				return false, nil
			}
		}
	}
	return true, nil
}

// maxDescriptors caps one block status reply; the protocol lets the
// server describe less than was asked.
const maxDescriptors = 1 << 16

// blockStatus serves NBD_CMD_BLOCK_STATUS for base:allocation.
func (t *tx) blockStatus(r *request) (*reply, error) {
	n := uint64(r.length)
	// Bound the device's work (and the extent list it allocates) by how
	// many descriptors we would send anyway.
	if os := uint64(t.dev.ObjectSize()); os > 0 {
		n = min(n, os*maxDescriptors)
	}
	exts, err := t.dev.Extents(t.ctx, r.off, n)
	if err != nil {
		return nil, err
	}
	body := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*min(len(exts), maxDescriptors)), contextAllocID)
	pos := r.off
	count := 0
	var lastState uint32
	for _, e := range exts {
		if e.Offset != pos || e.Length == 0 || e.Length > r.off+n-pos {
			break // stop at anything inconsistent; what came before is valid
		}
		state := uint32(0)
		if !e.Allocated {
			state = stateHole | stateZero
		}
		if count > 0 && state == lastState {
			// Merge into the previous descriptor.
			i := len(body) - 8
			binary.BigEndian.PutUint32(body[i:], binary.BigEndian.Uint32(body[i:])+uint32(e.Length))
		} else {
			if count == maxDescriptors {
				break
			}
			body = binary.BigEndian.AppendUint32(body, uint32(e.Length))
			body = binary.BigEndian.AppendUint32(body, state)
			count++
			lastState = state
		}
		pos += e.Length
		if r.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	if count == 0 {
		return nil, fmt.Errorf("nbd: device returned no usable extent at %d", r.off)
	}
	hdr := appendChunk(nil, replyFlagDone, replyTypeBlockStatus, r.cookie, len(body))
	return &reply{parts: [][]byte{hdr, body}}, nil
}
