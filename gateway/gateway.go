// Package gateway routes object I/O: it finds an object's copies (or EC
// strips) on the ring of the current epoch, reads from one copy with
// fallback, writes every copy before acknowledging, and retries across
// epoch changes until the caller's deadline.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// Sentinel errors.
var (
	ErrNoTargets  = proto.NewError(proto.ResHalt, "gateway: no node can hold the object")
	ErrNotPrimary = proto.NewError(proto.ResOldNodeVer, "gateway: this node is not the object's primary in that epoch")
)

// View is the placement of one epoch.
type View struct {
	Epoch uint32
	Ring  *placement.Ring
}

// Views supplies the current epoch's placement.
type Views interface {
	// View returns the current view; nil before the cluster is formatted.
	View() *View
	// WaitNewer blocks until a view with an epoch above e exists or ctx ends.
	WaitNewer(ctx context.Context, e uint32) error
}

// Peer performs store operations on one node, tagged with the sender's epoch
// (a node in another epoch refuses with OLD/NEW_NODE_VER).
type Peer interface {
	// Create makes the object (zero-filled) with data at off, replacing
	// any copy; with excl it fails with proto.ResOIDExist if one exists.
	Create(ctx context.Context, epoch uint32, k store.Key, size, off uint32, data []byte, sync, excl bool) error
	// Write writes data at off into the existing object; sums, if not nil,
	// are store.BlockSums of data (see store.WriteOpts.Sums).
	Write(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sums []uint32, sync bool) error
	Read(ctx context.Context, epoch uint32, k store.Key, off uint32, p []byte) error
	Remove(ctx context.Context, epoch uint32, k store.Key) error
	Zero(ctx context.Context, epoch uint32, k store.Key, off, n uint32, sync bool) error
	// Heal replaces the blocks of [off, off+len(data)) that fail their
	// checksums with data's, keeping every block that verifies
	// (store.Healer): a repair, safe beside writes.
	Heal(ctx context.Context, epoch uint32, k store.Key, off uint32, data []byte, sync bool) error
	// ECWrite asks the object's primary to do an erasure-coded write.
	ECWrite(ctx context.Context, epoch uint32, o Object, op ECOp, off, n uint32, data []byte, sync bool) error
	// Sync makes every write the node acknowledged durable.
	Sync(ctx context.Context) error
}

// Peers hands out the Peer for a node (the local store for this node).
type Peers interface {
	Peer(n placement.Node) Peer
}

// Object identifies an object and how it is protected.
type Object struct {
	OID  proto.OID
	Red  proto.Redundancy
	Size uint32 // full logical size of the object
}

// Config configures a Gateway.
type Config struct {
	Self   string // this node's id
	Views  Views
	Peers  Peers
	Codecs Codecs
	Logger *slog.Logger
	// PeerTimeout bounds one attempt against one peer (default 10 s) so a
	// hung peer costs a retry, not the caller's whole deadline.
	PeerTimeout time.Duration
	// DefaultTimeout applies when the caller's context has no deadline.
	DefaultTimeout time.Duration
	// Strict refuses writes (HALT) when fewer zones than copies are alive,
	// instead of writing fewer copies (sheepdog's `cluster format -t`).
	Strict func() bool
	// Settled reports whether every member has finished recovering the
	// given epoch. Until then an erasure-coded mutation first has every
	// strip holder settle its strip (nil: always).
	Settled func(epoch uint32) bool
	// Fenced reports whether this node is cut off from the metadata
	// quorum (nil: never). The majority may then have moved on without
	// it, leaving its copies outdated: operations wait for the quorum
	// (an election takes a moment) until the caller's deadline, and serve
	// nothing meanwhile, not even a read of a local copy.
	Fenced func() bool
	// Recorder receives counts for metrics (nil: none).
	Recorder Recorder
}

// Recorder is told what the gateway did that operators count
// (metrics.Metrics implements it).
type Recorder interface {
	// ReadRepair: one copy healed, or one erasure-coded object's strips
	// rebuilt, after a read found them damaged or missing.
	ReadRepair()
	// LentRead: one ReadPinned served, from this node's copy ("local")
	// or relayed from another's ("relayed").
	LentRead(how string)
}

type nopRecorder struct{}

