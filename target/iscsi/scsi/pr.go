package scsi

import (
	"encoding/binary"
	"sort"

	gotgtscsi "github.com/gostor/gotgt/pkg/scsi"
)

// SPC-3 persistent reservations (gotgt's constant names).
var (
	prWE   = gotgtscsi.PR_TYPE_WRITE_EXCLUSIVE
	prEA   = gotgtscsi.PR_TYPE_EXCLUSIVE_ACCESS
	prWERO = gotgtscsi.PR_TYPE_WRITE_EXCLUSIVE_REGONLY
	prEARO = gotgtscsi.PR_TYPE_EXCLUSIVE_ACCESS_REGONLY
	prWEAR = gotgtscsi.PR_TYPE_WRITE_EXCLUSIVE_ALLREG
	prEAAR = gotgtscsi.PR_TYPE_EXCLUSIVE_ACCESS_ALLREG
)

const maxRegistrations = 256

type prReg struct {
	key  uint64
	port string // initiator port name, for READ FULL STATUS
	rel  uint16
}

type prState struct {
	regs   map[string]*prReg // by nexus ID
	gen    uint32
	active bool
	holder string // nexus ID; unused for all-registrants types
	typ    byte
}

func (s *prState) allRegs() bool { return s.typ == prWEAR || s.typ == prEAAR }

func (s *prState) isHolder(id string) bool {
	if !s.active {
		return false
	}
	if s.allRegs() {
		return s.regs[id] != nil
	}
	return s.holder == id
}

// conflicts reports whether a command of the given kind from nexus id
// conflicts with the persistent reservation (SPC-3 Table 31, simplified
// to read/write classes).
func (s *prState) conflicts(id string, write bool) bool {
	if !s.active || s.isHolder(id) {
		return false
	}
	registered := s.regs[id] != nil
	switch s.typ {
	case prWE:
		return write
	case prEA:
		return true
	case prWERO, prWEAR:
		return !registered && write
	case prEARO, prEAAR:
		return !registered
	}
	return false
}

func validType(t byte) bool {
	switch t {
	case prWE, prEA, prWERO, prEARO, prWEAR, prEAAR:
		return true
	}
	return false
}

// release drops the reservation; registrants other than id get
// RESERVATIONS RELEASED for the registrants-only/all-registrants types.
func (lu *LU) prRelease(id string) {
	s := &lu.pr
	if s.typ == prWERO || s.typ == prEARO || s.typ == prWEAR || s.typ == prEAAR {
		lu.uaOthers(id, ascReservationsReleased, func(n string) bool { return s.regs[n] != nil })
	}
	s.active, s.holder, s.typ = false, "", 0
}

// unregister removes id's registration, releasing the reservation when it
// goes with it.
func (lu *LU) prUnregister(id string) {
	s := &lu.pr
	delete(s.regs, id)
	if !s.active {
		return
	}
	if s.allRegs() {
		if len(s.regs) == 0 {
			s.active, s.typ = false, 0
		}
		return
	}
	if s.holder == id {
		lu.prRelease(id)
	}
}

