package cluster

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
)

// Member is a data node as recorded in an epoch.
type Member struct {
	ID    string         `json:"id"`
	Addr  netip.AddrPort `json:"addr"` // native protocol address (also the peer address)
	Zone  uint32         `json:"zone"`
	Space uint64         `json:"space"` // bytes of capacity; 0 = gateway only
}

// PortNumber is node id's number in the cluster, counted from 1 in the
// order nodes first became members: the epoch history, which every node
// agrees on and which only grows, makes it the same on every node,
// distinct for every node that has ever been a member, and kept across
// restarts and absences. The iSCSI target uses it as the node's portal
// group tag and relative target port identifier. ok is false for a node
// that has not been a member yet (or past 65535 nodes).
func (s *State) PortNumber(id string) (n uint16, ok bool) {
	seen := map[string]bool{}
	for _, e := range s.Epochs {
		for _, m := range e.Members {
			if seen[m.ID] {
				continue
			}
			seen[m.ID] = true
			if m.ID == id {
				if len(seen) > 0xffff {
					return 0, false
				}
				return uint16(len(seen)), true
			}
		}
	}
	return 0, false
}

// EpochLog is one entry of the epoch history: the member set from that epoch on.
type EpochLog struct {
	Epoch   uint32   `json:"epoch"`
	Time    int64    `json:"time"` // unix nanoseconds, chosen by the proposer
	Members []Member `json:"members"`
}

// Format is the cluster-wide configuration set by `dog cluster format`.
type Format struct {
	Ctime          uint64 `json:"ctime"`
	Copies         uint8  `json:"copies"`
	CopyPolicy     uint8  `json:"copy_policy"`
	BlockSizeShift uint8  `json:"block_size_shift"`
	Flags          uint16 `json:"flags"`
}

// Redundancy decodes the default redundancy.
func (f *Format) Redundancy() proto.Redundancy {
	r, err := proto.FromPolicy(f.Copies, f.CopyPolicy)
	if err != nil {
		return proto.Redundancy{Copies: proto.DefaultCopies}
	}
	return r
}

// CHAP holds iSCSI credentials of one VDI's target.
type CHAP struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// VDI is one row of the VDI table: a working volume, a snapshot or a deleted one.
type VDI struct {
	VID            uint32            `json:"vid"`
	Name           string            `json:"name"`
	Tag            string            `json:"tag,omitempty"`
	SnapID         uint32            `json:"snap_id"`
	CreateTime     uint64            `json:"ctime"`
	SnapCtime      uint64            `json:"snap_ctime,omitempty"` // non-zero: a snapshot
	ParentVID      uint32            `json:"parent,omitempty"`
	Size           uint64            `json:"size"`
	Copies         uint8             `json:"copies"`
	CopyPolicy     uint8             `json:"copy_policy"`
	BlockSizeShift uint8             `json:"block_size_shift"`
	Deleted        bool              `json:"deleted,omitempty"`
	Reclaimed      bool              `json:"reclaimed,omitempty"` // deleted and all own objects freed
	Attrs          map[string][]byte `json:"attrs,omitempty"`
	CHAP           *CHAP             `json:"chap,omitempty"`
}

// IsSnapshot reports whether the VDI is frozen.
func (v *VDI) IsSnapshot() bool { return v.SnapCtime != 0 }

// Redundancy decodes the VDI's protection.
func (v *VDI) Redundancy() proto.Redundancy {
	r, err := proto.FromPolicy(v.Copies, v.CopyPolicy)
	if err != nil {
		return proto.Redundancy{Copies: proto.DefaultCopies}
	}
	return r
}

// ObjectSize is the VDI's data object size.
func (v *VDI) ObjectSize() uint32 { return 1 << v.BlockSizeShift }

// Inode builds the inode header the table row describes (no index).
func (v *VDI) Inode() *proto.Inode {
	return &proto.Inode{
		Name: v.Name, Tag: v.Tag, CreateTime: v.CreateTime, SnapCtime: v.SnapCtime,
		VDISize: v.Size, CopyPolicy: v.CopyPolicy, NrCopies: v.Copies,
		BlockSizeShift: v.BlockSizeShift, SnapID: v.SnapID, VDIID: v.VID, ParentVDIID: v.ParentVID,
	}
}

