package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// Objects is the object I/O the volume layer needs (the gateway).
type Objects interface {
	Read(ctx context.Context, o gateway.Object, off uint32, p []byte) error
	Write(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error
	Create(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error
	// CreateExclusive creates unless the object exists (then it returns an
	// error matching proto.ResOIDExist and the caller writes instead).
	CreateExclusive(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error
	Zero(ctx context.Context, o gateway.Object, off, n uint32, sync bool) error
	// Discard frees a whole object before the index lets go of it; an
	// object already gone is not an error.
	Discard(ctx context.Context, o gateway.Object, sync bool) error
	Remove(ctx context.Context, o gateway.Object) error
	Flush(ctx context.Context) error
}

// PinnedObjects is implemented by Objects that can lend a verified range
// of an object, from this node's copy or relayed from another node's
// (gateway.Gateway.ReadPinned); devices then implement Lender.
type PinnedObjects interface {
	ReadPinned(ctx context.Context, o gateway.Object, off, n uint32) (*store.Raw, error)
}

// Meta is the cluster metadata the volume layer needs.
type Meta interface {
	// Read runs fn with the current state; fn must not keep or mutate it.
	Read(fn func(s *cluster.State))
	// Propose commits a command cluster-wide; this node has applied it
	// when Propose returns.
	Propose(ctx context.Context, c *cluster.Command) (*cluster.Result, error)
	// Decide commits a command that changes nothing and returns its
	// result as the leader applied it, without waiting for this node to.
	Decide(ctx context.Context, c *cluster.Command) (*cluster.Result, error)
	// Everywhere returns once every member has applied Raft index, or
	// can no longer serve I/O (bounded; best effort): what a command
	// changed then holds for writes through any node.
	Everywhere(ctx context.Context, index uint64)
}

// EventKind says what happened to an exported volume.
type EventKind int

const (
	Added   EventKind = iota + 1 // a working VDI appeared
	Removed                      // it was deleted
	Resized                      // its size changed
	Updated                      // settings (CHAP) changed
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	case Resized:
		return "resized"
	case Updated:
		return "updated"
	}
	return "unknown"
}

// Info describes a working VDI as front ends export it.
type Info struct {
	Name    string
	RootVID uint32 // stable across snapshots and rollbacks: device identity
	VID     uint32 // current working vid
	Size    uint64
	ObjSize uint32
	CHAP    *cluster.CHAP
}

// Event reports a change to the set of working VDIs.
type Event struct {
	Kind EventKind
	Info Info
}

// Config configures a Manager.
type Config struct {
	Meta    Meta
	Objects Objects
	Logger  *slog.Logger
}

// Manager opens VDIs as devices and performs VDI lifecycle operations with
// sheepdog's semantics. It is safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	open     map[*vdev]struct{}
	subs     []chan Event
	quiesced []quiesced
	reclaim  chan struct{} // wakes the reclaimer
	catchUp  *syncGate     // coalesces and spaces sync's commits
}

// NewManager returns a Manager. Call Changed from the FSM watcher.
func NewManager(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{cfg: cfg, log: cfg.Logger, open: map[*vdev]struct{}{}, reclaim: make(chan struct{}, 1), catchUp: newSyncGate(syncGap)}
}

func infoOf(s *cluster.State, v *cluster.VDI) Info {
	return Info{Name: v.Name, RootVID: s.RootVID(v.VID), VID: v.VID, Size: v.Size, ObjSize: v.ObjectSize(), CHAP: v.CHAP}
}

// List returns every working VDI.
func (m *Manager) List() []Info {
	var out []Info
	m.cfg.Meta.Read(func(s *cluster.State) {
		for _, v := range s.SortedVDIs() {
			if !v.Deleted && !v.IsSnapshot() {
				out = append(out, infoOf(s, v))
			}
		}
	})
	return out
}

// Lookup returns a copy of the table row for name (tag/snapID select a snapshot).
func (m *Manager) Lookup(name, tag string, snapID uint32) (*cluster.VDI, error) {
	var (
		v   *cluster.VDI
		err error
	)
	m.cfg.Meta.Read(func(s *cluster.State) {
		var found *cluster.VDI
		found, err = s.Lookup(name, tag, snapID)
		if err == nil {
			v = found.Copy()
		}
	})
	return v, err
}

// LookupSync is Lookup that, on a miss, first catches up with everything
// committed cluster-wide: a VDI created through another node a moment ago
// may not be applied here yet, and a client that was told it exists must
// find it on any node.
func (m *Manager) LookupSync(ctx context.Context, name, tag string, snapID uint32) (*cluster.VDI, error) {
	v, err := m.Lookup(name, tag, snapID)
	if err == nil || !(errors.Is(err, proto.ResNoVDI) || errors.Is(err, proto.ResNoTag)) {
		return v, err
	}
	if m.sync(ctx) != nil {
		return nil, err
	}
	return m.Lookup(name, tag, snapID)
}

// CatchUp returns once this node has applied everything committed
// cluster-wide before the call.
func (m *Manager) CatchUp(ctx context.Context) error { return m.sync(ctx) }

// sync returns once this node has applied everything committed before the
// call: it commits a no-op and waits for it locally. Concurrent callers
// share a commit, and commits are spaced (syncGate).
func (m *Manager) sync(ctx context.Context) error {
	return m.catchUp.do(ctx, func(ctx context.Context) error {
		r, err := m.cfg.Meta.Propose(ctx, &cluster.Command{Op: cluster.CmdSync})
		if err == nil {
			err = r.Err()
		}
		return err
	})
}

// VDI returns a copy of the table row of vid.
func (m *Manager) VDI(vid uint32) (*cluster.VDI, bool) {
	var v *cluster.VDI
	m.cfg.Meta.Read(func(s *cluster.State) {
		if x, ok := s.VDIs[vid]; ok {
			v = x.Copy()
		}
	})
	return v, v != nil
}

// ConfirmWorking checks, at a linearisable point after an index update of
// vid, that vid is still a working VDI. A snapshot committed meanwhile may
// have copied the index before the update landed, so the new working VDI
// would not see it: the caller must then redo the write there (READONLY
// makes clients reload and copy on write). Index updates happen once per
// object allocation. The leader answers (CmdCheckWorking), so a follower
// does not wait to learn of the commit, which took 20-40 ms of every
// allocation through it (a fresh 1 GiB import through a follower took
// 14 s, through the leader 8).
func (m *Manager) ConfirmWorking(ctx context.Context, vid uint32) error {
	r, err := m.cfg.Meta.Decide(ctx, &cluster.Command{Op: cluster.CmdCheckWorking, VID: vid})
	if err != nil {
		return fmt.Errorf("volume: confirm vdi %#x is still working: %w", vid, err)
	}
	switch r.Code {
	case proto.ResSuccess:
		return nil
	case proto.ResInvalidParms:
		// A leader from before CmdCheckWorking: read our own state at a
		// point after the update instead.
		return m.confirmWorkingHere(ctx, vid)
	case proto.ResReadonly:
		// This node may not have applied the snapshot yet: catch up, so
		// that the caller's reload finds the new working VDI.
		if err := m.sync(ctx); err != nil {
			return fmt.Errorf("volume: catch up after vdi %#x stopped being the working vdi: %w", vid, err)
		}
		return fmt.Errorf("volume: vdi %#x stopped being the working vdi during an index update: %w", vid, r.Err())
	default:
		return fmt.Errorf("volume: confirm vdi %#x is still working: %w", vid, r.Err())
	}
}

// confirmWorkingHere is ConfirmWorking by this node's own state, once it
// has applied a commit made after the index update.
func (m *Manager) confirmWorkingHere(ctx context.Context, vid uint32) error {
	if err := m.sync(ctx); err != nil {
		return fmt.Errorf("volume: confirm vdi %#x is still working: %w", vid, err)
	}
	cur, ok := m.VDI(vid)
	if !ok || cur.Deleted || cur.IsSnapshot() {
		return fmt.Errorf("volume: vdi %#x stopped being the working vdi during an index update: %w", vid, proto.ResReadonly)
	}
	return nil
}

// Subscribe returns a channel of events (buffered; a slow reader misses
// none, the manager's sender blocks instead) and a cancel function.
func (m *Manager) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	m.mu.Lock()
	m.subs = append(m.subs, ch)
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for i, c := range m.subs {
			if c == ch {
				m.subs = append(m.subs[:i], m.subs[i+1:]...)
				close(ch)
				return
			}
		}
	}
}

