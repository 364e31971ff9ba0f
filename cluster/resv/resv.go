// Package resv is the state machine of SCSI reservations on one logical
// unit: SPC-3 persistent reservations and SPC-2 RESERVE/RELEASE. Every
// node exports every VDI, so a VDI's reservations are cluster metadata:
// the Raft FSM applies each change in the one agreed order, and every
// node's target enforces the same state and raises the same unit
// attentions on its own I_T nexuses.
//
// Apply is deterministic (no clocks, no map iteration order in its
// effects): every FSM that applies the same operations to the same state
// reaches the same state and outcome. Nexus IDs are cluster-unique (they
// name the target port's node).
package resv

import (
	"slices"
	"sort"
)

// Persistent reservation types (SPC-4 Table 222).
const (
	WriteExclusive         byte = 0x1
	ExclusiveAccess        byte = 0x3
	WriteExclusiveRegOnly  byte = 0x5
	ExclusiveAccessRegOnly byte = 0x6
	WriteExclusiveAllReg   byte = 0x7
	ExclusiveAccessAllReg  byte = 0x8
)

// MaxRegistrations bounds the registrations of one logical unit.
const MaxRegistrations = 256

// Reg is one registration: an I_T nexus and its reservation key.
type Reg struct {
	Nexus string `json:"nexus"`
	Key   uint64 `json:"key"`
	Port  string `json:"port"` // initiator port name, for READ FULL STATUS
	Rel   uint16 `json:"rel"`  // relative target port identifier
}

// UA kinds: the unit attention an operation raises on other nexuses.
const (
	UAReservationsReleased   uint8 = 1 // RESERVATIONS RELEASED
	UARegistrationsPreempted uint8 = 2 // REGISTRATIONS PREEMPTED
	UAReservationsPreempted  uint8 = 3 // RESERVATIONS PREEMPTED
	UAReset                  uint8 = 4 // BUS DEVICE RESET FUNCTION OCCURRED
)

// UA is a unit attention for one nexus, or for every nexus when All.
// Abort says the nexus's commands in flight are to be aborted too
// (PREEMPT AND ABORT).
type UA struct {
	Nexus string `json:"nexus,omitempty"`
	All   bool   `json:"all,omitempty"`
	Kind  uint8  `json:"kind"`
	Abort bool   `json:"abort,omitempty"`
}

// State is a logical unit's reservation state.
type State struct {
	// Seq counts applied operations, so a node installs each state once
	// and raises its UAs once, whichever path delivers it first.
	Seq    uint64 `json:"seq"`
	Gen    uint32 `json:"gen"` // PRgeneration
	Regs   []Reg  `json:"regs,omitempty"`
	Active bool   `json:"active,omitempty"`
	Holder string `json:"holder,omitempty"` // nexus; unused by all-registrants types
	Type   byte   `json:"type,omitempty"`
	// Reserve6 is the nexus holding an SPC-2 reservation, "" if none.
	Reserve6 string `json:"reserve6,omitempty"`
	// UAs are the unit attentions raised by the operation that made this
	// state (Seq).
	UAs []UA `json:"uas,omitempty"`
}

// Clone deep-copies s (nil stays nil).
func (s *State) Clone() *State {
	if s == nil {
		return nil
	}
	c := *s
	c.Regs = slices.Clone(s.Regs)
	c.UAs = slices.Clone(s.UAs)
	return &c
}

// Reg returns nexus's registration, or nil.
func (s *State) Reg(nexus string) *Reg {
	i, ok := s.find(nexus)
	if !ok {
		return nil
	}
	return &s.Regs[i]
}

func (s *State) find(nexus string) (int, bool) {
	return sort.Find(len(s.Regs), func(i int) int {
		switch {
		case nexus < s.Regs[i].Nexus:
			return -1
		case nexus > s.Regs[i].Nexus:
			return 1
		}
		return 0
	})
}

// AllRegistrants reports an all-registrants reservation type.
func (s *State) AllRegistrants() bool {
	return s.Type == WriteExclusiveAllReg || s.Type == ExclusiveAccessAllReg
}

// IsHolder reports whether nexus holds the persistent reservation.
func (s *State) IsHolder(nexus string) bool {
	if !s.Active {
		return false
	}
	if s.AllRegistrants() {
		return s.Reg(nexus) != nil
	}
	return s.Holder == nexus
}

// Conflicts reports whether a read (write false) or write command from
// nexus conflicts with the persistent reservation (SPC-4 Table 68,
// simplified to read and write classes).
func (s *State) Conflicts(nexus string, write bool) bool {
	if !s.Active || s.IsHolder(nexus) {
		return false
	}
	registered := s.Reg(nexus) != nil
	switch s.Type {
	case WriteExclusive:
		return write
	case ExclusiveAccess:
		return true
	case WriteExclusiveRegOnly, WriteExclusiveAllReg:
		return !registered && write
	case ExclusiveAccessRegOnly, ExclusiveAccessAllReg:
		return !registered
	}
	return false
}

