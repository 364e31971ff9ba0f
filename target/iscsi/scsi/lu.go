// Package scsi is the SCSI device server of gosheep's iSCSI target: one
// logical unit (SBC-3 direct-access block device) over a volume.Device,
// with SPC-4 inquiry/mode/sense handling, unit attentions per I_T nexus,
// SPC-2 RESERVE/RELEASE and SPC-3 persistent reservations.
//
// Commands run in two steps so that the transport can bound and size the
// Data-Out transfer before receiving it: Prepare parses and validates the
// CDB (and reports unit attentions and reservation conflicts), Execute runs
// it with the data. Both are safe for concurrent use; any number of
// commands may execute at once.
package scsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/volume"
)

// Defaults for Config fields left zero.
const (
	DefaultBlockSize   = 512
	DefaultMaxTransfer = 32 << 20
)

// Config describes a logical unit.
type Config struct {
	Device   volume.Device
	ReadOnly bool
	// VID is the VDI id: the NAA identifier and serial number derive from
	// it alone, so every node exporting the same VDI reports the same
	// identity and multipath sees one disk.
	VID       uint32
	Name      string // VDI name, for the product/T10 designators
	TargetIQN string // for the SCSI name string designator
	BlockSize uint32 // logical block size (512 or 4096); default 512
	// PhysicalBlockSize is reported by READ CAPACITY(16) so initiators
	// align I/O (gosheep's store checksums 4 KiB blocks); default 4096.
	PhysicalBlockSize uint32
	// MaxTransfer caps one command's data (bytes, a multiple of BlockSize).
	MaxTransfer uint32
	// Reservations, when set, orders reservation changes with the other
	// target ports exporting the VDI; nil keeps them in this LU alone.
	Reservations Reservations
	// Abort aborts the commands in flight of an I_T nexus of this port
	// and returns once they have ended (PREEMPT AND ABORT); nil: none.
	Abort func(nexus string)
}

// Nexus identifies one I_T nexus (initiator port to target port). The
// transport creates one per session and passes it to Attach, Prepare and
// Detach. ID must be unique per nexus across every target port that
// exports the VDI (it names the port) and stable across reconnects of the
// same initiator port (PR registrations are keyed by it).
type Nexus struct {
	ID            string
	InitiatorName string
	ISID          uint64
	RelPort       uint16
}

// RelativePort is the relative target port identifier of n's target
// port: RelPort, or 1 when unset (0 is reserved, SPC-4).
func (n *Nexus) RelativePort() uint16 {
	if n == nil || n.RelPort == 0 {
		return 1
	}
	return n.RelPort
}

// InitiatorPort is the iSCSI initiator port name (RFC 7143 §4.2.7.1).
func (n *Nexus) InitiatorPort() string {
	return fmt.Sprintf("%s,i,0x%012x", n.InitiatorName, n.ISID)
}

// LU is a logical unit.
type LU struct {
	cfg     Config
	dev     volume.Device
	bs      uint64
	maxXfer uint32
	ops     map[uint16]*opDesc
	hasSA   [256]bool
	order   []*opDesc // for REPORT SUPPORTED OPERATION CODES
	locks   rangeLock

	mu      sync.Mutex
	nexuses map[string]*nexusState
	swp     bool        // software write protect (control mode page)
	rs      *resv.State // reservations; replaced whole, never changed in place

	aborts pending // PREEMPT AND ABORT aborts still running
}

type nexusState struct {
	n       *Nexus
	ua      []ascq
	prevent bool
}

// New returns a logical unit.
func New(cfg Config) *LU {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.MaxTransfer == 0 {
		cfg.MaxTransfer = DefaultMaxTransfer
	}
	if cfg.PhysicalBlockSize < cfg.BlockSize || cfg.PhysicalBlockSize&(cfg.PhysicalBlockSize-1) != 0 {
		cfg.PhysicalBlockSize = max(4096, cfg.BlockSize)
	}
	cfg.MaxTransfer -= cfg.MaxTransfer % cfg.BlockSize
	lu := &LU{
		cfg:     cfg,
		dev:     cfg.Device,
		bs:      uint64(cfg.BlockSize),
		maxXfer: cfg.MaxTransfer,
		nexuses: map[string]*nexusState{},
		rs:      &resv.State{},
	}
	lu.buildOps()
	return lu
}

// VID is the VDI id the LU was configured with.
func (lu *LU) VID() uint32 { return lu.cfg.VID }

// BlockSize is the logical block size in bytes.
func (lu *LU) BlockSize() uint32 { return uint32(lu.bs) }

