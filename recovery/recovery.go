// Package recovery brings a node's objects in line with the placement of
// the current epoch: after every membership change each node fetches (or,
// for erasure-coded strips, rebuilds) the objects it should now hold,
// catching up only copies that changed while it was away, stashes copies it
// should no longer hold, and purges those only when every member of the
// epoch has finished. Client I/O to an object not verified yet waits for
// that object alone (Guard), so nobody reads an outdated copy.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/internal/atomicfile"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// Entry is one copy of an object (or strip) on some node.
type Entry struct {
	Key   store.Key `json:"key"`
	Size  uint32    `json:"size"`
	Epoch uint32    `json:"epoch"`           // epoch of the copy's last mutation: higher is newer
	Stale uint32    `json:"stale,omitempty"` // 0: live copy; else the epoch it was stashed at
}

// Local is this node's store as recovery needs it.
type Local interface {
	store.Store
	Stash(ctx context.Context, k store.Key, epoch uint32) error
	Unstash(ctx context.Context, k store.Key, epoch uint32) error
	ListStale(ctx context.Context) ([]store.StaleInfo, error)
	ReadStale(ctx context.Context, k store.Key, epoch uint32, off uint32, p []byte) error
	PurgeStale(ctx context.Context, k store.Key, epoch uint32) error
}

// Remote reaches other nodes' stores (bypassing their recovery guards).
type Remote interface {
	// List returns every copy, live and stale, the node at addr holds.
	List(ctx context.Context, addr string) ([]Entry, error)
	// Stat returns the copies (live and stale, any strip) of oid at addr.
	Stat(ctx context.Context, addr string, oid proto.OID) ([]Entry, error)
	// Read reads from the copy e at addr.
	Read(ctx context.Context, addr string, e Entry, off uint32, p []byte) error
}

// Shape tells how an object is protected.
type Shape struct {
	Red  proto.Redundancy
	Size uint32 // full object size
}

// Codec rebuilds strips (package erasure).
type Codec interface {
	// Reconstruct fills the nil chunks from the others (all the same length).
	Reconstruct(chunks [][]byte) error
}

// Epoch is what recovery needs to know about an epoch.
type Epoch struct {
	Epoch   uint32
	Ring    *placement.Ring
	Members []placement.Node // live members (addresses to list)
}

// Config configures a Recoverer.
type Config struct {
	Self   string
	Local  Local
	Remote Remote
	// Shape describes oid's object; ok=false for objects of unknown VDIs
	// (not recovered); garbage=true for objects of reclaimed VDIs (stashed).
	Shape func(oid proto.OID) (s Shape, ok, garbage bool)
	Codec func(data, parity int) (Codec, error)
	// Done reports that this node finished recovering epoch e.
	Done func(ctx context.Context, e uint32) error
	// Throttle returns the byte rate limit (0 = none) and concurrency.
	Throttle func() (rate uint64, workers int)
	// Disabled suspends background recovery (on-demand recovery for I/O goes on).
	Disabled func() bool
	// StateDir keeps the last fully recovered epoch across restarts.
	StateDir string
	Logger   *slog.Logger
	// Observe, if set, is told about each object recovered (bytes, error).
	Observe func(bytes int, err error)
}