// ValidType reports a persistent reservation type we implement.
func ValidType(t byte) bool {
	switch t {
	case WriteExclusive, ExclusiveAccess, WriteExclusiveRegOnly, ExclusiveAccessRegOnly,
		WriteExclusiveAllReg, ExclusiveAccessAllReg:
		return true
	}
	return false
}

// Operation kinds.
const (
	OpPROut     = "prout"      // PERSISTENT RESERVE OUT (parameters already validated)
	OpReserve6  = "reserve6"   // SPC-2 RESERVE
	OpRelease6  = "release6"   // SPC-2 RELEASE
	OpNexusLost = "nexus-lost" // the nexus's session ended: its SPC-2 reservation goes
	OpReset     = "reset"      // LOGICAL UNIT RESET (or target reset)
	// OpAdminClear is an administrator's override (dog vdi reservation
	// clear): every registration and reservation, persistent or SPC-2,
	// goes, as when a host that held one is gone for good.
	OpAdminClear = "admin-clear"
)

// Op is one reservation change.
type Op struct {
	Kind  string `json:"kind"`
	Nexus string `json:"nexus"`
	Port  string `json:"port,omitempty"` // initiator port name
	Rel   uint16 `json:"rel,omitempty"`
	// PERSISTENT RESERVE OUT fields.
	SA    byte   `json:"sa,omitempty"`
	Scope byte   `json:"scope,omitempty"`
	Type  byte   `json:"type,omitempty"`
	Key   uint64 `json:"key,omitempty"`
	SAKey uint64 `json:"sa_key,omitempty"`
}

// Status is how an operation ended.
type Status uint8

// Statuses.
const (
	OK             Status = iota
	Conflict              // RESERVATION CONFLICT
	InvalidCDB            // INVALID FIELD IN CDB at Field/Bit
	InvalidParam          // INVALID FIELD IN PARAMETER LIST at Field/Bit
	NoResources           // INSUFFICIENT REGISTRATION RESOURCES
	InvalidRelease        // INVALID RELEASE OF PERSISTENT RESERVATION
	Unsupported           // unknown operation or service action
)

// Outcome is the result of one operation for its requester.
type Outcome struct {
	Status Status `json:"status"`
	Field  uint16 `json:"field,omitempty"`
	Bit    int8   `json:"bit,omitempty"` // -1: no bit pointer
}

func bad(st Status, field uint16, bit int8) Outcome {
	return Outcome{Status: st, Field: field, Bit: bit}
}

// Apply applies op to s (which it changes) and returns the outcome for
// the requester. s.Seq advances and s.UAs holds the unit attentions this
// operation raises, even when it failed (none then).
func Apply(s *State, op Op) Outcome {
	s.Seq++
	s.UAs = nil
	switch op.Kind {
	case OpPROut:
		return s.prOut(op)
	case OpReserve6:
		if s.Active || len(s.Regs) > 0 {
			return Outcome{Status: Conflict}
		}
		if s.Reserve6 != "" && s.Reserve6 != op.Nexus {
			return Outcome{Status: Conflict}
		}
		s.Reserve6 = op.Nexus
		return Outcome{}
	case OpRelease6:
		if s.Active {
			return Outcome{Status: Conflict}
		}
		if s.Reserve6 == op.Nexus {
			s.Reserve6 = ""
		}
		return Outcome{}
	case OpNexusLost:
		if s.Reserve6 == op.Nexus {
			s.Reserve6 = ""
		}
		return Outcome{}
	case OpReset:
		// SPC-2 reservations end with a reset; persistent ones do not.
		s.Reserve6 = ""
		s.UAs = []UA{{All: true, Kind: UAReset}}
		return Outcome{}
	case OpAdminClear:
		// As a CLEAR by nobody: every registrant hears of it.
		for _, r := range s.Regs {
			s.ua(r.Nexus, UAReservationsPreempted)
		}
		if len(s.Regs) > 0 || s.Active {
			s.Gen++
		}
		s.Regs = nil
		s.Active, s.Holder, s.Type = false, "", 0
		s.Reserve6 = ""
		return Outcome{}
	}
	return Outcome{Status: Unsupported}
}

func (s *State) ua(nexus string, kind uint8) *UA {
	for i := range s.UAs {
		if u := &s.UAs[i]; u.Nexus == nexus && u.Kind == kind {
			return u
		}
	}
	s.UAs = append(s.UAs, UA{Nexus: nexus, Kind: kind})
	return &s.UAs[len(s.UAs)-1]
}

