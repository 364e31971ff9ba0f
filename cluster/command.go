package cluster

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
)

// Command kinds.
const (
	CmdFormat        = "format"
	CmdEpoch         = "epoch"
	CmdCreateVDI     = "create_vdi"
	CmdDeleteVDI     = "delete_vdi"
	CmdRollback      = "rollback"
	CmdResize        = "resize"
	CmdLock          = "lock"
	CmdUnlock        = "unlock"
	CmdSetAttr       = "set_attr"
	CmdSetCHAP       = "set_chap"
	CmdShutdown      = "shutdown"
	CmdRecovery      = "recovery"
	CmdThrottle      = "throttle"
	CmdReclaimed     = "reclaimed"
	CmdRecoveryDone  = "recovery_done"
	CmdSetRedundancy = "set_redundancy"
	// CmdResv applies a SCSI reservation change (Command.Resv) to the
	// reservations of VDI VID (its root VID).
	CmdResv = "resv"
	// CmdMetaVersion raises the cluster's metadata version (never lowers
	// it): the leader proposes it once every live member runs it.
	CmdMetaVersion = "meta_version"
	// CmdSync changes nothing: a proposer that sees it applied locally has
	// applied everything committed before it (a linearisable read point).
	CmdSync = "sync"
	// CmdCheckWorking changes nothing either: it fails with ResReadonly
	// unless VID is a live working VDI at its place in the log. Its
	// result is the leader's answer, so a proposer need not wait to apply
	// it (Node.Decide): a follower learns of a commit only with the next
	// append, up to two CommitTimeouts later. Builds before it answer
	// ResInvalidParms (unknown command), and change nothing either.
	CmdCheckWorking = "check_working"
)

// changesNothing reports whether applying op leaves the state as it was,
// whatever its fields: the FSM skips its watchers for it.
func changesNothing(op string) bool { return op == CmdSync || op == CmdCheckWorking }

// Command is one replicated metadata change. Only the fields its Op uses are
// set. Everything Apply needs is inside (times too), so Apply is deterministic.
type Command struct {
	Op   string `json:"op"`
	Time int64  `json:"time"` // unix nanoseconds at the proposer

	Format  *Format  `json:"format,omitempty"`
	Members []Member `json:"members,omitempty"`

	VID            uint32   `json:"vid,omitempty"`
	Name           string   `json:"name,omitempty"`
	Tag            string   `json:"tag,omitempty"`
	SnapID         uint32   `json:"snap_id,omitempty"`
	Size           uint64   `json:"size,omitempty"`
	Copies         uint8    `json:"copies,omitempty"`
	CopyPolicy     uint8    `json:"copy_policy,omitempty"`
	BlockSizeShift uint8    `json:"block_size_shift,omitempty"`
	BaseVID        uint32   `json:"base_vid,omitempty"`
	Snapshot       bool     `json:"snapshot,omitempty"`
	Owner          string   `json:"owner,omitempty"`
	LockType       uint32   `json:"lock_type,omitempty"`
	Key            string   `json:"key,omitempty"`
	Value          []byte   `json:"value,omitempty"`
	Delete         bool     `json:"delete,omitempty"`
	Excl           bool     `json:"excl,omitempty"`
	CHAP           *CHAP    `json:"chap,omitempty"`
	Enable         bool     `json:"enable,omitempty"`
	Throttle       Throttle `json:"throttle,omitempty"`
	Epoch          uint32   `json:"epoch,omitempty"`
	NodeID         string   `json:"node_id,omitempty"`
	Resv           *resv.Op `json:"resv,omitempty"`
	// MetaVersion: for CmdMetaVersion, and for CmdFormat the version the
	// cluster starts at (the lowest its live members run).
	MetaVersion uint32 `json:"meta_version,omitempty"`
}

// Result is what applying a Command produced.
type Result struct {
	Code    proto.Result `json:"code"`
	Message string       `json:"message,omitempty"`
	VID     uint32       `json:"vid,omitempty"`
	Epoch   uint32       `json:"epoch,omitempty"`
	Value   []byte       `json:"value,omitempty"`
	Index   uint64       `json:"index,omitempty"` // Raft index the command committed at
	// Changed lists VDIs whose inode header must be rewritten to match the table.
	Changed []uint32 `json:"changed,omitempty"`
	// Resv is the reservation state a CmdResv produced, Outcome the
	// requester's outcome.
	Resv    *resv.State   `json:"resv,omitempty"`
	Outcome *resv.Outcome `json:"outcome,omitempty"`
}

