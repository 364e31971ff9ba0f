package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"

	"github.com/gosheep/gosheep/proto"
)

// Sentinel errors.
var (
	ErrNotLeader  = proto.NewError(proto.ResAgain, "cluster: not the raft leader")
	ErrNoLeader   = proto.NewError(proto.ResAgain, "cluster: no raft leader elected")
	ErrFenced     = proto.NewError(proto.ResHalt, "cluster: node lost contact with the metadata quorum")
	ErrClosed     = proto.NewError(proto.ResShutdown, "cluster: node is shutting down")
	ErrNotAMember = proto.NewError(proto.ResNotFound, "cluster: no such member")
)

// Forwarder carries a command to another node (the leader) and back.
type Forwarder interface {
	Forward(ctx context.Context, addr netip.AddrPort, c *Command) (*Result, error)
}

// Config configures a cluster node.
type Config struct {
	ID         string         // stable node id; empty: read or create DataDir/node-id
	DataDir    string         // raft state lives in DataDir/raft
	Addr       netip.AddrPort // native protocol address peers and clients use
	RaftAddr   netip.AddrPort // raft transport address
	GossipAddr netip.AddrPort // serf address (TCP and UDP)
	Join       []string       // gossip addresses of existing members
	Zone       uint32
	Space      uint64            // capacity in bytes (0: gateway only)
	EncryptKey []byte            // serf gossip key (16, 24 or 32 bytes), optional
	Voters     int               // raft voters to keep; 0: automatic (see voterTarget)
	Tags       map[string]string // extra serf tags (front-end addresses...)
	Forwarder  Forwarder
	Logger     *slog.Logger
	// OnEvent, if set, is called with the name of every event a member
	// (this one included) sent with Broadcast, one at a time, in the order
	// received. It must not block. Names it does not know must be ignored:
	// newer members may send events older ones do not know.
	OnEvent func(name string)

	// Timing (zero: defaults suited to a LAN).
	EpochDelay time.Duration // how long a membership change must hold before a new epoch
	Lease      time.Duration // how long a follower serves I/O without hearing from the leader
	Reconcile  time.Duration // leader's reconcile period
}

// Node is one member: Serf gossip, a Raft replica (voter or not) and the FSM.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	stores    io.Closer
	logs      raft.LogStore
	serf      *serf.Serf
	events    chan serf.Event
	bootIndex uint64

	mu      sync.Mutex
	closed  bool
	pending map[string]time.Time // desired-member-set fingerprint -> first seen
	peers   []string             // last remembered peer addresses (leader loop only)
	// warnedOld: members already reported as too old for the cluster.
	warnedOld map[string]bool
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// LoadOrCreateID returns the node id stored in dir, creating one if absent.
func LoadOrCreateID(dir string) (string, error) {
	p := filepath.Join(dir, "node-id")
	if b, err := os.ReadFile(p); err == nil {
		id := strings.TrimSpace(string(b))
		if id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("cluster: read node id: %w", err)
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(r[:])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if err := os.WriteFile(p, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("cluster: write node id: %w", err)
	}
	return id, nil
}

// Start brings the node up: Raft (bootstrapping a one-node cluster when
// there is no state and nothing to join) and Serf.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.EpochDelay == 0 {
		cfg.EpochDelay = time.Second
	}
	if cfg.Lease == 0 {
		cfg.Lease = 3 * time.Second
	}
	if cfg.Reconcile == 0 {
		cfg.Reconcile = 500 * time.Millisecond
	}
	if cfg.ID == "" {
		id, err := LoadOrCreateID(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		cfg.ID = id
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), fsm: NewFSM(), pending: map[string]time.Time{}}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	if err := n.startSerf(); err != nil {
		n.raft.Shutdown().Error()
		n.transport.Close()
		n.stores.Close()
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(1)
	go n.leaderLoop(lctx)
	return n, nil
}

