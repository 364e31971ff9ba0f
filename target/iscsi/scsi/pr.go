package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/gosheep/gosheep/cluster/resv"
	gotgtscsi "github.com/gostor/gotgt/pkg/scsi"
)

// Reservations orders the reservation changes of LUs that more than one
// target port exports (every node exports every VDI): Do applies op to
// the LU of VDI vid in the one order every port agrees on, and returns
// the state it produced and the requester's outcome once every port that
// may run commands for the LU enforces that state (or can no longer
// serve I/O), and the commands it aborts there have ended. Every port
// gets the state through LU.Install and its aborts through LU.WaitAborts.
type Reservations interface {
	Do(ctx context.Context, vid uint32, op resv.Op) (*resv.State, resv.Outcome, error)
}

// ErrReservations wraps a failure to reach the reservation coordinator.
var ErrReservations = errors.New("scsi: reservations unavailable")

// change applies a reservation operation: through the coordinator when
// there is one, else on this LU alone. It returns once the commands in
// flight that the operation aborts on this port have ended.
func (lu *LU) change(ctx context.Context, op resv.Op) (resv.Outcome, error) {
	if lu.cfg.Reservations == nil {
		lu.mu.Lock()
		st := lu.rs.Clone()
		o := resv.Apply(st, op)
		ids := lu.installLocked(st)
		lu.mu.Unlock()
		lu.startAborts(ids)
		return o, lu.WaitAborts(ctx)
	}
	st, o, err := lu.cfg.Reservations.Do(ctx, lu.cfg.VID, op)
	if err != nil {
		return o, fmt.Errorf("%w: %w", ErrReservations, err)
	}
	lu.Install(st)
	return o, lu.WaitAborts(ctx)
}

// Install makes st the LU's reservation state and raises its unit
// attentions on this port's nexuses, once: a state no newer than the
// current one (by Seq) is ignored. Commands in flight of nexuses it
// preempted with ABORT are aborted in the background (WaitAborts).
func (lu *LU) Install(st *resv.State) {
	lu.mu.Lock()
	ids := lu.installLocked(st)
	lu.mu.Unlock()
	lu.startAborts(ids)
}

// installLocked installs st and returns the attached nexuses whose
// commands it aborts, already counted in lu.aborts: whoever installs the
// same state a moment later (the requester after the metadata watcher)
// then waits for them in WaitAborts.
func (lu *LU) installLocked(st *resv.State) []string {
	if st == nil || st.Seq <= lu.rs.Seq {
		return nil
	}
	lu.rs = st.Clone()
	var aborts []string
	for _, u := range st.UAs {
		a, ok := uaSense[u.Kind]
		if !ok {
			continue
		}
		if u.All {
			for _, ns := range lu.nexuses {
				ns.addUA(a)
			}
		} else if ns := lu.nexuses[u.Nexus]; ns != nil {
			ns.addUA(a)
			if u.Abort {
				aborts = append(aborts, u.Nexus)
			}
		}
	}
	if len(aborts) > 0 && lu.cfg.Abort != nil {
		lu.aborts.add()
	}
	return aborts
}

// startAborts runs the aborts installLocked counted, in the background:
// Install may run in the metadata's apply path, and a command being
// aborted may wait on it.
func (lu *LU) startAborts(ids []string) {
	if len(ids) == 0 || lu.cfg.Abort == nil {
		return
	}
	go func() {
		defer lu.aborts.done()
		for _, id := range ids {
			lu.cfg.Abort(id)
		}
	}()
}

// WaitAborts returns once the aborts started by Install have ended, or
// with ctx's error.
func (lu *LU) WaitAborts(ctx context.Context) error { return lu.aborts.wait(ctx) }

// pending counts background work that can be waited for with a context.
type pending struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0
}

func (p *pending) add() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.idle = make(chan struct{})
	}
	p.n++
}

func (p *pending) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n--
	if p.n == 0 {
		close(p.idle)
	}
}