// Err returns the result as an error (nil on success).
func (r *Result) Err() error {
	if r.Code == proto.ResSuccess {
		return nil
	}
	if r.Message != "" {
		return fmt.Errorf("%s: %w", r.Message, r.Code)
	}
	return r.Code
}

func fail(code proto.Result, format string, a ...any) *Result {
	return &Result{Code: code, Message: fmt.Sprintf(format, a...)}
}

// ctime encodes t (unix ns) as sheepdog's sec<<32|nsec.
func ctime(t int64) uint64 {
	return uint64(t/1e9)<<32 | uint64(t%1e9)
}

// Apply executes c against the state. It never panics on bad commands: they
// come back as a Result with an error code.
func (s *State) Apply(c *Command) *Result {
	if c == nil {
		return fail(proto.ResInvalidParms, "nil command")
	}
	if c.Op != CmdFormat && c.Op != CmdEpoch && s.Format == nil {
		return fail(proto.ResWaitForFormat, "cluster is not formatted")
	}
	switch c.Op {
	case CmdFormat:
		return s.applyFormat(c)
	case CmdEpoch:
		return s.applyEpoch(c)
	case CmdCreateVDI:
		return s.applyCreate(c)
	case CmdDeleteVDI:
		return s.applyDelete(c)
	case CmdRollback:
		return s.applyRollback(c)
	case CmdResize:
		return s.applyResize(c)
	case CmdLock:
		return s.applyLock(c)
	case CmdUnlock:
		return s.applyUnlock(c)
	case CmdSetAttr:
		return s.applySetAttr(c)
	case CmdSetCHAP:
		v, ok := s.VDIs[c.VID]
		if !ok || v.Deleted {
			return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
		}
		v.CHAP = c.CHAP
		return &Result{VID: v.VID}
	case CmdSync:
		return &Result{}
	case CmdCheckWorking:
		v, ok := s.VDIs[c.VID]
		if !ok || v.Deleted || v.IsSnapshot() {
			return fail(proto.ResReadonly, "vdi %#x is not a working vdi", c.VID)
		}
		return &Result{VID: v.VID}
	case CmdShutdown:
		s.Status = StatusShutdown
		return &Result{}
	case CmdRecovery:
		s.RecoveryDisabled = !c.Enable
		return &Result{}
	case CmdThrottle:
		s.Throttle = c.Throttle
		return &Result{}
	case CmdReclaimed:
		v, ok := s.VDIs[c.VID]
		if !ok || !v.Deleted {
			return fail(proto.ResInvalidParms, "vdi %#x is not deleted", c.VID)
		}
		v.Reclaimed = true
		return &Result{VID: v.VID}
	case CmdRecoveryDone:
		if s.Recovered == nil {
			s.Recovered = map[uint32][]string{}
		}
		if !slices.Contains(s.Recovered[c.Epoch], c.NodeID) {
			s.Recovered[c.Epoch] = append(s.Recovered[c.Epoch], c.NodeID)
			sort.Strings(s.Recovered[c.Epoch])
		}
		// Forget epochs older than the current one: nobody waits on them.
		for e := range s.Recovered {
			if e < s.Epoch() {
				delete(s.Recovered, e)
			}
		}
		return &Result{Epoch: c.Epoch}
	case CmdMetaVersion:
		s.MetaVersion = max(s.MetaVersion, c.MetaVersion)
		return &Result{}
	case CmdResv:
		if s.MetaVersion < 2 {
			return fail(proto.ResNoSupport, "SCSI reservations need every node at metadata version 2 (the cluster is at %d): finish upgrading every node", s.MetaVersion)
		}
		if c.Resv == nil || c.VID == 0 {
			return fail(proto.ResInvalidParms, "reservation change without an operation or vdi")
		}
		if s.Resv == nil {
			s.Resv = map[uint32]*resv.State{}
		}
		st := s.Resv[c.VID]
		if st == nil {
			st = &resv.State{}
			s.Resv[c.VID] = st
		}
		o := resv.Apply(st, *c.Resv)
		return &Result{VID: c.VID, Resv: st.Clone(), Outcome: &o}
	case CmdSetRedundancy:
		v, ok := s.VDIs[c.VID]
		if !ok || v.Deleted {
			return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
		}
		if _, err := proto.FromPolicy(c.Copies, c.CopyPolicy); err != nil {
			return fail(proto.ResInvalidParms, "%v", err)
		}
		if c.CopyPolicy != 0 || v.CopyPolicy != 0 {
			return fail(proto.ResNoSupport, "only replicated vdis can change copies")
		}
		v.Copies = c.Copies
		return &Result{VID: v.VID, Changed: []uint32{v.VID}}
	}
	return fail(proto.ResInvalidParms, "unknown command %q", c.Op)
}