// Changed is the FSM watcher: it marks open devices stale when their VDI
// changed and emits events for front ends.
func (m *Manager) Changed(old, cur *cluster.State) {
	if old == nil {
		old = cluster.NewState()
	}
	working := func(s *cluster.State) map[string]Info {
		out := map[string]Info{}
		for _, v := range s.VDIs {
			if !v.Deleted && !v.IsSnapshot() {
				out[v.Name] = infoOf(s, v)
			}
		}
		return out
	}
	before, after := working(old), working(cur)
	var evs []Event
	for name, a := range after {
		b, ok := before[name]
		switch {
		case !ok:
			evs = append(evs, Event{Kind: Added, Info: a})
		case a.Size != b.Size:
			evs = append(evs, Event{Kind: Resized, Info: a})
		case !sameCHAP(a.CHAP, b.CHAP) || a.VID != b.VID:
			evs = append(evs, Event{Kind: Updated, Info: a})
		}
	}
	for name, b := range before {
		if _, ok := after[name]; !ok {
			evs = append(evs, Event{Kind: Removed, Info: b})
		}
	}
	m.mu.Lock()
	for d := range m.open {
		d.noteChange(cur)
	}
	subs := append([]chan Event(nil), m.subs...)
	m.mu.Unlock()
	for _, e := range evs {
		for _, ch := range subs {
			select {
			case ch <- e:
			case <-time.After(5 * time.Second):
				m.log.Warn("volume event subscriber is stuck; event dropped", "event", e.Kind, "vdi", e.Info.Name)
			}
		}
	}
}

