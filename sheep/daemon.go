// Package sheep is the gosheep daemon: it wires the store, cluster,
// gateway, volume layer and front ends of one node together.
package sheep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/erasure"
	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/internal/atomicfile"
	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/target/native"
	"github.com/gosheep/gosheep/units"
	"github.com/gosheep/gosheep/volume"
)

// Daemon is a running node.
type Daemon struct {
	cfg     Config
	r       *resolved
	log     *slog.Logger
	store   *store.Disk
	node    *cluster.Node
	pool    *client.Pool
	views   *views
	gw      *gateway.Gateway
	vols    *volume.Manager
	h       *handler
	peers   *peers // this node's store and every other node's, by placement node
	srv     *native.Server
	ln      net.Listener
	fe      frontEnds
	codecs  *erasure.Codecs
	rec     *recovery.Recoverer
	metrics *metrics.Metrics

	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	leave    bool

	replayed chan struct{} // closed once the Raft log present at boot is applied
	// fmtMu serialises checkFormat; fmtCtime is the format the store was
	// last reconciled with (I/O waits until it matches the table's).
	fmtMu    sync.Mutex
	fmtCtime atomic.Uint64
	// reconciled is closed once afterReplay has reconciled the store with
	// the format (wiping it for a new one).
	reconciled chan struct{}
	gcKick     chan struct{} // a VDI was reclaimed: look for its leftovers
	convKick   chan struct{} // a node left, or recovery ended: a converge pass is due
	// unclean: the previous run of this node did not stop cleanly (see
	// markRunning); started: this run did start, so a clean stop says so.
	unclean, started bool
}

// codecs adapts package erasure to the gateway.
type codecs struct{ cs *erasure.Codecs }

func (c codecs) Codec(d, p int) (gateway.Codec, error) { return c.cs.Get(d, p) }