func (n *Node) startRaft() error {
	dir := filepath.Join(n.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.ID)
	rc.HeartbeatTimeout = time.Second
	rc.ElectionTimeout = time.Second
	rc.LeaderLeaseTimeout = 500 * time.Millisecond
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 2048
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: newLibLog(n.log)})

	bolt, err := openBoltStore(filepath.Join(dir, "raft.db"))
	if err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, rc.Logger)
	if err != nil {
		bolt.Close()
		return fmt.Errorf("cluster: open raft snapshots: %w", err)
	}
	adv := net.TCPAddrFromAddrPort(n.cfg.RaftAddr)
	tr, err := raft.NewTCPTransportWithLogger(n.cfg.RaftAddr.String(), adv, 4, 5*time.Second, rc.Logger)
	if err != nil {
		bolt.Close()
		return fmt.Errorf("cluster: raft transport on %s: %w", n.cfg.RaftAddr, err)
	}
	existing, err := raft.HasExistingState(bolt, bolt, snaps)
	if err != nil {
		bolt.Close()
		tr.Close()
		return fmt.Errorf("cluster: %w", err)
	}
	r, err := raft.NewRaft(rc, n.fsm, bolt, bolt, snaps, tr)
	if err != nil {
		bolt.Close()
		tr.Close()
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	n.raft, n.transport, n.stores, n.logs = r, tr, bolt, bolt
	n.bootIndex = r.LastIndex()
	if !existing && len(n.cfg.Join) == 0 {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: tr.LocalAddr(),
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("cluster: bootstrap: %w", err)
		}
	}
	return nil
}

func (n *Node) startSerf() error {
	sc := serf.DefaultConfig()
	sc.NodeName = n.cfg.ID
	sc.Tags = map[string]string{
		"addr":         n.cfg.Addr.String(),
		"raft":         n.cfg.RaftAddr.String(),
		"zone":         fmt.Sprint(n.cfg.Zone),
		"space":        fmt.Sprint(n.cfg.Space),
		metaVersionTag: fmt.Sprint(MetaVersion),
	}
	for k, v := range n.cfg.Tags {
		sc.Tags[k] = v
	}
	mc := sc.MemberlistConfig
	*mc = *memberlistLocal()
	mc.Name = n.cfg.ID
	mc.BindAddr = n.cfg.GossipAddr.Addr().String()
	mc.BindPort = int(n.cfg.GossipAddr.Port())
	mc.AdvertiseAddr = mc.BindAddr
	mc.AdvertisePort = mc.BindPort
	mc.SecretKey = n.cfg.EncryptKey
	mc.Logger = nil
	mc.LogOutput = newLibLog(n.log.With("sub", "memberlist"))
	sc.LogOutput = newLibLog(n.log.With("sub", "serf"))
	sc.ReapInterval = 5 * time.Second
	sc.ReconnectTimeout = 24 * time.Hour
	sc.TombstoneTimeout = time.Hour
	n.events = make(chan serf.Event, 256)
	sc.EventCh = n.events
	sc.SnapshotPath = filepath.Join(n.cfg.DataDir, "serf.snapshot")
	sc.RejoinAfterLeave = true
	s, err := serf.Create(sc)
	if err != nil {
		return fmt.Errorf("cluster: start serf on %s: %w", n.cfg.GossipAddr, err)
	}
	n.serf = s
	join := n.cfg.Join
	if len(join) == 0 && len(s.Members()) < 2 {
		// Serf's snapshot rejoin found nobody: try the peers we remember.
		join = n.loadPeers()
	}
	if len(join) > 0 {
		if _, err := s.Join(join, true); err != nil {
			// Not fatal: peers may start later.
			n.log.Warn("join failed, will retry", "join", join, "err", err)
			n.wg.Add(1)
			go n.retryJoin(join)
		}
	}
	return nil
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.ID }

// Self is this node as an epoch member.
func (n *Node) Self() Member {
	return Member{ID: n.cfg.ID, Addr: n.cfg.Addr, Zone: n.cfg.Zone, Space: n.cfg.Space}
}

// FSM exposes the replicated state.
func (n *Node) FSM() *FSM { return n.fsm }