func sameCHAP(a, b *cluster.CHAP) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (m *Manager) register(d *vdev) {
	m.mu.Lock()
	m.open[d] = struct{}{}
	m.mu.Unlock()
}

func (m *Manager) unregister(d *vdev) {
	m.mu.Lock()
	delete(m.open, d)
	m.mu.Unlock()
}

// Open opens the working VDI name as a device that follows the name across
// snapshots and rollbacks.
func (m *Manager) Open(ctx context.Context, name string) (Device, error) {
	return m.open1(ctx, name, "", 0)
}

// OpenSnapshot opens a snapshot read-only.
func (m *Manager) OpenSnapshot(ctx context.Context, name, tag string, snapID uint32) (Device, error) {
	if tag == "" && snapID == 0 {
		return nil, fmt.Errorf("volume: snapshot of %q needs a tag or id: %w", name, proto.ResInvalidParms)
	}
	return m.open1(ctx, name, tag, snapID)
}

func (m *Manager) open1(ctx context.Context, name, tag string, snapID uint32) (Device, error) {
	v, err := m.LookupSync(ctx, name, tag, snapID)
	if err != nil {
		return nil, fmt.Errorf("volume: open %q: %w", name, wrapNoVDI(err))
	}
	d := &vdev{m: m, name: name, snapshot: v.IsSnapshot(), fixedVID: 0}
	if d.snapshot {
		d.fixedVID = v.VID
	}
	if err := d.load(ctx, v); err != nil {
		return nil, err
	}
	m.register(d)
	// A change applied between the lookup and the registration (a resize,
	// a snapshot while the index was read) reached no notice to d: look
	// again now that later ones will. Without this an iSCSI target
	// exported while its VDI grew kept the old size.
	m.cfg.Meta.Read(d.noteChange)
	return d, nil
}

func wrapNoVDI(err error) error {
	if errors.Is(err, proto.ResNoVDI) {
		return fmt.Errorf("%w: %v", ErrNoVolume, err)
	}
	return err
}