func execPRIn(ctx ctxT, c *Cmd, _ []byte) Result {
	alloc := be16(c.CDB[7:])
	lu := c.lu
	lu.mu.Lock()
	defer lu.mu.Unlock()
	s := &lu.pr
	out := make([]byte, 8)
	binary.BigEndian.PutUint32(out, s.gen)
	ids := make([]string, 0, len(s.regs))
	for id := range s.regs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	switch c.CDB[1] & 0x1f {
	case 0: // READ KEYS
		for _, id := range ids {
			out = binary.BigEndian.AppendUint64(out, s.regs[id].key)
		}
	case 1: // READ RESERVATION
		if s.active {
			var d [16]byte
			if !s.allRegs() {
				if r := s.regs[s.holder]; r != nil {
					binary.BigEndian.PutUint64(d[:], r.key)
				}
			}
			d[13] = s.typ // scope LU (0)
			out = append(out, d[:]...)
		}
	case 2: // REPORT CAPABILITIES
		out = make([]byte, 8)
		out[1] = 8
		out[2] = 0x10 | 0x04 // CRH, ATP_C
		out[3] = 0x80        // TMV
		out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		out[5] = 0x01
		return good(truncate(out, alloc))
	case 3: // READ FULL STATUS
		for _, id := range ids {
			r := s.regs[id]
			var d [24]byte
			binary.BigEndian.PutUint64(d[:], r.key)
			d[12] = 0x02 // ALL_TG_PT: we have one target port
			if s.isHolder(id) {
				d[12] |= 0x01
				d[13] = s.typ
			}
			binary.BigEndian.PutUint16(d[18:], r.rel)
			tid := transportID(r.port)
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
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, cdb[2]&0x0f
	if len(p) != 24 || be32(cdb[5:]) != 24 {
		return check(KeyIllegalRequest, ascParamListLen)
	}
	key, saKey := be64(p[0:]), be64(p[8:])
	flags := p[20]
	if flags&0x08 != 0 { // SPEC_I_PT: not supported
		return invalidParam(20, 3)
	}
	if flags&0x01 != 0 { // APTPL: no persistence through power loss
		return invalidParam(20, 0)
	}
	lu := c.lu
	id := c.nexus.ID
	lu.mu.Lock()
	defer lu.mu.Unlock()
	s := &lu.pr
	reg := s.regs[id]
	switch sa {
	case 0, 6: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		if reg == nil {
			if sa == 0 && key != 0 {
				return conflict()
			}
			if saKey == 0 {
				return good(nil)
			}
			if len(s.regs) >= maxRegistrations {
				return check(KeyIllegalRequest, ascInsufficientRegRes)
			}
			s.regs[id] = &prReg{key: saKey, port: c.nexus.InitiatorPort(), rel: max(c.nexus.RelPort, 1)}
			s.gen++
			return good(nil)
		}
		if sa == 0 && key != reg.key {
			return conflict()
		}
		if saKey == 0 {
			lu.prUnregister(id)
		} else {
			reg.key = saKey
		}
		s.gen++
		return good(nil)
	}
	if reg == nil || reg.key != key {
		return conflict()
	}
	switch sa {
	case 1: // RESERVE
		if scope != 0 {
			return invalidCDB(2, 7)
		}
		if !validType(typ) {
			return invalidCDB(2, 3)
		}
		if s.active {
			if s.isHolder(id) && s.typ == typ {
				return good(nil)
			}
			return conflict()
		}
		s.active, s.holder, s.typ = true, id, typ
		return good(nil)
	case 2: // RELEASE
		if !s.active || !s.isHolder(id) {
			return good(nil)
		}
		if s.typ != typ || scope != 0 {
			return check(KeyIllegalRequest, ascInvalidReleasePR)
		}
		lu.prRelease(id)
		return good(nil)
	case 3: // CLEAR
		for n := range s.regs {
			if n != id {
				if ns := lu.nexuses[n]; ns != nil {
					ns.addUA(ascReservationsPreempted)
				}
			}
		}
		s.regs = map[string]*prReg{}
		s.active, s.holder, s.typ = false, "", 0
		s.gen++
		return good(nil)
	case 4, 5: // PREEMPT, PREEMPT AND ABORT
		return lu.prPreempt(id, saKey, scope, typ)
	}
	return invalidCDB(1, 4)
}

func (lu *LU) prPreempt(id string, saKey uint64, scope, typ byte) Result {
	s := &lu.pr
	removeKey := func(k uint64, all bool) int {
		n := 0
		for rid, r := range s.regs {
			if rid == id || (!all && r.key != k) {
				continue
			}
			delete(s.regs, rid)
			if ns := lu.nexuses[rid]; ns != nil {
				ns.addUA(ascRegistrationsPreempted)
			}
			n++
		}
		return n
	}
	newReservation := func() *Result {
		if scope != 0 {
			r := invalidCDB(2, 7)
			return &r
		}
		if !validType(typ) {
			r := invalidCDB(2, 3)
			return &r
		}
		s.active, s.holder, s.typ = true, id, typ
		return nil
	}
	switch {
	case !s.active:
		if saKey == 0 {
			return invalidParam(8, -1)
		}
		if removeKey(saKey, false) == 0 {
			return conflict()
		}
	case s.allRegs():
		if saKey == 0 {
			removeKey(0, true)
			if r := newReservation(); r != nil {
				return *r
			}
		} else if removeKey(saKey, false) == 0 {
			return conflict()
		}
	default:
		holderKey := uint64(0)
		if r := s.regs[s.holder]; r != nil {
			holderKey = r.key
		}
		if saKey == holderKey {
			removeKey(saKey, false)
			if r := newReservation(); r != nil {
				return *r
			}
		} else {
			if saKey == 0 {
				return invalidParam(8, -1)
			}
			if removeKey(saKey, false) == 0 {
				return conflict()
			}
		}
	}
	s.gen++
	return good(nil)
}