// BootIndex is the last Raft index present when the node started; commands
// at or below it are replays of history.
func (n *Node) BootIndex() uint64 { return n.bootIndex }

// CaughtUp reports whether this node knows a leader and its FSM has applied
// everything the leader told it is committed: the state it serves from is
// the cluster's, not a replay of its own old log.
func (n *Node) CaughtUp() bool {
	if _, id := n.raft.LeaderWithID(); id == "" {
		return false
	}
	ci := n.raft.CommitIndex()
	if ci == 0 {
		return false
	}
	applied := n.fsm.AppliedIndex()
	if applied >= ci {
		return true
	}
	// Entries the FSM never sees (a new leader's no-op, configuration
	// changes, barriers) can end the log: caught up when Raft has handed
	// everything to the FSM and none of the rest is a command. A restarted
	// single node would otherwise wait for a command nobody proposes.
	if n.raft.AppliedIndex() < ci || ci-applied > 64 {
		return false
	}
	for i := applied + 1; i <= ci; i++ {
		var l raft.Log
		if err := n.logs.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand {
			return false
		}
	}
	return true
}

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's id and native address, if known.
func (n *Node) Leader() (string, netip.AddrPort, bool) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return "", netip.AddrPort{}, false
	}
	if string(id) == n.cfg.ID {
		return n.cfg.ID, n.cfg.Addr, true
	}
	for _, m := range n.serf.Members() {
		if m.Name == string(id) {
			if ap, err := netip.ParseAddrPort(m.Tags["addr"]); err == nil {
				return string(id), ap, true
			}
		}
	}
	return string(id), netip.AddrPort{}, false
}

// Healthy reports whether this node may serve I/O: it is the leader, or it
// heard from the leader within the lease. A node cut off from the quorum
// stops serving before the majority side can move its data elsewhere.
func (n *Node) Healthy() bool {
	switch n.raft.State() {
	case raft.Leader:
		return true
	case raft.Shutdown:
		return false
	}
	lc := n.raft.LastContact()
	return !lc.IsZero() && time.Since(lc) < n.cfg.Lease
}