func (nopRecorder) ReadRepair()     {}
func (nopRecorder) LentRead(string) {}

// Gateway routes object I/O. It is safe for concurrent use.
type Gateway struct {
	cfg   Config
	log   *slog.Logger
	locks stripeLocks
	// repairing holds the OIDs with an erasure-coded read repair running.
	repairing sync.Map

	mu    sync.Mutex
	dirty map[string]placement.Node // nodes written since the last Flush
}

// New returns a Gateway.
func New(cfg Config) *Gateway {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PeerTimeout == 0 {
		cfg.PeerTimeout = 10 * time.Second
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = 60 * time.Second
	}
	if cfg.Recorder == nil {
		cfg.Recorder = nopRecorder{}
	}
	return &Gateway{cfg: cfg, log: cfg.Logger, dirty: map[string]placement.Node{}}
}

// retryable reports whether err may go away in a later attempt or epoch.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true // a peer attempt timed out; the caller's deadline is checked separately
	}
	switch proto.ResultOf(err) {
	case proto.ResNetworkError, proto.ResOldNodeVer, proto.ResNewNodeVer, proto.ResWaitForJoin,
		proto.ResWaitForFormat, proto.ResKilled, proto.ResHalt, proto.ResAgain, proto.ResShutdown,
		proto.ResNodeInRecovery, proto.ResStartup:
		return true
	}
	return false
}

// opName names a gateway operation in errors. It is formatted only when an
// error is: building the string for every request cost two allocations.
type opName struct {
	op  string
	oid proto.OID
}

func (n opName) String() string { return n.op + " " + n.oid.String() }

// retry runs attempt against successive views until it succeeds, fails
// for good, or ctx ends. Without a deadline from the caller,
// the operation gets DefaultTimeout from its start; that deadline's context
// is made only when an attempt must be retried. A first attempt needs none:
// its peer calls are bounded by PeerTimeout, and a timer context per
// request was a third of the gateway's allocations (BenchmarkGateway4K).
func (g *Gateway) retry(ctx context.Context, what opName, attempt func(ctx context.Context, v *View) error) error {
	start := time.Now()
	first := true
	backoff := 20 * time.Millisecond
	var last error
	for {
		v := g.cfg.Views.View()
		switch {
		case v == nil:
			last = fmt.Errorf("gateway: %s: %w", what, proto.ResWaitForFormat)
		case g.fenced():
			last = fmt.Errorf("gateway: %s: %w", what, errFenced)
		default:
			err := attempt(ctx, v)
			if err == nil || !retryable(err) {
				return err
			}
			last = err
		}
		if first {
			first = false
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, start.Add(g.cfg.DefaultTimeout))
				defer cancel()
			}
		}
		if v != nil {
			if proto.ResultOf(last) == proto.ResOldNodeVer || proto.ResultOf(last) == proto.ResNetworkError ||
				errors.Is(last, context.DeadlineExceeded) {
				// Our epoch is stale, or a peer is unreachable: a new epoch
				// is likely on its way. Wait for it, but not forever.
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				g.cfg.Views.WaitNewer(wctx, v.Epoch)
				cancel()
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("gateway: %s: %w (last error: %v)", what, proto.ResNetworkError, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway: %s: %w (last error: %v)", what, proto.ResNetworkError, last)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// errFenced: this node is cut off from the metadata quorum (Config.Fenced).
var errFenced = proto.NewError(proto.ResHalt, "gateway: this node is cut off from the metadata quorum")

func (g *Gateway) fenced() bool { return g.cfg.Fenced != nil && g.cfg.Fenced() }

func (g *Gateway) peerCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, g.cfg.PeerTimeout)
}

func nop() {}

// legsCtx is what the legs of one mutation attempt run under: ctx without
// its cancellation or deadline, bounded by PeerTimeout instead. A leg
// dropped half way, by an initiator's ABORT TASK or a session that ended,
// while the others land would leave copies that disagree within one
// epoch, which recovery never repairs (it compares epochs). So once an
// attempt starts, every leg runs to its end or to the timeout; the
// caller's cancellation stops further attempts, and an abort completes
// only once the medium no longer changes, as SAM asks. One timer serves
// every leg, this node's own included (its recovery guard may fetch from
// a peer).
func (g *Gateway) legsCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), g.cfg.PeerTimeout)
}