func (s *State) applyFormat(c *Command) *Result {
	f := c.Format
	if f == nil {
		return fail(proto.ResInvalidParms, "format without parameters")
	}
	if _, err := proto.FromPolicy(f.Copies, f.CopyPolicy); err != nil {
		return fail(proto.ResInvalidParms, "%v", err)
	}
	if f.BlockSizeShift < proto.MinBSS || f.BlockSizeShift > proto.MaxBSS {
		return fail(proto.ResInvalidParms, "block size shift %d out of range %d..%d", f.BlockSizeShift, proto.MinBSS, proto.MaxBSS)
	}
	if len(c.Members) == 0 {
		return fail(proto.ResInvalidParms, "format needs at least one member")
	}
	ff := *f
	if ff.Ctime == 0 {
		ff.Ctime = ctime(c.Time)
	}
	s.Format = &ff
	s.Status = StatusOK
	s.VDIs = map[uint32]*VDI{}
	s.Locks = map[uint32]*Lock{}
	s.Recovered = nil
	s.RecoveryDisabled = false
	s.Resv = nil
	s.MetaVersion = max(s.MetaVersion, c.MetaVersion)
	next := s.Epoch() + 1
	s.Epochs = []EpochLog{{Epoch: next, Time: c.Time, Members: sortedMembers(c.Members)}}
	return &Result{Epoch: next}
}