// Copy deep-copies the row.
func (v *VDI) Copy() *VDI {
	c := *v
	if v.Attrs != nil {
		c.Attrs = make(map[string][]byte, len(v.Attrs))
		for k, val := range v.Attrs {
			c.Attrs[k] = slices.Clone(val)
		}
	}
	if v.CHAP != nil {
		ch := *v.CHAP
		c.CHAP = &ch
	}
	return &c
}

// Lock is a VDI lock held by a client (sheepdog's LOCK_VDI with format -l).
type Lock struct {
	VID   uint32 `json:"vid"`
	Owner string `json:"owner"`
	Type  uint32 `json:"type"`
}

// Throttle limits background recovery.
type Throttle struct {
	MaxRate     uint64 `json:"max_rate"`    // bytes per second, 0 = unlimited
	Concurrency int    `json:"concurrency"` // objects recovered in parallel, 0 = default
}

// Status of the cluster.
const (
	StatusWaitFormat = "wait_for_format"
	StatusOK         = "running"
	StatusShutdown   = "shutdown"
)

// State is the cluster metadata the Raft FSM replicates. It is only mutated
// through Apply; readers get deep copies or read under the FSM's lock.
type State struct {
	Format           *Format          `json:"format,omitempty"`
	Status           string           `json:"status"`
	Epochs           []EpochLog       `json:"epochs"`
	VDIs             map[uint32]*VDI  `json:"vdis"`
	Locks            map[uint32]*Lock `json:"locks,omitempty"`
	RecoveryDisabled bool             `json:"recovery_disabled,omitempty"`
	Throttle         Throttle         `json:"throttle"`
	// Recovered records, per epoch, the node IDs that finished recovery for it.
	Recovered map[uint32][]string `json:"recovered,omitempty"`
	// Resv holds the SCSI reservations of each exported VDI (by root VID):
	// every node's target enforces the same ones.
	Resv map[uint32]*resv.State `json:"resv,omitempty"`
	// MetaVersion is the metadata version every member runs (see
	// MetaVersion, the constant); 0 for a cluster formatted before it.
	MetaVersion uint32 `json:"meta_version,omitempty"`
}

// NewState returns the state of a never-formatted cluster.
func NewState() *State {
	return &State{Status: StatusWaitFormat, VDIs: map[uint32]*VDI{}, Locks: map[uint32]*Lock{}}
}

// Clone deep-copies the state.
func (s *State) Clone() *State {
	c := &State{Status: s.Status, RecoveryDisabled: s.RecoveryDisabled, Throttle: s.Throttle, MetaVersion: s.MetaVersion}
	if s.Format != nil {
		f := *s.Format
		c.Format = &f
	}
	c.Epochs = make([]EpochLog, len(s.Epochs))
	for i, e := range s.Epochs {
		c.Epochs[i] = EpochLog{Epoch: e.Epoch, Time: e.Time, Members: slices.Clone(e.Members)}
	}
	c.VDIs = make(map[uint32]*VDI, len(s.VDIs))
	for k, v := range s.VDIs {
		c.VDIs[k] = v.Copy()
	}
	c.Locks = make(map[uint32]*Lock, len(s.Locks))
	for k, l := range s.Locks {
		lc := *l
		c.Locks[k] = &lc
	}
	if s.Resv != nil {
		c.Resv = make(map[uint32]*resv.State, len(s.Resv))
		for k, r := range s.Resv {
			c.Resv[k] = r.Clone()
		}
	}
	if s.Recovered != nil {
		c.Recovered = make(map[uint32][]string, len(s.Recovered))
		for k, v := range s.Recovered {
			c.Recovered[k] = slices.Clone(v)
		}
	}
	return c
}

// Epoch returns the current epoch number (0 before format).
func (s *State) Epoch() uint32 {
	if len(s.Epochs) == 0 {
		return 0
	}
	return s.Epochs[len(s.Epochs)-1].Epoch
}

// Current returns the current epoch log, or nil.
func (s *State) Current() *EpochLog {
	if len(s.Epochs) == 0 {
		return nil
	}
	return &s.Epochs[len(s.Epochs)-1]
}