// Start brings a node up and returns once it serves.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir()
	}
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if err := erasure.SelfTest(); err != nil {
		return nil, fmt.Errorf("erasure codec self-test failed, refusing to start: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	d := &Daemon{cfg: cfg, r: r, log: cfg.Logger, done: make(chan struct{}), replayed: make(chan struct{}),
		reconciled: make(chan struct{}), gcKick: make(chan struct{}, 1), convKick: make(chan struct{}, 1)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			d.shutdown()
		}
	}()

	d.store, err = store.Open(filepath.Join(cfg.Dir, "store"), store.Options{Capacity: cfg.Capacity, Logger: d.log})
	if err != nil {
		return nil, err
	}
	// The store's lock is ours now: no other sheep uses the marker.
	if d.unclean, err = markRunning(cfg.Dir); err != nil {
		return nil, err
	}
	space := uint64(0)
	if !cfg.Gateway {
		u, err := d.store.Usage()
		if err != nil {
			return nil, err
		}
		space = u.Capacity
		if cfg.Capacity == 0 { // measured, not given
			space = d.stableSpace(space)
		}
	}
	d.ln, err = net.Listen("tcp", r.listen.String())
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", r.listen, err)
	}
	d.pool = client.NewPool(4)
	d.views = newViews()
	d.node, err = cluster.Start(ctx, cluster.Config{
		DataDir: cfg.Dir, Addr: r.listen, RaftAddr: r.raft, GossipAddr: r.gossip, Join: cfg.Join,
		Zone: r.zone, Space: space, EncryptKey: r.key, Voters: cfg.Voters,
		Forwarder: &forwarder{pool: d.pool}, Logger: d.log, EpochDelay: cfg.EpochDelay,
		Tags: d.frontEndTags(), OnEvent: d.onEvent,
	})
	if err != nil {
		return nil, err
	}
	d.log = d.log.With("node", d.node.ID())
	local := &localPeer{}
	d.peers = &peers{self: d.node.ID(), local: local, pool: d.pool, pipes: sendfile.NewPipes(relayPipes)}
	d.codecs = &erasure.Codecs{}
	d.metrics = metrics.New(metrics.NewRegistry(), d)
	d.gw = gateway.New(gateway.Config{
		Self: d.node.ID(), Views: d.views, Codecs: codecs{d.codecs}, Logger: d.log,
		Peers: d.peers, Recorder: d.metrics,
		Strict: func() bool {
			var on bool
			d.node.FSM().Read(func(s *cluster.State) { on = s.Format != nil && s.Format.Flags&proto.ClusterFlagStrict != 0 })
			return on
		},
		Settled: d.views.Settled,
		// iSCSI and NBD as well as the sheepdog protocol (whose gate
		// answers HALT at once): a minority serves no reads either.
		Fenced: func() bool { return !d.node.Healthy() },
	})
	d.vols = volume.NewManager(volume.Config{Meta: metaOf{d}, Objects: d.gw, Logger: d.log})
	d.h = &handler{node: d.node, vols: d.vols, gw: d.gw, store: d.store, log: d.log, kill: d.kill, started: time.Now(),
		everywhere: d.syncMembers}
	local.h = d.h
	d.rec = d.newRecoverer()
	d.h.guard = d.rec.Guard
	d.h.recoveryStatus = d.rec.Status
	d.h.ready = d.ready
	d.h.vnodes = func(id string) int {
		if v := d.views.View(); v != nil {
			return v.Ring.Vnodes(id)
		}
		return 0
	}
	d.h.check = d.volumeCheck
	d.h.served = func() uint32 {
		if v := d.views.View(); v != nil {
			return v.Epoch
		}
		return 0
	}
	// Front ends first: the metadata watcher and the native handler use
	// the iSCSI server, which must exist before either runs.
	if err := d.startFrontEnds(); err != nil {
		return nil, err
	}
	d.node.FSM().Watch(d.watch)
	// The FSM may have applied everything before Watch was registered.
	st := d.node.FSM().State()
	d.views.update(st)
	d.vols.Changed(nil, st)

	d.srv = native.NewServer(native.Config{Handler: d.h, Logger: d.log, Recorder: d.recorder()})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.srv.Serve(d.ctx, d.ln); err != nil && d.ctx.Err() == nil {
			d.log.Error("native server stopped", "err", err)
		}
	}()
	d.wg.Add(3)
	go func() { defer d.wg.Done(); d.afterReplay() }()
	go func() { defer d.wg.Done(); d.collectGarbageLoop() }()
	go func() { defer d.wg.Done(); d.vols.RunReclaimer(d.ctx, 30*time.Second, d.node.IsLeader) }()
	if cfg.ScrubRate > 0 {
		every := cfg.ScrubInterval
		if every <= 0 {
			every = 24 * time.Hour
		}
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.scrub(d.ctx, cfg.ScrubRate, every) }()
	}
	if cfg.ConvergeInterval > 0 {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.converge(d.ctx, cfg.ConvergeInterval) }()
	}
	if err := d.embeddedDefaults(ctx); err != nil {
		return nil, err
	}
	ok = true
	d.started = true
	d.log.Info("sheep started", "listen", r.listen, "raft", r.raft, "gossip", r.gossip, "dir", cfg.Dir)
	return d, nil
}

func (d *Daemon) frontEndTags() map[string]string {
	t := map[string]string{}
	if d.cfg.ISCSI != "" {
		t["iscsi"] = d.cfg.ISCSI
	}
	if d.cfg.NBD != "" {
		t["nbd"] = d.cfg.NBD
	}
	if d.cfg.Metrics != "" {
		t["metrics"] = d.cfg.Metrics
	}
	return t
}

// metaOf adapts the cluster node to volume.Meta.
type metaOf struct{ d *Daemon }