// inodeObject is the object of vdi's inode. Inodes are always replicated:
// an erasure-coded VDI keeps data+parity copies of its inode (capped by the
// number of zones), as sheepdog does.
func inodeObject(v *cluster.VDI) gateway.Object {
	return gateway.Object{
		OID:  proto.InodeOID(v.VID),
		Red:  proto.Redundancy{Copies: v.Redundancy().NrCopies()},
		Size: proto.InodeSize,
	}
}

// dataObject is data object idx owned by vid, protected as v is.
func dataObject(v *cluster.VDI, owner, idx uint32) gateway.Object {
	return gateway.Object{OID: proto.DataOID(owner, idx), Red: v.Redundancy(), Size: v.ObjectSize()}
}

// nrObjects is how many index entries a VDI of size bytes uses.
func nrObjects(size uint64, objSize uint32) uint32 {
	return uint32((size + uint64(objSize) - 1) / uint64(objSize))
}

// ReadIndex reads the first n entries of vdi's data_vdi_id.
func (m *Manager) ReadIndex(ctx context.Context, v *cluster.VDI, n uint32) ([]uint32, error) {
	idx := make([]uint32, n)
	if n == 0 {
		return idx, nil
	}
	buf := make([]byte, 4*n)
	if err := m.cfg.Objects.Read(ctx, inodeObject(v), proto.InodeIndexOffset, buf); err != nil {
		if errors.Is(err, proto.ResNoObj) {
			// Committed but never materialised (creator crashed): rebuild.
			if err := m.materialize(ctx, v.VID); err != nil {
				return nil, err
			}
			if err := m.cfg.Objects.Read(ctx, inodeObject(v), proto.InodeIndexOffset, buf); err != nil {
				return nil, fmt.Errorf("volume: read index of %q: %w", v.Name, err)
			}
		} else {
			return nil, fmt.Errorf("volume: read index of %q: %w", v.Name, err)
		}
	}
	proto.DecodeIndex(idx, buf)
	return idx, nil
}

// ReadInode reads vdi's whole inode object (header from the object).
func (m *Manager) ReadInode(ctx context.Context, v *cluster.VDI) (*proto.Inode, error) {
	ino := &proto.Inode{}
	hdr := make([]byte, proto.InodeHeaderSize)
	if err := m.cfg.Objects.Read(ctx, inodeObject(v), 0, hdr); err != nil {
		return nil, fmt.Errorf("volume: read inode of %q: %w", v.Name, err)
	}
	if err := ino.UnmarshalHeader(hdr); err != nil {
		return nil, err
	}
	idx, err := m.ReadIndex(ctx, v, nrObjects(v.Size, v.ObjectSize()))
	if err != nil {
		return nil, err
	}
	ino.DataVDIID = make([]uint32, proto.MaxDataObjs)
	copy(ino.DataVDIID, idx)
	return ino, nil
}

// materialize makes vid's inode object match its table row: a missing inode
// is created (its index copied from the parent's, as the parent is frozen
// or gone-but-kept), an existing one gets its header rewritten.
func (m *Manager) materialize(ctx context.Context, vid uint32) error {
	v, ok := m.VDI(vid)
	if !ok {
		return fmt.Errorf("volume: vdi %#x vanished: %w", vid, proto.ResNoVDI)
	}
	if v.Deleted {
		return nil
	}
	obj := inodeObject(v)
	hdr := v.Inode().MarshalHeader()
	probe := make([]byte, 8)
	err := m.cfg.Objects.Read(ctx, obj, 0, probe)
	switch {
	case err == nil:
		// Some copy exists. Another node may be creating the inode right
		// now (the creator writes it after the commit, we got here because
		// our read came first): a copy its fan-out has not reached yet
		// answers NoObj for a moment. Retry briefly before failing.
		for attempt := 0; ; attempt++ {
			werr := m.cfg.Objects.Write(ctx, obj, 0, hdr, false)
			if werr == nil || !errors.Is(werr, proto.ResNoObj) || attempt == 20 {
				return werr
			}
			select {
			case <-ctx.Done():
				return werr
			case <-time.After(50 * time.Millisecond):
			}
		}
	case !errors.Is(err, proto.ResNoObj):
		return fmt.Errorf("volume: materialise %q: %w", v.Name, err)
	}
	data := hdr
	if v.ParentVID != 0 {
		if p, ok := m.VDI(v.ParentVID); ok {
			n := nrObjects(p.Size, p.ObjectSize())
			idx, err := m.ReadIndex(ctx, p, n)
			if err != nil {
				return fmt.Errorf("volume: copy index of parent %q: %w", p.Name, err)
			}
			last := len(idx)
			for last > 0 && idx[last-1] == 0 {
				last--
			}
			data = append(hdr, proto.EncodeIndex(idx[:last])...)
		}
	}
	// Exclusive: another node may have materialised it meanwhile and index
	// updates may already have landed there; never overwrite them.
	err = m.cfg.Objects.CreateExclusive(ctx, obj, 0, data, false)
	if errors.Is(err, proto.ResOIDExist) {
		return m.cfg.Objects.Write(ctx, obj, 0, hdr, false)
	}
	return err
}