// EpochLog returns the log of epoch e.
func (s *State) EpochLog(e uint32) (*EpochLog, bool) {
	i := sort.Search(len(s.Epochs), func(i int) bool { return s.Epochs[i].Epoch >= e })
	if i < len(s.Epochs) && s.Epochs[i].Epoch == e {
		return &s.Epochs[i], true
	}
	return nil, false
}

// Bitmap derives READ_VDIS's in-use bitmap: every vid ever allocated.
func (s *State) Bitmap() proto.VDIBitmap {
	m := proto.NewVDIBitmap()
	for vid := range s.VDIs {
		m.Set(vid)
	}
	return m
}

// Working returns the working (non-snapshot, non-deleted) VDI of a name.
func (s *State) Working(name string) (*VDI, bool) {
	for _, v := range s.VDIs {
		if v.Name == name && !v.Deleted && !v.IsSnapshot() {
			return v, true
		}
	}
	return nil, false
}

// Lookup finds a VDI as sheep's lookup does: by name, and by snapshot id or
// tag when either is given. ResNoVDI if the name is unknown, ResNoTag if the
// name exists but no snapshot matches.
func (s *State) Lookup(name, tag string, snapID uint32) (*VDI, error) {
	if name == "" {
		return nil, fmt.Errorf("empty vdi name: %w", proto.ResInvalidParms)
	}
	found := false
	for _, v := range s.VDIs {
		if v.Name != name || v.Deleted {
			continue
		}
		found = true
		switch {
		case tag == "" && snapID == 0:
			if !v.IsSnapshot() {
				return v, nil
			}
		case v.IsSnapshot() && ((tag != "" && v.Tag == tag) || (tag == "" && v.SnapID == snapID)):
			return v, nil
		}
	}
	if found && (tag != "" || snapID != 0) {
		return nil, fmt.Errorf("vdi %q has no snapshot %s: %w", name, snapDesc(tag, snapID), proto.ResNoTag)
	}
	return nil, fmt.Errorf("vdi %q: %w", name, proto.ResNoVDI)
}

func snapDesc(tag string, id uint32) string {
	if tag != "" {
		return fmt.Sprintf("tagged %q", tag)
	}
	return fmt.Sprintf("id %d", id)
}

// Family returns every VDI (including deleted ones) connected to vid by
// parent links: the set whose inodes may share data objects with it.
func (s *State) Family(vid uint32) []*VDI {
	root := vid
	for {
		v, ok := s.VDIs[root]
		if !ok || v.ParentVID == 0 {
			break
		}
		if _, ok := s.VDIs[v.ParentVID]; !ok {
			break
		}
		root = v.ParentVID
	}
	children := map[uint32][]uint32{}
	for _, v := range s.VDIs {
		if v.ParentVID != 0 {
			children[v.ParentVID] = append(children[v.ParentVID], v.VID)
		}
	}
	var out []*VDI
	queue := []uint32{root}
	seen := map[uint32]bool{root: true}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		if v, ok := s.VDIs[x]; ok {
			out = append(out, v)
		}
		for _, c := range children[x] {
			if !seen[c] {
				seen[c] = true
				queue = append(queue, c)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VID < out[j].VID })
	return out
}

// SortedVDIs lists VDIs by name, then snapshot id, as dog prints them.
func (s *State) SortedVDIs() []*VDI {
	out := make([]*VDI, 0, len(s.VDIs))
	for _, v := range s.VDIs {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := strings.Compare(out[i].Name, out[j].Name); c != 0 {
			return c < 0
		}
		return out[i].SnapID < out[j].SnapID
	})
	return out
}

// RootVID follows parent links while the parent has the same name: the vid
// the name was first created with. It stays the same across snapshots and
// rollbacks, so front ends derive stable device identities from it.
func (s *State) RootVID(vid uint32) uint32 {
	v, ok := s.VDIs[vid]
	for i := 0; ok && i < len(s.VDIs); i++ {
		p, pok := s.VDIs[v.ParentVID]
		if v.ParentVID == 0 || !pok || p.Name != v.Name {
			return v.VID
		}
		v = p
	}
	return vid
}