func (m metaOf) Read(fn func(s *cluster.State)) { m.d.node.FSM().Read(fn) }
func (m metaOf) Propose(ctx context.Context, c *cluster.Command) (*cluster.Result, error) {
	return m.d.node.Propose(ctx, c)
}
func (m metaOf) Decide(ctx context.Context, c *cluster.Command) (*cluster.Result, error) {
	return m.d.node.Decide(ctx, c)
}
func (m metaOf) Everywhere(ctx context.Context, index uint64) { m.d.syncMembers(ctx, index) }

// watch reacts to committed metadata changes.
func (d *Daemon) watch(old, cur *cluster.State, c *cluster.Command, r *cluster.Result) {
	live := d.isReplayed()
	newEpoch := old == nil || cur.Epoch() != old.Epoch()
	if live && newEpoch {
		// Recovery learns the epoch before the gateway serves it: a request
		// of the new epoch must never reach a copy recovery has not settled.
		// A new format's wipe comes first, or it would wipe what recovery
		// fetched.
		if c == nil || c.Op == cluster.CmdFormat {
			d.checkFormat(cur)
		}
		d.views.record(cur)
		d.startRecovery(cur)
	}
	d.views.update(cur)
	d.vols.Changed(old, cur)
	if !live {
		return
	}
	if c == nil || c.Op == cluster.CmdFormat {
		d.checkFormat(cur)
	}
	if newEpoch {
		if d.metrics != nil {
			d.metrics.EpochChange()
		}
		d.startRecovery(cur)
		if nodeLeft(old, cur) {
			// It may have died writing: its writes may have reached some
			// copies and not others.
			d.kickConverge()
		}
	}
	if c == nil || c.Op == cluster.CmdRecoveryDone {
		d.maybePurge(cur)
	}
	if c != nil && c.Op == cluster.CmdRecoveryDone && cur.Current() != nil && recoveredAll(cur, cur.Current()) {
		// Copies recovery has just made are comparable now (the pass
		// after a departure skipped objects with one missing).
		d.kickConverge()
	}
	if c != nil && c.Op == cluster.CmdResv && r.Code == proto.ResSuccess {
		d.installResv(cur, c.VID)
	} else if c == nil {
		for vid := range cur.Resv {
			d.installResv(cur, vid)
		}
	}
	if c != nil && c.Op == cluster.CmdReclaimed {
		d.kickGarbage()
	}
	if c != nil && c.Op == cluster.CmdShutdown && r.Code == proto.ResSuccess {
		d.log.Info("cluster shutdown requested")
		// Let in-flight answers (the shutdown request itself, forwarded
		// commands) reach their callers before the listeners close.
		time.AfterFunc(time.Second, d.Stop)
	}
}

// kickConverge brings the next converge pass forward.
func (d *Daemon) kickConverge() {
	select {
	case d.convKick <- struct{}{}:
	default: // a pass is due already
	}
}

// nodeLeft reports whether a member of old's epoch is not in cur's.
func nodeLeft(old, cur *cluster.State) bool {
	if old == nil || old.Current() == nil || cur.Current() == nil {
		return false
	}
	in := map[string]bool{}
	for _, m := range cur.Current().Members {
		in[m.ID] = true
	}
	for _, m := range old.Current().Members {
		if !in[m.ID] {
			return true
		}
	}
	return false
}

// isReplayed reports whether the node caught up with the cluster's
// metadata since it started.
func (d *Daemon) isReplayed() bool {
	select {
	case <-d.replayed:
		return true
	default:
		return false
	}
}

// ready reports whether the node may serve I/O: caught up, and its store
// reconciled with the current format. The FSM publishes a format before
// its watcher has wiped the objects of the previous one; an object created
// in between would be wiped with them.
func (d *Daemon) ready() bool {
	if !d.isReplayed() {
		return false
	}
	var ctime uint64
	d.node.FSM().Read(func(s *cluster.State) {
		if s.Format != nil {
			ctime = s.Format.Ctime
		}
	})
	return ctime == 0 || d.fmtCtime.Load() == ctime
}