// Materialize applies the inode changes a committed command requires.
func (m *Manager) Materialize(ctx context.Context, r *cluster.Result) error {
	var errs []error
	for _, vid := range r.Changed {
		if err := m.materialize(ctx, vid); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CreateOpts are the parameters of a new VDI.
type CreateOpts struct {
	Name           string
	Size           uint64
	Redundancy     proto.Redundancy // zero: cluster default
	BlockSizeShift uint8            // zero: cluster default
}

// Propose commits a VDI command and applies what it requires (the inode
// object of a new VDI, its header otherwise). A new VDI (a create or a
// clone) whose inode cannot be written (no space, a copy holder failing)
// is deleted again before the error is returned: a create reported failed
// leaves no VDI behind that a retry would collide with.
func (m *Manager) Propose(ctx context.Context, c *cluster.Command) (*cluster.VDI, error) {
	return m.propose(ctx, c)
}

func (m *Manager) propose(ctx context.Context, c *cluster.Command) (*cluster.VDI, error) {
	r, err := m.cfg.Meta.Propose(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	if c.Snapshot || c.Op == cluster.CmdRollback {
		// A node that has not applied it yet would go on writing to the
		// VDI that just became a snapshot (or was rolled back): writes the
		// caller issues after we return, once a guest is thawed, must
		// not land there.
		m.cfg.Meta.Everywhere(ctx, r.Index)
	}
	if err := m.Materialize(ctx, r); err != nil {
		if c.Op == cluster.CmdCreateVDI && !c.Snapshot {
			m.undoCreate(ctx, c.Name, r.VID, err)
		}
		return nil, err
	}
	v, ok := m.VDI(r.VID)
	if !ok {
		return nil, fmt.Errorf("volume: vdi %#x missing after commit: %w", r.VID, proto.ResSystemError)
	}
	return v, nil
}

// undoCreate deletes vid, a VDI just created whose inode could not be
// written, even if the caller has gone (the create is failing either way).
// Should the delete fail too, the VDI stays: its inode is written on first
// use (ReadIndex), so it works once the cause is gone.
func (m *Manager) undoCreate(ctx context.Context, name string, vid uint32, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	r, err := m.cfg.Meta.Propose(ctx, &cluster.Command{Op: cluster.CmdDeleteVDI, VID: vid})
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		m.log.Warn("volume: a create failed and its VDI could not be deleted again", "vdi", name, "vid", fmt.Sprintf("%#x", vid), "cause", cause, "err", err)
		return
	}
	m.log.Info("volume: create failed; VDI deleted again", "vdi", name, "vid", fmt.Sprintf("%#x", vid), "cause", cause)
	m.kickReclaim()
}

// Create makes a new VDI.
func (m *Manager) Create(ctx context.Context, o CreateOpts) (*cluster.VDI, error) {
	c := &cluster.Command{Op: cluster.CmdCreateVDI, Name: o.Name, Size: o.Size, BlockSizeShift: o.BlockSizeShift}
	if o.Redundancy.NrCopies() != 0 {
		c.Copies, c.CopyPolicy = o.Redundancy.NrCopies(), o.Redundancy.Policy()
	}
	return m.propose(ctx, c)
}

// Snapshot freezes the working VDI name (tagged tag) and returns the new working VDI.
// Local devices are flushed first so the snapshot holds every acknowledged write.
func (m *Manager) Snapshot(ctx context.Context, name, tag string) (*cluster.VDI, error) {
	cur, err := m.LookupSync(ctx, name, "", 0)
	if err != nil {
		return nil, wrapNoVDI(err)
	}
	if err := m.quiesce(ctx, name); err != nil {
		return nil, err
	}
	defer m.resume(name)
	return m.propose(ctx, &cluster.Command{Op: cluster.CmdCreateVDI, Name: name, Tag: tag, Snapshot: true, BaseVID: cur.VID})
}

// Clone makes dst, a new working VDI sharing snapshot (name, tag/snapID)'s data.
func (m *Manager) Clone(ctx context.Context, name, tag string, snapID uint32, dst string, size uint64) (*cluster.VDI, error) {
	snap, err := m.LookupSync(ctx, name, tag, snapID)
	if err != nil {
		return nil, wrapNoVDI(err)
	}
	return m.propose(ctx, &cluster.Command{Op: cluster.CmdCreateVDI, Name: dst, BaseVID: snap.VID, Size: size})
}

// Rollback replaces the working VDI name with a new one branched from the snapshot.
func (m *Manager) Rollback(ctx context.Context, name, tag string, snapID uint32) (*cluster.VDI, error) {
	snap, err := m.LookupSync(ctx, name, tag, snapID)
	if err != nil {
		return nil, wrapNoVDI(err)
	}
	if err := m.quiesce(ctx, name); err != nil {
		return nil, err
	}
	defer m.resume(name)
	v, err := m.propose(ctx, &cluster.Command{Op: cluster.CmdRollback, VID: snap.VID})
	if err == nil {
		m.kickReclaim()
	}
	return v, err
}

// Resize grows the working VDI name.
func (m *Manager) Resize(ctx context.Context, name string, size uint64) (*cluster.VDI, error) {
	cur, err := m.LookupSync(ctx, name, "", 0)
	if err != nil {
		return nil, wrapNoVDI(err)
	}
	return m.propose(ctx, &cluster.Command{Op: cluster.CmdResize, VID: cur.VID, Size: size})
}

// Delete deletes a VDI or snapshot; its objects are reclaimed once nothing
// refers to them.
func (m *Manager) Delete(ctx context.Context, name, tag string, snapID uint32) error {
	v, err := m.LookupSync(ctx, name, tag, snapID)
	if err != nil {
		return wrapNoVDI(err)
	}
	r, err := m.cfg.Meta.Propose(ctx, &cluster.Command{Op: cluster.CmdDeleteVDI, VID: v.VID})
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return err
	}
	m.kickReclaim()
	return nil
}

// quiesce flushes and blocks writes of local devices of name during a
// snapshot or rollback; resume lets them continue (on the new vid).
func (m *Manager) quiesce(ctx context.Context, name string) error {
	m.mu.Lock()
	var ds []*vdev
	for d := range m.open {
		if d.name == name && !d.snapshot {
			ds = append(ds, d)
		}
	}
	m.mu.Unlock()
	for _, d := range ds {
		d.gate.Lock()
	}
	if err := m.cfg.Objects.Flush(ctx); err != nil {
		for _, d := range ds {
			d.gate.Unlock()
		}
		return err
	}
	m.mu.Lock()
	m.quiesced = append(m.quiesced, quiesced{name: name, devs: ds})
	m.mu.Unlock()
	return nil
}

type quiesced struct {
	name string
	devs []*vdev
}

func (m *Manager) resume(name string) {
	m.mu.Lock()
	var ds []*vdev
	for i, q := range m.quiesced {
		if q.name == name {
			ds = q.devs
			m.quiesced = append(m.quiesced[:i], m.quiesced[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	for _, d := range ds {
		d.markStale()
		d.gate.Unlock()
	}
}