// nodeCtx is peerCtx for an attempt against node n. This node's own store
// gets the caller's context: PeerTimeout is there so that a hung peer costs
// a retry, and a local disk that hangs is not helped by one (nor would a
// deadline interrupt its system call), so the timer per local request was
// pure cost.
func (g *Gateway) nodeCtx(ctx context.Context, n placement.Node) (context.Context, context.CancelFunc) {
	if n.ID == g.cfg.Self {
		return ctx, nop
	}
	return g.peerCtx(ctx)
}

// targets returns the nodes holding o's copies or strips in view v. For EC
// objects there is always one entry per strip: with fewer zones than strips
// some nodes hold several strips (redundancy is reduced until nodes return).
func targets(v *View, o Object) ([]placement.Node, error) {
	return targetsInto(nil, v, o)
}

// tbuf holds the targets of an object of up to 4 copies without
// allocating; more spill to the heap.
type tbuf [4]placement.Node

// targetsInto is targets appending to dst (normally a tbuf's [:0]).
func targetsInto(dst []placement.Node, v *View, o Object) ([]placement.Node, error) {
	n := int(o.Red.NrCopies())
	if n == 0 {
		n = 1
	}
	t := v.Ring.AppendTargets(dst, o.OID, n)
	if len(t) == 0 {
		return nil, ErrNoTargets
	}
	if o.Red.IsEC() && len(t) < n {
		w := make([]placement.Node, n)
		for i := range w {
			w[i] = t[i%len(t)]
		}
		t = w
	}
	return t, nil
}

// writeTargets is targets, refusing in strict mode when the object cannot
// get all its copies on distinct zones.
func (g *Gateway) writeTargets(dst []placement.Node, v *View, o Object) ([]placement.Node, error) {
	ts, err := targetsInto(dst, v, o)
	if err != nil {
		return nil, err
	}
	if g.cfg.Strict != nil && g.cfg.Strict() && len(v.Ring.Zones()) < int(max(o.Red.NrCopies(), 1)) {
		return nil, fmt.Errorf("gateway: %d zones alive, %s needs %d (strict mode): %w", len(v.Ring.Zones()), o.OID, o.Red.NrCopies(), proto.ResHalt)
	}
	return ts, nil
}

func (g *Gateway) markDirty(nodes ...placement.Node) {
	g.mu.Lock()
	for _, n := range nodes {
		g.dirty[n.ID] = n
	}
	g.mu.Unlock()
}