func (p *pending) wait(ctx context.Context) error {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return nil
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var uaSense = map[uint8]ascq{
	resv.UAReservationsReleased:   ascReservationsReleased,
	resv.UARegistrationsPreempted: ascRegistrationsPreempted,
	resv.UAReservationsPreempted:  ascReservationsPreempted,
	resv.UAReset:                  ascLogicalUnitReset,
}

// resvResult maps a reservation outcome to the command's result.
func resvResult(o resv.Outcome, err error) Result {
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return check(KeyAbortedCommand, ascNone)
		}
		return check(KeyHardwareError, ascInternalFailure)
	}
	switch o.Status {
	case resv.OK:
		return good(nil)
	case resv.Conflict:
		return conflict()
	case resv.InvalidCDB:
		return invalidCDB(int(o.Field), int(o.Bit))
	case resv.InvalidParam:
		return invalidParam(int(o.Field), int(o.Bit))
	case resv.NoResources:
		return check(KeyIllegalRequest, ascInsufficientRegRes)
	case resv.InvalidRelease:
		return check(KeyIllegalRequest, ascInvalidReleasePR)
	}
	return invalidCDB(1, 4)
}

func execPRIn(ctx ctxT, c *Cmd, _ []byte) Result {
	alloc := be16(c.CDB[7:])
	lu := c.lu
	lu.mu.Lock()
	s := lu.rs // replaced whole on change, never written in place
	lu.mu.Unlock()
	out := make([]byte, 8)
	binary.BigEndian.PutUint32(out, s.Gen)
	switch c.CDB[1] & 0x1f {
	case 0: // READ KEYS
		for _, r := range s.Regs {
			out = binary.BigEndian.AppendUint64(out, r.Key)
		}
	case 1: // READ RESERVATION
		if s.Active {
			var d [16]byte
			if !s.AllRegistrants() {
				if r := s.Reg(s.Holder); r != nil {
					binary.BigEndian.PutUint64(d[:], r.Key)
				}
			}
			d[13] = s.Type // scope LU (0)
			out = append(out, d[:]...)
		}
	case 2: // REPORT CAPABILITIES
		out = make([]byte, 8)
		out[1] = 8
		// CRH; no ATP_C: a registration holds for the target port
		// (node) it came through, and ALL_TG_PT is refused.
		out[2] = 0x10
		out[3] = 0x80 // TMV
		out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		out[5] = 0x01
		return good(truncate(out, alloc))
	case 3: // READ FULL STATUS
		for _, r := range s.Regs {
			var d [24]byte
			binary.BigEndian.PutUint64(d[:], r.Key)
			if s.IsHolder(r.Nexus) {
				d[12] |= 0x01
				d[13] = s.Type
			}
			binary.BigEndian.PutUint16(d[18:], r.Rel)
			tid := transportID(r.Port)
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			out = append(out, d[:]...)
			out = append(out, tid...)
		}
	}
	binary.BigEndian.PutUint32(out[4:], uint32(len(out)-8))
	return good(truncate(out, uint32(alloc)))
}

// transportID is an iSCSI initiator-port TransportID (SPC-4 §7.6.4.6).
func transportID(port string) []byte {
	name := append([]byte(port), 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	t := make([]byte, 4, 4+len(name))
	t[0] = 0x40 | gotgtscsi.PIV_ISCSI
	binary.BigEndian.PutUint16(t[2:], uint16(len(name)))
	return append(t, name...)
}

func execPROut(ctx ctxT, c *Cmd, p []byte) Result {
	cdb := c.CDB
	if len(p) != 24 || be32(cdb[5:]) != 24 {
		return check(KeyIllegalRequest, ascParamListLen)
	}
	flags := p[20]
	if flags&0x08 != 0 { // SPEC_I_PT: not supported
		return invalidParam(20, 3)
	}
	if flags&0x04 != 0 { // ALL_TG_PT: not supported (no ATP_C)
		return invalidParam(20, 2)
	}
	if flags&0x01 != 0 { // APTPL: not offered (REPORT CAPABILITIES says so)
		return invalidParam(20, 0)
	}
	if sa := cdb[1] & 0x1f; sa > 6 {
		return invalidCDB(1, 4)
	}
	return resvResult(c.lu.change(ctx, resv.Op{
		Kind: resv.OpPROut, Nexus: c.nexus.ID, Port: c.nexus.InitiatorPort(), Rel: c.nexus.RelativePort(),
		SA: cdb[1] & 0x1f, Scope: cdb[2] >> 4, Type: cdb[2] & 0x0f,
		Key: be64(p[0:]), SAKey: be64(p[8:]),
	}))
}