// afterReplay waits until the node has caught up with the cluster's
// metadata (replaying its own log first), then reconciles the store with
// the current format and starts recovery. Changes applied before that are
// history, not events to act on.
func (d *Daemon) afterReplay() {
	for d.ctx.Err() == nil && !d.node.CaughtUp() {
		time.Sleep(10 * time.Millisecond)
	}
	st := d.node.FSM().State()
	d.checkFormat(st)
	close(d.reconciled)
	// The guard must know the epoch before the first request is served.
	d.startRecovery(st)
	close(d.replayed)
	// A format or epoch committed meanwhile was not acted on (not live yet).
	st = d.node.FSM().State()
	d.checkFormat(st)
	d.startRecovery(st)
	d.maybePurge(st)
	if d.unclean {
		d.announceUnclean()
	}
}

// nodeConfig is what a node remembers about the cluster its store belongs to.
type nodeConfig struct {
	Ctime uint64 `json:"ctime"`
	// Space is the capacity this node advertised last (stableSpace).
	Space uint64 `json:"space,omitempty"`
}

// spaceDrift is how far the measured capacity may move from the one
// advertised last before a start advertises the new one.
const spaceDrift = 0.05

// stableSpace is the capacity to advertise given the measured one: the
// capacity advertised last time while the measured one is within
// spaceDrift of it. Capacity measured on a file system (what sheep's
// objects use plus what is free) drifts as the Raft log, file-system
// metadata and other files grow; capacity weighs placement, so a new value
// would make every restart a new epoch that moves some objects.
func (d *Daemon) stableSpace(measured uint64) uint64 {
	var nc nodeConfig
	if b, err := os.ReadFile(d.configPath()); err == nil {
		json.Unmarshal(b, &nc)
	}
	if nc.Space != 0 && math.Abs(float64(measured)-float64(nc.Space)) <= spaceDrift*float64(nc.Space) {
		return nc.Space
	}
	nc.Space = measured
	b, _ := json.Marshal(nc)
	if err := atomicfile.Write(d.configPath(), b, 0o644); err != nil {
		d.log.Warn("remembering the advertised capacity", "err", err)
	}
	return measured
}

func (d *Daemon) configPath() string { return filepath.Join(d.cfg.Dir, "config.json") }

// checkFormat wipes the store when the cluster was (re)formatted since the
// objects here were written, as sheep does on MAKE_FS.
func (d *Daemon) checkFormat(s *cluster.State) {
	if s.Format == nil {
		return
	}
	d.fmtMu.Lock()
	defer d.fmtMu.Unlock()
	if d.fmtCtime.Load() == s.Format.Ctime {
		return
	}
	var nc nodeConfig
	if b, err := os.ReadFile(d.configPath()); err == nil {
		json.Unmarshal(b, &nc)
	}
	if nc.Ctime == s.Format.Ctime {
		d.fmtCtime.Store(s.Format.Ctime)
		return
	}
	ctx := d.ctx
	objs, err := d.store.List(ctx)
	if err != nil {
		d.log.Error("format: cannot list store", "err", err)
		return
	}
	for _, o := range objs {
		if err := d.store.Remove(ctx, o.Key); err != nil {
			d.log.Error("format: cannot remove object", "oid", o.Key.OID, "err", err)
			return
		}
	}
	if len(objs) > 0 {
		d.log.Info("cluster formatted: removed old objects", "count", len(objs))
	}
	nc.Ctime = s.Format.Ctime
	b, _ := json.Marshal(nc)
	atomicfile.Write(d.configPath(), b, 0o644)
	d.fmtCtime.Store(s.Format.Ctime)
}