// fanout runs fn for every target in parallel and returns the first
// non-retryable error, else the first error.
func fanout(ts []placement.Node, fn func(i int, n placement.Node) error) error {
	if len(ts) == 1 {
		return fn(0, ts[0])
	}
	var ebuf [8]error
	errs := ebuf[:0]
	if len(ts) > len(ebuf) {
		errs = make([]error, 0, len(ts))
	}
	errs = errs[:len(ts)]
	var wg sync.WaitGroup
	last := len(ts) - 1
	for i, n := range ts[:last] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, n)
		}()
	}
	// The last leg runs here: one goroutine less per request.
	errs[last] = fn(last, ts[last])
	wg.Wait()
	var first error
	for _, err := range errs {
		if err != nil && !retryable(err) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// Create makes the object (zero-filled) with data at off on every copy.
// An existing object is replaced.
func (g *Gateway) Create(ctx context.Context, o Object, off uint32, data []byte, sync bool) error {
	return g.create(ctx, o, off, data, sync, false)
}

// CreateExclusive is Create for an object nobody should have created yet
// (allocation of a volume's object). If some copy exists already — another
// gateway allocated it at the same time — it returns ErrExists after
// creating the missing copies, and the caller writes its range instead, so
// concurrent allocations never wipe each other's data.
func (g *Gateway) CreateExclusive(ctx context.Context, o Object, off uint32, data []byte, sync bool) error {
	return g.create(ctx, o, off, data, sync, true)
}

// ErrExists reports an exclusive create of an existing object.
var ErrExists = proto.NewError(proto.ResOIDExist, "gateway: object exists")

func (g *Gateway) create(ctx context.Context, o Object, off uint32, data []byte, sync, excl bool) error {
	if err := checkRange(o, off, len(data)); err != nil {
		return err
	}
	if o.Red.IsEC() {
		op := ECCreate
		if excl {
			op = ECCreateExcl
		}
		return g.ecRoute(ctx, o, op, off, uint32(len(data)), data, sync)
	}
	return g.retry(ctx, opName{op: "create", oid: o.OID}, func(ctx context.Context, v *View) error {
		var tb tbuf
		ts, err := g.writeTargets(tb[:0], v, o)
		if err != nil {
			return err
		}
		var existed atomic.Bool
		lctx, cancel := g.legsCtx(ctx)
		defer cancel()
		err = fanout(ts, func(_ int, n placement.Node) error {
			err := g.cfg.Peers.Peer(n).Create(lctx, v.Epoch, store.ReplicaKey(o.OID), o.Size, off, data, sync, excl)
			if excl && errors.Is(err, proto.ResOIDExist) {
				existed.Store(true)
				return nil
			}
			return err
		})
		if err == nil {
			g.markDirty(ts...)
			if existed.Load() {
				return ErrExists
			}
		}
		return err
	})
}

// Write writes data at off into the existing object on every copy.
func (g *Gateway) Write(ctx context.Context, o Object, off uint32, data []byte, sync bool) error {
	if err := checkRange(o, off, len(data)); err != nil {
		return err
	}
	if o.Red.IsEC() {
		return g.ecRoute(ctx, o, ECWrite, off, uint32(len(data)), data, sync)
	}
	var sums []uint32 // computed once for all copies, when there are several
	return g.retry(ctx, opName{op: "write", oid: o.OID}, func(ctx context.Context, v *View) error {
		var tb tbuf
		ts, err := g.writeTargets(tb[:0], v, o)
		if err != nil {
			return err
		}
		if sums == nil && len(ts) > 1 && off%store.SumBlock == 0 && len(data) >= store.SumBlock {
			sums = store.BlockSums(make([]uint32, 0, len(data)/store.SumBlock), data)
		}
		lctx, cancel := g.legsCtx(ctx)
		defer cancel()
		err = fanout(ts, func(_ int, n placement.Node) error {
			return g.cfg.Peers.Peer(n).Write(lctx, v.Epoch, store.ReplicaKey(o.OID), off, data, sums, sync)
		})
		if errors.Is(err, proto.ResNoObj) && len(ts) > 1 {
			err = g.rebuildMissing(lctx, v, o, ts, off, data, sync)
		}
		if err == nil {
			g.markDirty(ts...)
		}
		return err
	})
}

// rebuildMissing handles a write that found no copy on some target. It
// writes the range again to each target, one at a time (the write is
// idempotent, and overlapping writes are ordered by the caller), to learn
// which have none. On none of them the object does not exist (discarded,
// or never allocated): ResNoObj, and the caller allocates. On some only,
// those copies are missing where they should be (a create torn by a
// crash, a lost file); each is rebuilt whole from a copy that took the
// write, as an EC write rebuilds a missing strip. Recreating it with the
// written range alone would leave zeros where the object holds
// acknowledged data, served by every read that prefers that copy. If
// another write rebuilt it first, this write's range is written into it.
func (g *Gateway) rebuildMissing(ctx context.Context, v *View, o Object, ts []placement.Node, off uint32, data []byte, sync bool) error {
	k := store.ReplicaKey(o.OID)
	var src placement.Node // a value, not &ts[i]: ts must not escape
	have := false
	missing := make([]bool, len(ts))
	n := 0
	for i, t := range ts {
		switch err := g.cfg.Peers.Peer(t).Write(ctx, v.Epoch, k, off, data, nil, sync); {
		case errors.Is(err, proto.ResNoObj):
			missing[i] = true
			n++
		case err != nil:
			return err
		case !have:
			src, have = t, true
		}
	}
	switch {
	case n == 0:
		return nil // created meanwhile (another write's rebuild)
	case !have:
		return fmt.Errorf("gateway: write %s: %w", o.OID, proto.ResNoObj)
	}
	full := make([]byte, o.Size)
	if err := g.cfg.Peers.Peer(src).Read(ctx, v.Epoch, k, 0, full); err != nil {
		return fmt.Errorf("gateway: rebuild missing copy of %s: read from %s: %w", o.OID, src.Addr, err)
	}
	return fanout(ts, func(i int, t placement.Node) error {
		if !missing[i] {
			return nil
		}
		p := g.cfg.Peers.Peer(t)
		err := p.Create(ctx, v.Epoch, k, o.Size, 0, full, sync, true)
		if errors.Is(err, proto.ResOIDExist) {
			return p.Write(ctx, v.Epoch, k, off, data, nil, sync)
		}
		if err == nil {
			g.log.Warn("copy was missing: rebuilt from another", "oid", o.OID, "holder", t.Addr, "from", src.Addr)
		}
		return err
	})
}

// Zero makes [off, off+n) of the object read as zeros on every copy.
func (g *Gateway) Zero(ctx context.Context, o Object, off, n uint32, sync bool) error {
	if err := checkRange(o, off, int(n)); err != nil {
		return err
	}
	if o.Red.IsEC() {
		return g.ecRoute(ctx, o, ECZero, off, n, nil, sync)
	}
	return g.retry(ctx, opName{op: "zero", oid: o.OID}, func(ctx context.Context, v *View) error {
		var tb tbuf
		ts, err := g.writeTargets(tb[:0], v, o)
		if err != nil {
			return err
		}
		lctx, cancel := g.legsCtx(ctx)
		defer cancel()
		err = fanout(ts, func(_ int, node placement.Node) error {
			return g.cfg.Peers.Peer(node).Zero(lctx, v.Epoch, store.ReplicaKey(o.OID), off, n, sync)
		})
		if err == nil {
			g.markDirty(ts...)
		}
		return err
	})
}

// Discard frees an object its VDI no longer refers to (a whole-object
// UNMAP/trim, an index entry cleared): callers discard it before the index
// lets go of it. It punches the object whole rather than removing it. A
// removal carries no epoch: a holder that was away during it would bring
// its old copy back on its return, and the next allocation of the slot
// would find that copy and keep its stale bytes; an all-hole copy of a
// newer epoch wins recovery instead, and a crash before the index update
// leaves an object that reads as zeros. An object that is already gone is
// fine.
func (g *Gateway) Discard(ctx context.Context, o Object, sync bool) error {
	if err := g.Zero(ctx, o, 0, o.Size, sync); err != nil && !errors.Is(err, proto.ResNoObj) {
		return err
	}
	return nil
}

// Remove deletes every copy (or strip) of the object.
func (g *Gateway) Remove(ctx context.Context, o Object) error {
	return g.retry(ctx, opName{op: "remove", oid: o.OID}, func(ctx context.Context, v *View) error {
		ts, err := targets(v, o)
		if err != nil {
			return err
		}
		lctx, cancel := g.legsCtx(ctx)
		defer cancel()
		return fanout(ts, func(i int, n placement.Node) error {
			k := store.ReplicaKey(o.OID)
			if o.Red.IsEC() {
				k = store.StripKey(o.OID, uint8(i))
			}
			err := g.cfg.Peers.Peer(n).Remove(lctx, v.Epoch, k)
			if errors.Is(err, proto.ResNoObj) {
				return nil
			}
			return err
		})
	})
}

// Read fills p from off. Replicas: the local copy if this node holds one,
// else a random copy, falling back to the others; a copy that fails its
// checksum is repaired from a good one in the background.
func (g *Gateway) Read(ctx context.Context, o Object, off uint32, p []byte) error {
	if err := checkRange(o, off, len(p)); err != nil {
		return err
	}
	if o.Red.IsEC() {
		return g.ecRead(ctx, o, off, p)
	}
	return g.retry(ctx, opName{op: "read", oid: o.OID}, func(ctx context.Context, v *View) error {
		var tb, ob tbuf
		ts, err := targetsInto(tb[:0], v, o)
		if err != nil {
			return err
		}
		order := readOrder(ob[:0], ts, g.cfg.Self)
		var first error
		var bad, absent []placement.Node
		allNoObj := true
		for _, n := range order {
			pctx, cancel := g.nodeCtx(ctx, n)
			err := g.cfg.Peers.Peer(n).Read(pctx, v.Epoch, store.ReplicaKey(o.OID), off, p)
			cancel()
			if err == nil {
				if len(bad) > 0 || len(absent) > 0 {
					g.repair(o, v, n, bad, absent)
				}
				return nil
			}
			// A missing copy is never the answer while another copy may
			// exist (unreachable or corrupt): only all missing is a hole.
			if errors.Is(err, proto.ResNoObj) {
				absent = append(absent, n)
			} else {
				allNoObj = false
				if errors.Is(err, store.ErrCorrupt) || proto.ResultOf(err) == proto.ResEIO {
					bad = append(bad, n)
				}
				if first == nil || (retryable(first) && !retryable(err)) {
					first = err
				}
			}
			if ctx.Err() != nil {
				break
			}
		}
		if allNoObj {
			return fmt.Errorf("gateway: read %s: %w", o.OID, proto.ResNoObj)
		}
		return first
	})
}

// ErrNotLocal: this node holds no copy of the object that it can lend
// (ReadPinned); read it with Read.
var ErrNotLocal = errors.New("gateway: no local copy to lend")

// PinnedPeer is a Peer that can lend a verified, pinned range of its copy
// (store.PinnedReader): this node's own store.
type PinnedPeer interface {
	ReadPinned(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error)
}

// PipedPeer is a Peer on another node that can hand over a verified range
// of its copy staged in a kernel pipe (sendfile.Pipe), for the front end
// to relay to its client without copying it through this node's memory.
type PipedPeer interface {
	ReadPiped(ctx context.Context, epoch uint32, k store.Key, off, n uint32) (*store.Raw, error)
}

// ReadPinned lends [off, off+n) of a replicated object, verified, for the
// caller to send without copying it and then Release: pinned in this
// node's copy, or, when this node holds none, staged in a pipe from one
// other copy (PipedPeer), picked at random as Read picks. It makes one
// attempt: ErrNotLocal when there is nothing to lend from (erasure
// coding, no peer that can pipe), and any other error (a rotten or
// missing copy, no view yet, a peer down) is for the caller to answer
// with Read, which tries every copy and repairs.
func (g *Gateway) ReadPinned(ctx context.Context, o Object, off, n uint32) (*store.Raw, error) {
	if err := checkRange(o, off, int(n)); err != nil {
		return nil, err
	}
	v := g.cfg.Views.View()
	if o.Red.IsEC() || v == nil {
		return nil, ErrNotLocal
	}
	if g.fenced() {
		return nil, errFenced // Read waits for the quorum
	}
	var tb tbuf
	ts, err := targetsInto(tb[:0], v, o)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		if t.ID != g.cfg.Self {
			continue
		}
		pp, ok := g.cfg.Peers.Peer(t).(PinnedPeer)
		if !ok {
			break
		}
		raw, err := pp.ReadPinned(ctx, v.Epoch, store.ReplicaKey(o.OID), off, n)
		if err == nil {
			g.cfg.Recorder.LentRead("local")
		}
		return raw, err
	}
	if len(ts) == 0 {
		return nil, ErrNotLocal
	}
	t := ts[rand.IntN(len(ts))]
	if t.ID == g.cfg.Self { // a local copy its peer cannot lend
		return nil, ErrNotLocal
	}
	pp, ok := g.cfg.Peers.Peer(t).(PipedPeer)
	if !ok {
		return nil, ErrNotLocal
	}
	// Bounded as any attempt against a peer is: a hung holder costs the
	// fallback Read, not the caller's whole deadline.
	pctx, cancel := g.peerCtx(ctx)
	defer cancel()
	raw, err := pp.ReadPiped(pctx, v.Epoch, store.ReplicaKey(o.OID), off, n)
	if err == nil {
		g.cfg.Recorder.LentRead("relayed")
	}
	return raw, err
}