// Status is a snapshot of recovery progress.
type Status struct {
	Epoch     uint32    `json:"epoch"`     // epoch being (or last) recovered
	Recovered uint32    `json:"recovered"` // last epoch fully recovered
	Active    bool      `json:"active"`
	Planned   bool      `json:"planned"`
	Queued    int64     `json:"queued"`
	Done      int64     `json:"done"`
	Failed    int64     `json:"failed"`
	Bytes     uint64    `json:"bytes"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Paused    string    `json:"paused,omitempty"` // why background work waits (disabled, disk full)
	Stashed   int64     `json:"stashed"`
}

// Recoverer runs recovery for one node.
type Recoverer struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	epoch     *Epoch
	recovered uint32
	verified  map[store.Key]bool // keys settled for epoch before the plan exists
	pending   map[store.Key]bool // after the plan: keys still to recover
	planned   bool
	cancel    context.CancelFunc
	status    Status
	keyLocks  [512]sync.Mutex
	runWG     sync.WaitGroup

	queued, done, failed, stashed atomic.Int64
	bytes                         atomic.Uint64
}

// New returns a Recoverer; call Start for each new epoch.
func New(cfg Config) *Recoverer {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Recoverer{cfg: cfg, log: cfg.Logger.With("sub", "recovery"), verified: map[store.Key]bool{}}
	r.recovered = r.loadRecovered()
	return r
}

func (r *Recoverer) statePath() string { return filepath.Join(r.cfg.StateDir, "recovered-epoch") }

func (r *Recoverer) loadRecovered() uint32 {
	if r.cfg.StateDir == "" {
		return 0
	}
	b, err := os.ReadFile(r.statePath())
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	return uint32(v)
}

func (r *Recoverer) saveRecovered(e uint32) error {
	if r.cfg.StateDir == "" {
		return nil
	}
	return atomicfile.Write(r.statePath(), []byte(strconv.FormatUint(uint64(e), 10)+"\n"), 0o644)
}

// Status reports progress.
func (r *Recoverer) Status() Status {
	r.mu.Lock()
	s := r.status
	s.Recovered = r.recovered
	s.Planned = r.planned
	r.mu.Unlock()
	s.Queued, s.Done, s.Failed, s.Bytes, s.Stashed = r.queued.Load(), r.done.Load(), r.failed.Load(), r.bytes.Load(), r.stashed.Load()
	return s
}

// Complete reports whether the current epoch is fully recovered here.
func (r *Recoverer) Complete() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch != nil && r.recovered >= r.epoch.Epoch
}

// Start begins recovery for e, cancelling the run for an older epoch. If
// this node already finished e (a restart), nothing is done.
func (r *Recoverer) Start(e *Epoch) {
	r.mu.Lock()
	if r.epoch != nil && r.epoch.Epoch >= e.Epoch {
		r.mu.Unlock()
		return
	}
	if r.cancel != nil {
		r.cancel()
	}
	r.epoch = e
	r.verified = map[store.Key]bool{}
	r.pending = nil
	r.planned = false
	r.status = Status{Epoch: e.Epoch, Active: r.recovered < e.Epoch, Started: time.Now()}
	r.queued.Store(0)
	r.done.Store(0)
	r.failed.Store(0)
	r.bytes.Store(0)
	r.stashed.Store(0)
	if r.recovered >= e.Epoch {
		r.planned = true
		r.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.runWG.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.runWG.Done()
		r.run(ctx, e)
	}()
}

// Close stops background work.
func (r *Recoverer) Close() {
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	r.mu.Unlock()
	r.runWG.Wait()
}

func (r *Recoverer) lockKey(k store.Key) func() {
	h := proto.HashOID(k.OID) + uint64(k.ECIndex)
	m := &r.keyLocks[h%uint64(len(r.keyLocks))]
	m.Lock()
	return m.Unlock
}

// settled reports whether k needs no work in the current epoch.
func (r *Recoverer) settled(k store.Key) (bool, *Epoch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epoch == nil || r.recovered >= r.epoch.Epoch {
		return true, r.epoch
	}
	if r.planned {
		return !r.pending[k], r.epoch
	}
	return r.verified[k], r.epoch
}

func (r *Recoverer) settle(e *Epoch, k store.Key) {
	r.mu.Lock()
	if r.epoch == e {
		r.verified[k] = true
		delete(r.pending, k)
	}
	r.mu.Unlock()
}

// Guard runs op on local key k once k is known to be current here: if the
// epoch's recovery has not settled k yet, k is recovered first (objects
// clients ask for jump the queue).
func (r *Recoverer) Guard(ctx context.Context, k store.Key, op func() error) error {
	if ok, _ := r.settled(k); ok {
		return op()
	}
	unlock := r.lockKey(k)
	defer unlock()
	ok, e := r.settled(k)
	if !ok {
		if err := r.ensureOne(ctx, e, k); err != nil {
			return err
		}
	}
	return op()
}

// targetsOf returns the nodes holding oid's copies or strips in e.
func targetsOf(e *Epoch, oid proto.OID, s Shape) []placement.Node {
	n := int(s.Red.NrCopies())
	if n == 0 {
		n = 1
	}
	t := e.Ring.Targets(oid, n)
	if s.Red.IsEC() && len(t) > 0 && len(t) < n {
		w := make([]placement.Node, n)
		for i := range w {
			w[i] = t[i%len(t)]
		}
		t = w
	}
	return t
}

// holding is one copy found somewhere.
type holding struct {
	addr string // "" = this node
	e    Entry
}

// wanted returns the keys this node must hold for oid in e.
func (r *Recoverer) wanted(e *Epoch, oid proto.OID, s Shape) []store.Key {
	var ks []store.Key
	for i, t := range targetsOf(e, oid, s) {
		if t.ID != r.cfg.Self {
			continue
		}
		if s.Red.IsEC() {
			ks = append(ks, store.StripKey(oid, uint8(i)))
		} else {
			ks = append(ks, store.ReplicaKey(oid))
			break
		}
	}
	return ks
}

// bestEpoch is the newest mutation epoch among the copies of oid.
func bestEpoch(hs []holding) uint32 {
	var b uint32
	for _, h := range hs {
		b = max(b, h.e.Epoch)
	}
	return b
}

// targetEpoch is the version of an object recovery makes current. For
// replicas it is the newest epoch of any copy. For erasure coding it is the
// newest epoch at which at least Data distinct strips exist anywhere (live
// or stashed): every mutation writes every strip, so a completed one left
// at least Data of them behind unless more than Parity were lost since.
// Strips of a newer epoch are what a mutation left half way; too few to
// decode, they are rolled back to the target rather than left inconsistent
// with their siblings, which would block every later rebuild. Without any
// decodable epoch it is the newest one (and recovery finds too few strips).
func targetEpoch(hs []holding, s Shape) uint32 {
	best := bestEpoch(hs)
	if !s.Red.IsEC() {
		return best
	}
	strips := map[uint32]map[uint8]bool{}
	for _, h := range hs {
		i := h.e.ECIndex()
		if !h.e.Key.EC || int(i) >= int(s.Red.NrCopies()) {
			continue
		}
		if strips[h.e.Epoch] == nil {
			strips[h.e.Epoch] = map[uint8]bool{}
		}
		strips[h.e.Epoch][i] = true
	}
	var t uint32
	for e, m := range strips {
		if len(m) >= int(s.Red.Data) && e > t {
			t = e
		}
	}
	if t == 0 {
		return best
	}
	return t
}

// isCurrent reports whether a live copy of epoch e needs no recovery when
// target is the object's target epoch: a replica at least as new, a strip
// of exactly that version (a newer strip is rolled back).
func isCurrent(e, target uint32, s Shape) bool {
	if s.Red.IsEC() {
		return e == target
	}
	return e >= target
}

// ensureOne recovers k on demand by asking every member about its object.
func (r *Recoverer) ensureOne(ctx context.Context, e *Epoch, k store.Key) error {
	s, ok, _ := r.cfg.Shape(k.OID)
	if !ok {
		return nil // unknown object: nothing to compare with; serve as is
	}
	hs, err := r.gather(ctx, e, k.OID, s)
	if err != nil {
		return err
	}
	if err := r.recoverKey(ctx, e, k, s, hs); err != nil {
		return err
	}
	r.settle(e, k)
	return nil
}

// gather collects the copies of oid on every member (and locally).
func (r *Recoverer) gather(ctx context.Context, e *Epoch, oid proto.OID, s Shape) ([]holding, error) {
	hs, err := r.localHoldings(ctx, oid, s)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, m := range e.Members {
		if m.ID == r.cfg.Self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			es, err := r.cfg.Remote.Stat(ctx, m.Addr.String(), oid)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
				return
			}
			for _, x := range es {
				hs = append(hs, holding{addr: m.Addr.String(), e: x})
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		// A member we cannot ask may hold the newest copy: refuse to
		// decide (the caller retries) rather than serve stale data.
		return nil, fmt.Errorf("recovery: gather %s: %w: %w", oid, errors.Join(errs...), proto.ResNetworkError)
	}
	return hs, nil
}

func (r *Recoverer) localHoldings(ctx context.Context, oid proto.OID, s Shape) ([]holding, error) {
	var hs []holding
	for _, k := range candidateKeys(oid, s) {
		info, err := r.cfg.Local.Stat(ctx, k)
		if err == nil {
			hs = append(hs, holding{e: Entry{Key: k, Size: info.Size, Epoch: info.Epoch}})
		}
	}
	stale, err := r.cfg.Local.ListStale(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range stale {
		if st.Key.OID == oid {
			hs = append(hs, holding{e: Entry{Key: st.Key, Size: st.Size, Epoch: st.ObjEpoch, Stale: st.Epoch}})
		}
	}
	return hs, nil
}

// candidateKeys lists the local keys oid may be stored under.
func candidateKeys(oid proto.OID, s Shape) []store.Key {
	if !s.Red.IsEC() {
		return []store.Key{store.ReplicaKey(oid)}
	}
	ks := make([]store.Key, 0, s.Red.NrCopies())
	for i := 0; i < int(s.Red.NrCopies()); i++ {
		ks = append(ks, store.StripKey(oid, uint8(i)))
	}
	return ks
}

// recoverKey makes the local copy k current given every known copy of its object.
func (r *Recoverer) recoverKey(ctx context.Context, e *Epoch, k store.Key, s Shape, hs []holding) error {
	best := targetEpoch(hs, s)
	var local *holding
	for i := range hs {
		h := &hs[i]
		if h.addr == "" && h.e.Stale == 0 && h.e.Key == k {
			local = h
		}
	}
	if local != nil && isCurrent(local.e.Epoch, best, s) {
		return nil // current already: the common case after a short outage
	}
	// Sources: copies of exactly k with the newest epoch, local stale first.
	var src []holding
	for _, h := range hs {
		if h.e.Key == k && h.e.Epoch == best {
			src = append(src, h)
		}
	}
	sort.SliceStable(src, func(i, j int) bool { return src[i].addr == "" && src[j].addr != "" })
	for _, h := range src {
		// Our own stashed copy is current: put it back instead of copying.
		if h.addr == "" && h.e.Stale != 0 && local == nil {
			if err := r.cfg.Local.Unstash(ctx, k, h.e.Stale); err == nil {
				r.observe(0, nil)
				return nil
			}
		}
	}
	var lastErr error
	for _, h := range src {
		buf := make([]byte, h.e.Size)
		if err := r.read(ctx, h, buf); err != nil {
			lastErr = err
			continue
		}
		if err := r.install(ctx, k, buf, best); err != nil {
			return err
		}
		r.bytes.Add(uint64(len(buf)))
		r.observe(len(buf), nil)
		return nil
	}
	if s.Red.IsEC() {
		if n := currentStrips(hs, k, best, s); len(src) == 0 && n < int(s.Red.Data) {
			// Nobody holds this strip and too few of its siblings exist
			// to rebuild it (never fully written, or their holders are
			// away): nothing to recover in this epoch. Retrying cannot
			// help; the next membership change plans it again.
			r.log.Warn("recovery: strip cannot be rebuilt, too few strips exist", "oid", k.OID, "strip", k.ECIndex,
				"strips", n, "need", s.Red.Data, "holdings", fmtHoldings(hs))
			return nil
		}
		if err := r.rebuildStrip(ctx, k, s, hs, best); err == nil {
			return nil
		} else {
			lastErr = err
		}
	}
	if len(hs) == 0 {
		return nil // the object exists nowhere: nothing to recover
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no current copy of %s reachable", k.OID)
	}
	r.observe(0, lastErr)
	// The copies listed were there a moment ago: one has moved (stashed by
	// a node that no longer holds it) or its holder did not answer. A
	// guarded request gets a retryable error, and its next attempt lists
	// the copies afresh, instead of failing the client with EIO.
	return fmt.Errorf("recovery: %v: %w", lastErr, proto.ResNodeInRecovery)
}

func (r *Recoverer) observe(n int, err error) {
	if r.cfg.Observe != nil {
		r.cfg.Observe(n, err)
	}
}

func (r *Recoverer) read(ctx context.Context, h holding, buf []byte) error {
	if h.addr != "" {
		return r.cfg.Remote.Read(ctx, h.addr, h.e, 0, buf)
	}
	if h.e.Stale != 0 {
		return r.cfg.Local.ReadStale(ctx, h.e.Key, h.e.Stale, 0, buf)
	}
	return r.cfg.Local.Read(ctx, h.e.Key, 0, buf)
}

// install publishes a recovered copy atomically, tagged with its epoch so
// later comparisons see it as current.
func (r *Recoverer) install(ctx context.Context, k store.Key, data []byte, epoch uint32) error {
	return r.cfg.Local.Create(ctx, k, uint32(len(data)), 0, data, store.WriteOpts{Epoch: epoch})
}

// currentStrips counts the distinct strips of the object other than k
// that exist somewhere with the newest epoch.
func currentStrips(hs []holding, k store.Key, best uint32, s Shape) int {
	seen := map[uint8]bool{}
	for _, h := range hs {
		i := h.e.ECIndex()
		if h.e.Key.EC && int(i) < int(s.Red.NrCopies()) && i != k.ECIndex && h.e.Epoch == best {
			seen[i] = true
		}
	}
	return len(seen)
}

// rebuildStrip decodes strip k from any data-count current strips.
func (r *Recoverer) rebuildStrip(ctx context.Context, k store.Key, s Shape, hs []holding, best uint32) error {
	d, p := int(s.Red.Data), int(s.Red.Parity)
	c, err := r.cfg.Codec(d, p)
	if err != nil {
		return err
	}
	chunks := make([][]byte, d+p)
	have := 0
	for _, h := range hs {
		i := int(h.e.ECIndex())
		if !h.e.Key.EC || i >= d+p || h.e.Epoch != best || chunks[i] != nil || i == int(k.ECIndex) {
			continue
		}
		buf := make([]byte, h.e.Size)
		if err := r.read(ctx, h, buf); err != nil {
			continue
		}
		chunks[i] = buf
		have++
		if have == d {
			break
		}
	}
	if have < d {
		return fmt.Errorf("recovery: only %d of %d strips of %s readable: %w", have, d, k.OID, proto.ResEIO)
	}
	if err := c.Reconstruct(chunks); err != nil {
		return fmt.Errorf("recovery: rebuild strip %d of %s: %w", k.ECIndex, k.OID, err)
	}
	out := chunks[k.ECIndex]
	if err := r.install(ctx, k, out, best); err != nil {
		return err
	}
	r.bytes.Add(uint64(len(out)))
	r.observe(len(out), nil)
	return nil
}

// ECIndex is the strip index of an EC entry.
func (e Entry) ECIndex() uint8 { return e.Key.ECIndex }

// RepairLocal repairs this node's copy of k (found corrupt by a scrub or a
// read) from a current copy on another node, or rebuilds an EC strip from
// the others. A replica is healed (store.Healer), not replaced: only its
// rotten blocks change.
func (r *Recoverer) RepairLocal(ctx context.Context, k store.Key) error {
	r.mu.Lock()
	e := r.epoch
	r.mu.Unlock()
	if e == nil {
		return fmt.Errorf("recovery: no epoch yet: %w", proto.ResWaitForFormat)
	}
	s, ok, _ := r.cfg.Shape(k.OID)
	if !ok {
		return fmt.Errorf("recovery: repair %s: unknown object: %w", k.OID, proto.ResNoObj)
	}
	unlock := r.lockKey(k)
	defer unlock()
	hs, err := r.gather(ctx, e, k.OID, s)
	if err != nil {
		return err
	}
	others := hs[:0:0]
	for _, h := range hs {
		if h.addr == "" && h.e.Key == k {
			continue // the copy being repaired: not a source
		}
		others = append(others, h)
	}
	if len(others) == 0 {
		return fmt.Errorf("recovery: repair %s: no other copy: %w", k.OID, proto.ResEIO)
	}
	if hl, ok := r.cfg.Local.(store.Healer); ok && !k.EC {
		return r.healLocal(ctx, hl, k, others)
	}
	return r.recoverKey(ctx, e, k, s, others)
}

// healLocal reads a copy of replica k with the newest epoch from another
// holder and heals this node's copy from it. Writes keep arriving here
// while the other copy is read; a block they replaced verifies and is
// kept, where installing the other copy whole would put back what they
// replaced.
func (r *Recoverer) healLocal(ctx context.Context, hl store.Healer, k store.Key, hs []holding) error {
	best := bestEpoch(hs)
	lastErr := fmt.Errorf("recovery: repair %s: no current copy elsewhere: %w", k.OID, proto.ResEIO)
	for _, h := range hs {
		if h.e.Key != k || h.e.Epoch != best {
			continue
		}
		buf := make([]byte, h.e.Size)
		if err := r.read(ctx, h, buf); err != nil {
			lastErr = err
			continue
		}
		n, err := hl.Heal(ctx, k, 0, buf, store.WriteOpts{Epoch: best})
		if err != nil {
			return fmt.Errorf("recovery: repair %s: %w", k.OID, err)
		}
		r.bytes.Add(uint64(n) * store.SumBlock)
		r.observe(n*store.SumBlock, nil)
		return nil
	}
	r.observe(0, lastErr)
	return lastErr
}