// embeddedDefaults formats an unformatted cluster and creates a VDI when asked
// (the README's one-command start).
func (d *Daemon) embeddedDefaults(ctx context.Context) error {
	if d.cfg.AutoFormat == "" && d.cfg.CreateVDI == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for !d.node.IsLeader() {
		if _, _, ok := d.node.Leader(); ok {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no raft leader to format with: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if d.cfg.AutoFormat != "" && d.node.FSM().State().Format == nil {
		red, err := proto.ParseRedundancy(d.cfg.AutoFormat)
		if err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		f := &cluster.Format{Copies: red.NrCopies(), CopyPolicy: red.Policy(), BlockSizeShift: proto.DefaultBSS}
		r, err := d.node.Propose(ctx, &cluster.Command{Op: cluster.CmdFormat, Format: f, Members: []cluster.Member{d.node.Self()},
			MetaVersion: cluster.MetaVersion})
		if err != nil {
			return fmt.Errorf("format: %w", err)
		}
		if err := r.Err(); err != nil && !errors.Is(err, proto.ResVDIExist) {
			return fmt.Errorf("format: %w", err)
		}
		d.log.Info("formatted cluster", "copies", red)
	}
	// On a new node the format is the first command, and only once it is
	// applied does afterReplay reconcile the store with it, wiping what is
	// there: the volume's inode must be written after that, not before.
	select {
	case <-d.reconciled:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the store to be reconciled with the format: %w", ctx.Err())
	}
	if d.cfg.CreateVDI != "" {
		name, sz, ok := strings.Cut(d.cfg.CreateVDI, ":")
		size, err := units.ParseSize(sz)
		if !ok || name == "" || err != nil {
			return fmt.Errorf("--create %q: want NAME:SIZE such as vol0:10G", d.cfg.CreateVDI)
		}
		if _, err := d.vols.Lookup(name, "", 0); err == nil {
			return nil
		}
		if _, err := d.vols.Create(ctx, volume.CreateOpts{Name: name, Size: size}); err != nil && !errors.Is(err, proto.ResVDIExist) {
			return fmt.Errorf("create %s: %w", name, err)
		}
		d.log.Info("created vdi", "name", name, "size", size)
	}
	return nil
}

// Node exposes the cluster node (tests).
func (d *Daemon) Node() *cluster.Node { return d.node }

// Done is closed when the daemon has stopped.
func (d *Daemon) Done() <-chan struct{} { return d.done }

func (d *Daemon) kill() {
	d.leave = true
	d.Stop()
}

// Stop shuts the node down and waits for it.
func (d *Daemon) Stop() {
	d.stopOnce.Do(func() {
		d.shutdown()
		close(d.done)
	})
}

func (d *Daemon) shutdown() {
	if d.cancel != nil {
		d.cancel()
	}
	d.stopFrontEnds()
	if d.srv != nil {
		d.srv.Close()
	}
	if d.ln != nil {
		d.ln.Close()
	}
	if d.node != nil {
		if d.leave {
			d.node.Leave()
		}
		d.node.Close()
	}
	if d.rec != nil {
		d.rec.Close()
	}
	d.wg.Wait()
	if d.pool != nil {
		d.pool.Close()
	}
	if d.peers != nil {
		d.peers.pipes.Close()
	}
	if d.store != nil {
		// Closed cleanly after a run: the next start is not after a crash.
		if err := d.store.Close(); err == nil && d.started {
			if err := os.Remove(runningPath(d.cfg.Dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.log.Warn("removing the running marker", "err", err)
			}
		}
	}
}

var _ io.Closer = (*store.Disk)(nil)

// relayPipes bounds the pipes (sendfile.PipeSize each, 32 MiB in all)
// staging remote reads for the front ends: the reads in flight of a few
// busy initiators. Past it, or past the user's pipe budget, reads are
// copied.
const relayPipes = 64

// recorder is the metrics.Recorder front ends report to.
func (d *Daemon) recorder() metrics.Recorder {
	if d.metrics == nil {
		return metrics.Nop{}
	}
	return d.metrics
}

// metricsHandler serves /metrics.
func (d *Daemon) metricsHandler() http.Handler {
	if d.metrics == nil {
		return http.NotFoundHandler()
	}
	return d.metrics.Handler()
}

func timeSince(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return time.Since(t).Seconds()
}