// MaxTransfer is the largest data transfer of one command, in bytes.
func (lu *LU) MaxTransfer() uint32 { return lu.maxXfer }

// blocks is the current capacity in logical blocks.
func (lu *LU) blocks() uint64 { return lu.dev.Size() / lu.bs }

// Attach registers a new I_T nexus; its first command reports POWER ON,
// RESET, OR BUS DEVICE RESET OCCURRED.
func (lu *LU) Attach(n *Nexus) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	lu.nexuses[n.ID] = &nexusState{n: n, ua: []ascq{ascPowerOnReset}}
}

// Detach forgets an I_T nexus (session gone): its SPC-2 reservation and
// PREVENT MEDIUM REMOVAL state go with it; PR registrations persist.
func (lu *LU) Detach(ctx context.Context, n *Nexus) error {
	lu.mu.Lock()
	delete(lu.nexuses, n.ID)
	held := lu.rs.Reserve6 == n.ID
	lu.mu.Unlock()
	if !held {
		return nil
	}
	_, err := lu.change(ctx, resv.Op{Kind: resv.OpNexusLost, Nexus: n.ID})
	return err
}

// Resized establishes CAPACITY DATA HAS CHANGED on every I_T nexus.
func (lu *LU) Resized() {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for _, ns := range lu.nexuses {
		ns.addUA(ascCapacityChanged)
	}
}

// Reset performs a LOGICAL UNIT RESET: SPC-2 reservations and prevent
// state are cleared and every I_T nexus, the requester's included and
// those of other target ports, gets BUS DEVICE RESET FUNCTION OCCURRED
// (SAM-5 §6.3.3).
func (lu *LU) Reset(ctx context.Context) error {
	lu.mu.Lock()
	for _, ns := range lu.nexuses {
		ns.prevent = false
	}
	lu.mu.Unlock()
	_, err := lu.change(ctx, resv.Op{Kind: resv.OpReset})
	return err
}

func (ns *nexusState) addUA(a ascq) {
	for _, x := range ns.ua {
		if x == a {
			return
		}
	}
	if len(ns.ua) < 16 {
		ns.ua = append(ns.ua, a)
	}
}

// uaOthers queues a unit attention on every nexus but except (under lu.mu).
func (lu *LU) uaOthers(except string, a ascq, only func(id string) bool) {
	for id, ns := range lu.nexuses {
		if id != except && (only == nil || only(id)) {
			ns.addUA(a)
		}
	}
}

// Op classes for reservation checks.
const (
	classAllowed = iota // never conflicts (INQUIRY, REPORT LUNS, ...)
	classRead           // reads medium or state: conflicts under exclusive access
	classWrite          // modifies medium or state
	classPR             // PERSISTENT RESERVE IN/OUT: own rules
	classReserve        // RESERVE/RELEASE: own rules
)

type opDesc struct {
	name   string
	op     byte
	sa     int // -1: none
	cdbLen int
	usage  []byte // CDB usage data for REPORT SUPPORTED OPERATION CODES
	class  int
	noUA   bool // not affected by unit attentions
	prep   func(c *Cmd) *Result
	exec   func(ctx context.Context, c *Cmd, out []byte) Result
}

// Cmd is a prepared command.
type Cmd struct {
	lu    *LU
	desc  *opDesc
	nexus *Nexus
	CDB   []byte
	// OutLen is the Data-Out length the CDB asks for; OutExact says the
	// transport's expected length must equal it (bulk data: writes,
	// COMPARE AND WRITE, ...), otherwise up to OutLen is used (parameter
	// lists).
	OutLen   uint32
	OutExact bool
	// truncatable: a plain write may be cut to whole blocks of a shorter
	// expected transfer length (FCP-4 §9.4.2 a).
	truncatable bool
	// DataIn, when set, supplies the buffer a read returns its data in
	// (Result.Data); the transport recycles it once the data is sent.
	// Its contents are arbitrary: the read overwrites all of it.
	DataIn func(n int) []byte
	// Lend, when set, lets a large read return its data as Result.Lent, a
	// verified range of the store's file that the transport sends with
	// sendfile and then releases, when the device can lend it.
	Lend bool
	// parsed by prep for block commands
	lba uint64
	n   uint32
}

// Name is the command's name, for metrics ("READ(10)", ...).
func (c *Cmd) Name() string { return c.desc.name }

// IsWrite reports whether the command changes the medium, for metrics.
func (c *Cmd) IsWrite() bool { return c.desc.class == classWrite }