// readOrder puts the local copy first, then the rest in random order.
func readOrder(out, ts []placement.Node, self string) []placement.Node {
	for _, n := range ts {
		if n.ID == self {
			out = append(out, n)
		}
	}
	start := len(out)
	for _, n := range ts {
		if n.ID != self {
			out = append(out, n)
		}
	}
	rest := out[start:]
	rand.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return out
}

// repair heals the copies on bad nodes from the good node's copy: each
// replaces only its blocks that fail their checksums (Peer.Heal), so a
// write that reaches a bad copy after the good one was read here is kept.
func (g *Gateway) repair(o Object, v *View, good placement.Node, bad, absent []placement.Node) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		buf := make([]byte, o.Size)
		if err := g.cfg.Peers.Peer(good).Read(ctx, v.Epoch, store.ReplicaKey(o.OID), 0, buf); err != nil {
			g.log.Warn("read repair: source read failed", "oid", o.OID, "node", good.ID, "err", err)
			return
		}
		for _, b := range bad {
			err := g.cfg.Peers.Peer(b).Heal(ctx, v.Epoch, store.ReplicaKey(o.OID), 0, buf, true)
			g.log.Warn("read repair", "oid", o.OID, "node", b.ID, "from", good.ID, "err", err)
			if err == nil {
				g.cfg.Recorder.ReadRepair()
			}
		}
		// A copy missing where the others exist (a create torn by a crash,
		// a lost file) is created whole, and only if still missing: a
		// write that finds it missing meanwhile rebuilds it itself
		// (rebuildMissing), and its bytes must not be replaced by ours.
		for _, b := range absent {
			err := g.cfg.Peers.Peer(b).Create(ctx, v.Epoch, store.ReplicaKey(o.OID), o.Size, 0, buf, true, true)
			if errors.Is(err, proto.ResOIDExist) {
				continue
			}
			g.log.Warn("read repair: copy was missing", "oid", o.OID, "node", b.ID, "from", good.ID, "err", err)
			if err == nil {
				g.cfg.Recorder.ReadRepair()
			}
		}
	}()
}