// MemberStatus is a gossip member as dog shows it.
type MemberStatus struct {
	Member
	Status string            `json:"status"` // alive, failed, left, leaving
	Voter  bool              `json:"voter"`
	Leader bool              `json:"leader"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// Members lists every gossip member with its raft role.
func (n *Node) Members() []MemberStatus {
	roles := map[string]raft.ServerSuffrage{}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			roles[string(s.ID)] = s.Suffrage
		}
	}
	leaderID, _, _ := n.Leader()
	var out []MemberStatus
	for _, m := range n.serf.Members() {
		mm, ok := memberFromTags(m.Name, m.Tags)
		if !ok {
			continue
		}
		s, inRaft := roles[m.Name]
		out = append(out, MemberStatus{
			Member: mm, Status: m.Status.String(), Voter: inRaft && s == raft.Voter,
			Leader: m.Name == leaderID, Tags: m.Tags,
		})
	}
	return out
}

func memberFromTags(name string, tags map[string]string) (Member, bool) {
	ap, err := netip.ParseAddrPort(tags["addr"])
	if err != nil {
		return Member{}, false
	}
	var zone uint32
	var space uint64
	fmt.Sscan(tags["zone"], &zone)
	fmt.Sscan(tags["space"], &space)
	return Member{ID: name, Addr: ap, Zone: zone, Space: space}, true
}

// Propose commits c through Raft (forwarding to the leader when this node is
// not it) and waits until this node's FSM has applied it.
func (n *Node) Propose(ctx context.Context, c *Command) (*Result, error) {
	return n.propose(ctx, c, true)
}

// Decide commits c like Propose but returns the leader's result without
// waiting for this node to apply c: for commands that change nothing and
// whose answer is all the caller needs (CmdCheckWorking). A follower
// learns of a commit only with the leader's next append, which takes up
// to two CommitTimeouts when nothing else is being written.
func (n *Node) Decide(ctx context.Context, c *Command) (*Result, error) {
	return n.propose(ctx, c, false)
}

func (n *Node) propose(ctx context.Context, c *Command, apply bool) (*Result, error) {
	if c.Time == 0 {
		c.Time = time.Now().UnixNano()
	}
	backoff := 50 * time.Millisecond
	start := time.Now()
	for {
		r, err := n.proposeOnce(ctx, c)
		if err == nil {
			if apply && !n.waitApplied(ctx, r.Index) {
				return nil, ctx.Err()
			}
			return r, nil
		}
		if !errors.Is(err, proto.ResAgain) && !errors.Is(err, proto.ResNetworkError) {
			return nil, err
		}
		n.log.Debug("propose retry", "op", c.Op, "err", err)
		if !n.Healthy() && time.Since(start) > 3*n.cfg.Lease {
			// Cut off from the quorum: say so instead of hanging until the
			// caller gives up. A minority must not change metadata. Three
			// leases, not one: a cluster that is still electing its first
			// leader, or growing from one voter to two, is briefly
			// leaderless too, and a format right after start must wait it out.
			return nil, fmt.Errorf("cluster: %s: no metadata quorum reachable (last error: %v): %w", c.Op, err, ErrFenced)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: %s: %w (last error: %v)", c.Op, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (n *Node) proposeOnce(ctx context.Context, c *Command) (*Result, error) {
	if n.IsLeader() {
		return n.ApplyAsLeader(ctx, c)
	}
	id, addr, ok := n.Leader()
	if !ok || !addr.IsValid() {
		return nil, fmt.Errorf("%w (leader %q)", ErrNoLeader, id)
	}
	if n.cfg.Forwarder == nil {
		return nil, fmt.Errorf("cluster: no forwarder to reach leader %s: %w", id, proto.ResSystemError)
	}
	return n.cfg.Forwarder.Forward(ctx, addr, c)
}

// ApplyAsLeader commits c on this node, which must be the leader (the
// handler of a forwarded command calls it).
func (n *Node) ApplyAsLeader(ctx context.Context, c *Command) (*Result, error) {
	if n.raft.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("cluster: encode command: %w", err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrEnqueueTimeout) {
			return nil, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		if errors.Is(err, raft.ErrRaftShutdown) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("cluster: apply %s: %v: %w", c.Op, err, proto.ResClusterError)
	}
	r, ok := f.Response().(*Result)
	if !ok {
		return nil, fmt.Errorf("cluster: unexpected apply response %T: %w", f.Response(), proto.ResSystemError)
	}
	return r, nil
}

// waitApplied waits until the FSM itself has applied index (Raft's own
// AppliedIndex runs ahead of the FSM).
func (n *Node) waitApplied(ctx context.Context, index uint64) bool {
	return n.fsm.AppliedIndex() >= index || n.fsm.WaitApplied(index, ctx.Done())
}

// Barrier waits until this node has applied everything committed before the
// call (linearisable reads on the leader; on followers, a best effort).
func (n *Node) Barrier(ctx context.Context) error {
	if n.IsLeader() {
		return n.raft.Barrier(5 * time.Second).Error()
	}
	if !n.waitApplied(ctx, n.raft.CommitIndex()) {
		return ctx.Err()
	}
	return nil
}

// Leave gracefully leaves the gossip pool (the leader then drops the node
// from the next epoch at once, without waiting for failure detection).
func (n *Node) Leave() error { return n.serf.Leave() }

// Broadcast sends the named event to every live member, this one included
// (Config.OnEvent), by gossip. Best effort: a member down at the time
// misses it.
func (n *Node) Broadcast(name string) error {
	if err := n.serf.UserEvent(name, nil, false); err != nil {
		return fmt.Errorf("cluster: broadcast %q: %w", name, err)
	}
	return nil
}

// Close stops Serf and Raft.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	if n.cancel != nil {
		n.cancel()
	}
	err1 := n.serf.Shutdown()
	err2 := n.raft.Shutdown().Error()
	n.wg.Wait()
	n.transport.Close()
	err3 := n.stores.Close()
	return errors.Join(err1, err2, err3)
}