func sortedMembers(ms []Member) []Member {
	out := slices.Clone(ms)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SameMembers reports whether two member lists describe the same nodes.
func SameMembers(a, b []Member) bool {
	return slices.Equal(sortedMembers(a), sortedMembers(b))
}

func (s *State) applyEpoch(c *Command) *Result {
	if s.Format == nil {
		return fail(proto.ResWaitForFormat, "cluster is not formatted")
	}
	if len(c.Members) == 0 {
		return fail(proto.ResInvalidParms, "an epoch needs at least one member")
	}
	if cur := s.Current(); cur != nil && SameMembers(cur.Members, c.Members) {
		// The same members again: after a shutdown this is "everyone is back".
		if s.Status == StatusShutdown {
			s.Status = StatusOK
		}
		return &Result{Epoch: cur.Epoch}
	}
	next := s.Epoch() + 1
	s.Epochs = append(s.Epochs, EpochLog{Epoch: next, Time: c.Time, Members: sortedMembers(c.Members)})
	if s.Status == StatusShutdown {
		s.Status = StatusOK
	}
	return &Result{Epoch: next}
}

func (s *State) allocVID(name string) (uint32, bool) {
	used := func(v uint32) bool { _, ok := s.VDIs[v]; return ok }
	start := proto.NameToVID(name)
	for v := start; v <= proto.MaxVID; v++ {
		if !used(v) {
			return v, true
		}
	}
	for v := uint32(1); v < start; v++ {
		if !used(v) {
			return v, true
		}
	}
	return 0, false
}

func (s *State) applyCreate(c *Command) *Result {
	if c.Name == "" || len(c.Name) >= proto.NameLen {
		return fail(proto.ResInvalidParms, "vdi name must be 1..%d bytes", proto.NameLen-1)
	}
	if len(c.Tag) >= proto.TagLen {
		return fail(proto.ResInvalidParms, "snapshot tag must be under %d bytes", proto.TagLen)
	}
	f := s.Format
	switch {
	case c.Snapshot:
		// Snapshot: the working VDI (base) is frozen, a new working VDI takes its name.
		base, ok := s.VDIs[c.BaseVID]
		if !ok || base.Deleted {
			return fail(proto.ResNoBaseVDI, "no vdi %#x to snapshot", c.BaseVID)
		}
		if base.IsSnapshot() {
			return fail(proto.ResInvalidParms, "vdi %#x is already a snapshot", c.BaseVID)
		}
		if c.Name != base.Name {
			return fail(proto.ResInvalidParms, "snapshot name %q differs from vdi %q", c.Name, base.Name)
		}
		if c.Tag != "" {
			for _, v := range s.VDIs {
				if v.Name == base.Name && !v.Deleted && v.IsSnapshot() && v.Tag == c.Tag {
					return fail(proto.ResVDIExist, "vdi %q already has a snapshot tagged %q", base.Name, c.Tag)
				}
			}
		}
		vid, ok := s.allocVID(base.Name)
		if !ok {
			return fail(proto.ResFullVDI, "no free vdi id")
		}
		base.SnapCtime = ctime(c.Time)
		base.Tag = c.Tag
		nv := &VDI{
			VID: vid, Name: base.Name, SnapID: base.SnapID + 1, CreateTime: ctime(c.Time),
			ParentVID: base.VID, Size: base.Size, Copies: base.Copies, CopyPolicy: base.CopyPolicy,
			BlockSizeShift: base.BlockSizeShift, CHAP: base.CHAP,
		}
		if len(base.Attrs) > 0 {
			nv.Attrs = maps.Clone(base.Attrs)
		}
		s.VDIs[vid] = nv
		if l, ok := s.Locks[base.VID]; ok {
			delete(s.Locks, base.VID)
			l.VID = vid
			s.Locks[vid] = l
		}
		return &Result{VID: vid, Changed: []uint32{base.VID, vid}}
	default:
		if _, exists := s.Working(c.Name); exists {
			return fail(proto.ResVDIExist, "vdi %q already exists", c.Name)
		}
		nv := &VDI{Name: c.Name, SnapID: 1, CreateTime: ctime(c.Time), Size: c.Size}
		if c.BaseVID != 0 {
			// Clone of a snapshot.
			base, ok := s.VDIs[c.BaseVID]
			if !ok || base.Deleted {
				return fail(proto.ResNoBaseVDI, "no base vdi %#x", c.BaseVID)
			}
			if !base.IsSnapshot() {
				return fail(proto.ResInvalidParms, "clone source %q is not a snapshot", base.Name)
			}
			nv.ParentVID = base.VID
			nv.Copies, nv.CopyPolicy, nv.BlockSizeShift = base.Copies, base.CopyPolicy, base.BlockSizeShift
			if nv.Size == 0 {
				nv.Size = base.Size
			}
			if nv.Size < base.Size {
				return fail(proto.ResInvalidParms, "clone cannot be smaller than its base")
			}
		} else {
			nv.Copies, nv.CopyPolicy, nv.BlockSizeShift = c.Copies, c.CopyPolicy, c.BlockSizeShift
			if nv.Copies == 0 {
				nv.Copies, nv.CopyPolicy = f.Copies, f.CopyPolicy
			}
			if nv.BlockSizeShift == 0 {
				nv.BlockSizeShift = f.BlockSizeShift
			}
		}
		if _, err := proto.FromPolicy(nv.Copies, nv.CopyPolicy); err != nil {
			return fail(proto.ResInvalidParms, "%v", err)
		}
		if nv.BlockSizeShift < proto.MinBSS || nv.BlockSizeShift > proto.MaxBSS {
			return fail(proto.ResInvalidParms, "block size shift %d out of range %d..%d", nv.BlockSizeShift, proto.MinBSS, proto.MaxBSS)
		}
		if err := checkSize(nv.Size, nv.BlockSizeShift); err != nil {
			return fail(proto.ResInvalidParms, "%v", err)
		}
		vid, ok := s.allocVID(c.Name)
		if !ok {
			return fail(proto.ResFullVDI, "no free vdi id")
		}
		nv.VID = vid
		s.VDIs[vid] = nv
		return &Result{VID: vid, Changed: []uint32{vid}}
	}
}

// MaxVDISize is the largest VDI with a flat index of the given object size.
func MaxVDISize(bss uint8) uint64 { return uint64(proto.MaxDataObjs) << bss }

func checkSize(size uint64, bss uint8) error {
	if size == 0 {
		return fmt.Errorf("vdi size must be positive")
	}
	if size > MaxVDISize(bss) {
		return fmt.Errorf("vdi size %d exceeds the maximum %d for %d-byte objects", size, MaxVDISize(bss), uint64(1)<<bss)
	}
	return nil
}

func (s *State) applyDelete(c *Command) *Result {
	var v *VDI
	if c.VID != 0 {
		v = s.VDIs[c.VID]
		if v == nil || v.Deleted {
			return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
		}
	} else {
		var err error
		if v, err = s.Lookup(c.Name, c.Tag, c.SnapID); err != nil {
			return &Result{Code: proto.ResultOf(err), Message: err.Error()}
		}
	}
	if l, ok := s.Locks[v.VID]; ok && c.Owner != "" && l.Owner != c.Owner {
		return fail(proto.ResVDILocked, "vdi %q is locked by %s", v.Name, l.Owner)
	}
	v.Deleted = true
	delete(s.Locks, v.VID)
	return &Result{VID: v.VID, Changed: []uint32{v.VID}}
}

func (s *State) applyRollback(c *Command) *Result {
	snap, ok := s.VDIs[c.VID]
	if !ok || snap.Deleted || !snap.IsSnapshot() {
		return fail(proto.ResNoVDI, "no snapshot %#x", c.VID)
	}
	changed := []uint32{}
	if cur, ok := s.Working(snap.Name); ok {
		if l, ok := s.Locks[cur.VID]; ok && c.Owner != "" && l.Owner != c.Owner {
			return fail(proto.ResVDILocked, "vdi %q is locked by %s", cur.Name, l.Owner)
		}
		cur.Deleted = true
		delete(s.Locks, cur.VID)
		changed = append(changed, cur.VID)
	}
	vid, ok := s.allocVID(snap.Name)
	if !ok {
		return fail(proto.ResFullVDI, "no free vdi id")
	}
	maxSnap := snap.SnapID
	for _, v := range s.VDIs {
		if v.Name == snap.Name && v.SnapID > maxSnap {
			maxSnap = v.SnapID
		}
	}
	nv := &VDI{
		VID: vid, Name: snap.Name, SnapID: maxSnap + 1, CreateTime: ctime(c.Time),
		ParentVID: snap.VID, Size: snap.Size, Copies: snap.Copies, CopyPolicy: snap.CopyPolicy,
		BlockSizeShift: snap.BlockSizeShift, CHAP: snap.CHAP,
	}
	s.VDIs[vid] = nv
	return &Result{VID: vid, Changed: append(changed, vid)}
}

func (s *State) applyResize(c *Command) *Result {
	v, ok := s.VDIs[c.VID]
	if !ok || v.Deleted {
		return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
	}
	if v.IsSnapshot() {
		return fail(proto.ResReadonly, "cannot resize snapshot %q", v.Name)
	}
	if c.Size < v.Size {
		return fail(proto.ResInvalidParms, "shrinking a vdi is not supported (%d < %d)", c.Size, v.Size)
	}
	if err := checkSize(c.Size, v.BlockSizeShift); err != nil {
		return fail(proto.ResInvalidParms, "%v", err)
	}
	v.Size = c.Size
	return &Result{VID: v.VID, Changed: []uint32{v.VID}}
}

func (s *State) applyLock(c *Command) *Result {
	v, ok := s.VDIs[c.VID]
	if !ok || v.Deleted {
		return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
	}
	if l, ok := s.Locks[c.VID]; ok {
		if l.Owner == c.Owner || (l.Type == 1 && c.LockType == 1) {
			return &Result{VID: v.VID}
		}
		return fail(proto.ResVDILocked, "vdi %q is locked by %s", v.Name, l.Owner)
	}
	s.Locks[c.VID] = &Lock{VID: c.VID, Owner: c.Owner, Type: c.LockType}
	return &Result{VID: v.VID}
}

func (s *State) applyUnlock(c *Command) *Result {
	l, ok := s.Locks[c.VID]
	if !ok {
		return fail(proto.ResVDINotLocked, "vdi %#x is not locked", c.VID)
	}
	if c.Owner != "" && l.Owner != c.Owner {
		return fail(proto.ResVDILocked, "vdi %#x is locked by %s", c.VID, l.Owner)
	}
	delete(s.Locks, c.VID)
	return &Result{VID: c.VID}
}

// MaxAttrValue is the largest attribute value (sheepdog's SD_MAX_VDI_ATTR_VALUE_LEN).
const MaxAttrValue = 65536

func (s *State) applySetAttr(c *Command) *Result {
	v, ok := s.VDIs[c.VID]
	if !ok || v.Deleted {
		return fail(proto.ResNoVDI, "no vdi %#x", c.VID)
	}
	if c.Key == "" || len(c.Key) >= 256 {
		return fail(proto.ResInvalidParms, "attribute key must be 1..255 bytes")
	}
	if len(c.Value) > MaxAttrValue {
		return fail(proto.ResInvalidParms, "attribute value over %d bytes", MaxAttrValue)
	}
	_, exists := v.Attrs[c.Key]
	switch {
	case c.Delete:
		if !exists {
			return fail(proto.ResNoObj, "no attribute %q", c.Key)
		}
		delete(v.Attrs, c.Key)
	case c.Excl && exists:
		return fail(proto.ResVDIExist, "attribute %q exists", c.Key)
	default:
		if v.Attrs == nil {
			v.Attrs = map[string][]byte{}
		}
		v.Attrs[c.Key] = slices.Clone(c.Value)
	}
	return &Result{VID: v.VID}
}