// Prepare validates cdb for nexus n. It returns either a command to
// Execute or the final result (unit attention, conflict, bad CDB...).
func (lu *LU) Prepare(n *Nexus, cdb []byte) (*Cmd, *Result) {
	if len(cdb) < 6 {
		r := invalidCDB(0, -1)
		return nil, &r
	}
	op := cdb[0]
	var d *opDesc
	if lu.hasSA[op] {
		if len(cdb) < 2 {
			r := invalidCDB(1, 4)
			return nil, &r
		}
		d = lu.ops[uint16(op)<<8|uint16(cdb[1]&0x1f)]
		if d == nil {
			r := invalidCDB(1, 4)
			return nil, &r
		}
	} else {
		d = lu.ops[uint16(op)<<8]
		if d == nil {
			r := check(KeyIllegalRequest, ascInvalidOpcode)
			return nil, &r
		}
	}
	if len(cdb) < d.cdbLen {
		r := invalidCDB(0, -1)
		return nil, &r
	}
	c := &Cmd{lu: lu, desc: d, nexus: n, CDB: cdb[:d.cdbLen]}
	if r := lu.admit(c); r != nil {
		return nil, r
	}
	if d.prep != nil {
		if r := d.prep(c); r != nil {
			return nil, r
		}
	}
	return c, nil
}

// admit reports a pending unit attention or a reservation conflict.
func (lu *LU) admit(c *Cmd) *Result {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	ns := lu.nexuses[c.nexus.ID]
	if ns == nil {
		// Commands from a nexus that was not attached (tests, races
		// with teardown): treat as attached without a pending UA.
		ns = &nexusState{n: c.nexus}
		lu.nexuses[c.nexus.ID] = ns
	}
	if !c.desc.noUA && len(ns.ua) > 0 {
		a := ns.ua[0]
		ns.ua = ns.ua[1:]
		r := check(KeyUnitAttention, a)
		return &r
	}
	if lu.rs.Reserve6 != "" && lu.rs.Reserve6 != c.nexus.ID {
		switch c.desc.class {
		case classAllowed, classReserve:
		default:
			r := conflict()
			return &r
		}
	}
	if c.desc.class == classRead || c.desc.class == classWrite {
		if lu.rs.Conflicts(c.nexus.ID, c.desc.class == classWrite) {
			r := conflict()
			return &r
		}
	}
	return nil
}

// Execute runs a prepared command with its Data-Out (len(out) ≤ OutLen).
func (c *Cmd) Execute(ctx context.Context, out []byte) Result {
	if uint32(len(out)) > c.OutLen {
		out = out[:c.OutLen]
	}
	return c.desc.exec(ctx, c, out)
}

// cdb field helpers

func be16(b []byte) uint32 { return uint32(binary.BigEndian.Uint16(b)) }
func be24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// allocLen returns min(len(data), alloc): what the device server transfers.
func truncate(data []byte, alloc uint32) []byte {
	if uint32(len(data)) > alloc {
		return data[:alloc]
	}
	return data
}

// DataInLen is the size of the buffer the command reads into (reads,
// verifies, COMPARE AND WRITE, ORWRITE), for the transport's memory
// budget. It is bounded by the maximum transfer length.
func (c *Cmd) DataInLen() uint32 {
	switch c.desc.op {
	case opRead6, opRead10, opRead12, opRead16, opVerify10, opVerify12, opVerify16,
		opCompareWrite, opOrWrite16:
		return uint32(min(uint64(c.n)*c.lu.bs, uint64(c.lu.maxXfer)))
	}
	return 0
}

// OpName names the command of a CDB, for metrics ("OPCODE 0xNN" when
// unsupported).
func (lu *LU) OpName(cdb []byte) string {
	if len(cdb) == 0 {
		return "EMPTY"
	}
	key := uint16(cdb[0]) << 8
	if lu.hasSA[cdb[0]] && len(cdb) > 1 {
		key |= uint16(cdb[1] & 0x1f)
	}
	if d := lu.ops[key]; d != nil {
		return d.name
	}
	return fmt.Sprintf("OPCODE 0x%02X", cdb[0])
}

// TruncateOut shortens a plain write to the first n bytes when n is a
// whole number of blocks; it reports whether it did.
func (c *Cmd) TruncateOut(n uint32) bool {
	if !c.truncatable || n%uint32(c.lu.bs) != 0 || n > c.OutLen {
		return false
	}
	c.n = n / uint32(c.lu.bs)
	c.OutLen = n
	return true
}

// OutMismatch is the result for a transport length that disagrees with
// the CDB's data-out length.
func (c *Cmd) OutMismatch() Result {
	if c.desc.op == opCompareWrite {
		return invalidCDB(13, -1)
	}
	return InvalidFieldInIU()
}