func (s *State) prOut(op Op) Outcome {
	id := op.Nexus
	reg := s.Reg(id)
	switch op.SA {
	case 0, 6: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		if reg == nil {
			if op.SA == 0 && op.Key != 0 {
				return Outcome{Status: Conflict}
			}
			if op.SAKey == 0 {
				return Outcome{}
			}
			if len(s.Regs) >= MaxRegistrations {
				return Outcome{Status: NoResources}
			}
			i, _ := s.find(id)
			s.Regs = slices.Insert(s.Regs, i, Reg{Nexus: id, Key: op.SAKey, Port: op.Port, Rel: max(op.Rel, 1)})
			s.Gen++
			return Outcome{}
		}
		if op.SA == 0 && op.Key != reg.Key {
			return Outcome{Status: Conflict}
		}
		if op.SAKey == 0 {
			s.unregister(id)
		} else {
			reg.Key = op.SAKey
		}
		s.Gen++
		return Outcome{}
	}
	if reg == nil || reg.Key != op.Key {
		return Outcome{Status: Conflict}
	}
	switch op.SA {
	case 1: // RESERVE
		if op.Scope != 0 {
			return bad(InvalidCDB, 2, 7)
		}
		if !ValidType(op.Type) {
			return bad(InvalidCDB, 2, 3)
		}
		if s.Active {
			if s.IsHolder(id) && s.Type == op.Type {
				return Outcome{}
			}
			return Outcome{Status: Conflict}
		}
		s.Active, s.Holder, s.Type = true, id, op.Type
		return Outcome{}
	case 2: // RELEASE
		if !s.Active || !s.IsHolder(id) {
			return Outcome{}
		}
		if s.Type != op.Type || op.Scope != 0 {
			return Outcome{Status: InvalidRelease}
		}
		s.release(id)
		return Outcome{}
	case 3: // CLEAR
		for _, r := range s.Regs {
			if r.Nexus != id {
				s.ua(r.Nexus, UAReservationsPreempted)
			}
		}
		s.Regs = nil
		s.Active, s.Holder, s.Type = false, "", 0
		s.Gen++
		return Outcome{}
	case 4, 5: // PREEMPT, PREEMPT AND ABORT
		return s.preempt(id, op.SAKey, op.Scope, op.Type, op.SA == 5)
	}
	return bad(InvalidCDB, 1, 4)
}

// release drops the reservation; registrants other than id get
// RESERVATIONS RELEASED for the registrants-only and all-registrants types.
func (s *State) release(id string) {
	switch s.Type {
	case WriteExclusiveRegOnly, ExclusiveAccessRegOnly, WriteExclusiveAllReg, ExclusiveAccessAllReg:
		for _, r := range s.Regs {
			if r.Nexus != id {
				s.ua(r.Nexus, UAReservationsReleased)
			}
		}
	}
	s.Active, s.Holder, s.Type = false, "", 0
}

// unregister removes id's registration, releasing the reservation when it
// goes with it.
func (s *State) unregister(id string) {
	if i, ok := s.find(id); ok {
		s.Regs = slices.Delete(s.Regs, i, i+1)
	}
	if !s.Active {
		return
	}
	if s.AllRegistrants() {
		if len(s.Regs) == 0 {
			s.Active, s.Type = false, 0
		}
		return
	}
	if s.Holder == id {
		s.release(id)
	}
}

func (s *State) preempt(id string, saKey uint64, scope, typ byte, abort bool) Outcome {
	removeKey := func(k uint64, all bool) int {
		n := 0
		kept := s.Regs[:0]
		for _, r := range s.Regs {
			if r.Nexus == id || (!all && r.Key != k) {
				kept = append(kept, r)
				continue
			}
			s.ua(r.Nexus, UARegistrationsPreempted).Abort = abort
			n++
		}
		clear(s.Regs[len(kept):])
		s.Regs = kept
		return n
	}
	newReservation := func() *Outcome {
		if scope != 0 {
			o := bad(InvalidCDB, 2, 7)
			return &o
		}
		if !ValidType(typ) {
			o := bad(InvalidCDB, 2, 3)
			return &o
		}
		s.Active, s.Holder, s.Type = true, id, typ
		return nil
	}
	switch {
	case !s.Active:
		if saKey == 0 {
			return bad(InvalidParam, 8, -1)
		}
		if removeKey(saKey, false) == 0 {
			return Outcome{Status: Conflict}
		}
	case s.AllRegistrants():
		if saKey == 0 {
			removeKey(0, true)
			if o := newReservation(); o != nil {
				return *o
			}
		} else if removeKey(saKey, false) == 0 {
			return Outcome{Status: Conflict}
		}
	default:
		holderKey := uint64(0)
		if r := s.Reg(s.Holder); r != nil {
			holderKey = r.Key
		}
		if saKey == holderKey {
			removeKey(saKey, false)
			if o := newReservation(); o != nil {
				return *o
			}
		} else {
			if saKey == 0 {
				return bad(InvalidParam, 8, -1)
			}
			if removeKey(saKey, false) == 0 {
				return Outcome{Status: Conflict}
			}
		}
	}
	s.Gen++
	return Outcome{}
}