// PeerTimeout is how long one attempt against one peer may take: a
// mutation's leg that started has landed or been given up after it.
func (g *Gateway) PeerTimeout() time.Duration { return g.cfg.PeerTimeout }

// Flush makes every write acknowledged so far durable on every node written.
func (g *Gateway) Flush(ctx context.Context) error {
	g.mu.Lock()
	nodes := make([]placement.Node, 0, len(g.dirty))
	for _, n := range g.dirty {
		nodes = append(nodes, n)
	}
	clear(g.dirty)
	g.mu.Unlock()
	if len(nodes) == 0 {
		return nil
	}
	// Retried like any operation: a node that died is unreachable until
	// the epoch without it, and then it is no longer synced.
	err := g.retry(ctx, opName{op: "flush"}, func(ctx context.Context, v *View) error {
		nodes = members(v, nodes)
		if len(nodes) == 0 {
			return nil
		}
		failed := make([]bool, len(nodes))
		err := fanout(nodes, func(i int, n placement.Node) error {
			pctx, cancel := g.nodeCtx(ctx, n)
			defer cancel()
			err := g.cfg.Peers.Peer(n).Sync(pctx)
			failed[i] = err != nil
			return err
		})
		// What is synced now need not be again: writes since marked it
		// dirty anew.
		kept := nodes[:0]
		for i, n := range nodes {
			if failed[i] {
				kept = append(kept, n)
			}
		}
		nodes = kept
		return err
	})
	if err != nil {
		// Keep them dirty: the next flush must try again.
		g.markDirty(nodes...)
		return fmt.Errorf("gateway: flush: %w", err)
	}
	return nil
}

// members returns the nodes of ns that are members of v. A node that left
// the cluster holds no copy that counts any more: recovery rebuilds its
// objects from the members' copies, which every write reached as well
// and a flush syncs. Syncing it instead failed every flush through this
// gateway until it came back.
func members(v *View, ns []placement.Node) []placement.Node {
	return slices.DeleteFunc(ns, func(n placement.Node) bool { return !v.Ring.Has(n.ID) })
}

func checkRange(o Object, off uint32, n int) error {
	if uint64(off)+uint64(n) > uint64(o.Size) {
		return fmt.Errorf("gateway: %s: range %d+%d beyond object size %d: %w", o.OID, off, n, o.Size, proto.ResInvalidParms)
	}
	return nil
}

// stripeLocks serialise erasure-coded read-modify-writes per object on the
// primary without an unbounded lock map.
type stripeLocks [256]sync.Mutex

func (l *stripeLocks) lock(oid proto.OID) func() {
	m := &l[proto.HashOID(oid)%uint64(len(l))]
	m.Lock()
	return m.Unlock
}
