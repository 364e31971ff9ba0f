package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
	"github.com/hashicorp/serf/serf"
)

// localForwarder delivers forwarded commands to in-process nodes by address.
type localForwarder struct {
	mu    sync.Mutex
	nodes map[netip.AddrPort]*Node
}

func (f *localForwarder) Forward(ctx context.Context, addr netip.AddrPort, c *Command) (*Result, error) {
	f.mu.Lock()
	n := f.nodes[addr]
	f.mu.Unlock()
	if n == nil {
		return nil, fmt.Errorf("no node at %s: %w", addr, proto.ResNetworkError)
	}
	return n.ApplyAsLeader(ctx, c)
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func startNode(t *testing.T, fw *localForwarder, dir string, id string, join []string, opts ...func(*Config)) (*Node, Config) {
	t.Helper()
	lo := netip.MustParseAddr("127.0.0.1")
	cfg := Config{
		ID: id, DataDir: dir,
		Addr:       netip.AddrPortFrom(lo, freePort(t)),
		RaftAddr:   netip.AddrPortFrom(lo, freePort(t)),
		GossipAddr: netip.AddrPortFrom(lo, freePort(t)),
		Join:       join, Zone: uint32(len(fw.nodes) + 1), Space: 1 << 30,
		Forwarder: fw, EpochDelay: 200 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fw.mu.Lock()
	fw.nodes[cfg.Addr] = n
	fw.mu.Unlock()
	return n, cfg
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startLeader starts node "a" alone and waits until it leads; it returns
// the node (closed when the test ends) and the join list for the others.
func startLeader(t *testing.T, fw *localForwarder) (*Node, []string) {
	t.Helper()
	a, acfg := startNode(t, fw, t.TempDir(), "a", nil)
	t.Cleanup(func() { a.Close() })
	waitFor(t, "a to lead", 10*time.Second, a.IsLeader)
	return a, []string{acfg.GossipAddr.String()}
}

func TestThreeNodesFormatCreateAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node raft test")
	}
	fw := &localForwarder{nodes: map[netip.AddrPort]*Node{}}
	a, join := startLeader(t, fw)
	b, _ := startNode(t, fw, t.TempDir(), "b", join)
	defer b.Close()
	c, _ := startNode(t, fw, t.TempDir(), "c", join)
	cClosed := false
	defer func() {
		if !cClosed {
			c.Close()
		}
	}()
	waitFor(t, "3 gossip members", 10*time.Second, func() bool { return len(a.Members()) == 3 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Format through a follower: the command is forwarded to the leader.
	ms := []Member{a.Self(), b.Self(), c.Self()}
	r, err := b.Propose(ctx, &Command{Op: CmdFormat, Format: &Format{Copies: 3, BlockSizeShift: 22}, Members: ms, MetaVersion: MetaVersion})
	if err != nil || r.Err() != nil {
		t.Fatalf("format: %v %v", err, r)
	}
	// Two concurrent creates of one name: exactly one wins.
	var wg sync.WaitGroup
	codes := make([]proto.Result, 2)
	for i, n := range []*Node{b, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := n.Propose(ctx, &Command{Op: CmdCreateVDI, Name: "vol", Size: 1 << 30})
			if err != nil {
				t.Errorf("create: %v", err)
				return
			}
			codes[i] = r.Code
		}()
	}
	wg.Wait()
	ok, exist := 0, 0
	for _, c := range codes {
		switch c {
		case proto.ResSuccess:
			ok++
		case proto.ResVDIExist:
			exist++
		}
	}
	if ok != 1 || exist != 1 {
		t.Fatalf("concurrent create results %v, want one success and one VDI_EXIST", codes)
	}
	// Every node sees the VDI after its own propose returned.
	for _, n := range []*Node{a, b, c} {
		waitFor(t, "vdi replicated", 5*time.Second, func() bool {
			found := false
			n.FSM().Read(func(s *State) { _, found = s.Working("vol") })
			return found
		})
	}
	// Decide through a follower returns the leader's answer.
	var vid uint32
	a.FSM().Read(func(s *State) {
		if v, ok := s.Working("vol"); ok {
			vid = v.VID
		}
	})
	for _, c := range []struct {
		vid  uint32
		want proto.Result
	}{{vid, proto.ResSuccess}, {vid + 1, proto.ResReadonly}} {
		r, err := b.Decide(ctx, &Command{Op: CmdCheckWorking, VID: c.vid})
		if err != nil || r.Code != c.want || r.Index == 0 {
			t.Fatalf("decide check_working %#x through a follower: %v %+v, want %v", c.vid, err, r, c.want)
		}
	}
	// The three members are voters; kill c: a new epoch without it follows.
	waitFor(t, "3 voters", 10*time.Second, func() bool {
		v := 0
		for _, m := range a.Members() {
			if m.Voter {
				v++
			}
		}
		return v == 3
	})
	epochBefore := a.FSM().State().Epoch()
	c.Close()
	cClosed = true
	waitFor(t, "epoch without c", 30*time.Second, func() bool {
		s := a.FSM().State()
		return s.Epoch() > epochBefore && len(s.Current().Members) == 2
	})
	// Metadata still commits with 2 of 3 voters.
	if r, err := b.Propose(ctx, &Command{Op: CmdCreateVDI, Name: "vol2", Size: 1 << 20}); err != nil || r.Err() != nil {
		t.Fatalf("create after failure: %v %v", err, r)
	}
}

func TestSingleNodeRestartKeepsState(t *testing.T) {
	fw := &localForwarder{nodes: map[netip.AddrPort]*Node{}}
	dir := t.TempDir()
	a, cfg := startNode(t, fw, dir, "solo", nil)
	waitFor(t, "leader", 10*time.Second, a.IsLeader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := a.Propose(ctx, &Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: []Member{a.Self()}, MetaVersion: MetaVersion}); err != nil || r.Err() != nil {
		t.Fatal(err, r)
	}
	r, err := a.Propose(ctx, &Command{Op: CmdCreateVDI, Name: "test", Size: 4 << 20})
	if err != nil || r.Err() != nil {
		t.Fatal(err, r)
	}
	if r.VID != 0x7c2b25 {
		t.Fatalf("vid %#x, want 0x7c2b25", r.VID)
	}
	last := a.FSM().AppliedIndex()
	a.Close()
	// Same identity and addresses: nothing changes, so nothing is proposed
	// and the log ends with the new term's no-op, which the FSM never sees.
	b, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	waitFor(t, "leader again", 10*time.Second, b.IsLeader)
	waitFor(t, "caught up with no new command", 10*time.Second, b.CaughtUp)
	if _, err := b.FSM().State().Lookup("test", "", 0); err != nil {
		t.Fatalf("state not replayed: %v", err)
	}
	if got := b.FSM().AppliedIndex(); got != last {
		t.Fatalf("applied index %d after restart, want %d (a command was proposed; the test no longer covers a log ending in a no-op)", got, last)
	}
}

func TestVoterTarget(t *testing.T) {
	for _, tc := range []struct {
		configured, alive, want int
	}{
		{0, 1, 3}, {0, 3, 3}, {0, 4, 3}, {0, 5, 5}, {0, 9, 5},
		{1, 5, 1}, {3, 6, 3}, {7, 4, 7},
	} {
		n := &Node{cfg: Config{Voters: tc.configured}}
		if got := n.voterTarget(tc.alive); got != tc.want {
			t.Errorf("voters %d, %d alive: target %d, want %d", tc.configured, tc.alive, got, tc.want)
		}
	}
}

// oldBuild makes a node advertise metadata version 1 (a build from before
// SCSI reservations); it runs this build's code otherwise.
func oldBuild(c *Config) { c.Tags = map[string]string{metaVersionTag: "1"} }

func inRaft(n *Node, id string) bool { return inConfiguration(n.raft, id) }

// A rolling upgrade: while an old build is a live member the cluster stays
// at its version and refuses reservations; once every live member runs
// this build the leader raises the version, and an old build that shows
// up afterwards is kept out of Raft and of the epoch.
func TestMetaVersionRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node raft test")
	}
	fw := &localForwarder{nodes: map[netip.AddrPort]*Node{}}
	a, join := startLeader(t, fw)
	// Three voters, so that metadata keeps its quorum when b goes.
	d, _ := startNode(t, fw, t.TempDir(), "d", join)
	defer d.Close()
	b, _ := startNode(t, fw, t.TempDir(), "b", join, oldBuild)
	bClosed := false
	defer func() {
		if !bClosed {
			b.Close()
		}
	}()
	waitFor(t, "3 gossip members", 10*time.Second, func() bool { return len(a.Members()) == 3 })
	if v := a.AliveMetaVersion(); v != 1 {
		t.Fatalf("alive metadata version %d with an old build up, want 1", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := a.Propose(ctx, &Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22},
		Members: []Member{a.Self(), d.Self(), b.Self()}, MetaVersion: a.AliveMetaVersion()})
	if err != nil || r.Err() != nil {
		t.Fatalf("format: %v %v", err, r)
	}
	resvCmd := func() *Command {
		return &Command{Op: CmdResv, VID: 7, Resv: &resv.Op{Kind: resv.OpReserve6, Nexus: "x"}}
	}
	time.Sleep(3 * a.cfg.Reconcile) // reconcile rounds with the old build alive
	if r, err := a.Propose(ctx, resvCmd()); err != nil || r.Code != proto.ResNoSupport {
		t.Fatalf("reservation with an old build alive: %v %v, want NO_SUPPORT", err, r)
	}
	b.Close()
	bClosed = true
	waitFor(t, "metadata version 2 once the old build is gone", 30*time.Second, func() bool {
		var v uint32
		a.FSM().Read(func(s *State) { v = s.MetaVersion })
		return v == MetaVersion
	})
	if r, err := a.Propose(ctx, resvCmd()); err != nil || r.Err() != nil {
		t.Fatalf("reservation after the upgrade: %v %v", err, r)
	}
	c, _ := startNode(t, fw, t.TempDir(), "c", join, oldBuild)
	defer c.Close()
	waitFor(t, "c gossips", 10*time.Second, func() bool {
		for _, m := range a.Members() {
			if m.Member.ID == "c" && m.Status == "alive" {
				return true
			}
		}
		return false
	})
	time.Sleep(5 * a.cfg.Reconcile)
	if inRaft(a, "c") {
		t.Fatal("an old build joined Raft after the cluster moved to a newer metadata version")
	}
	for _, m := range a.FSM().State().Current().Members {
		if m.ID == "c" {
			t.Fatal("an old build joined the epoch")
		}
	}
}

// TestRestartRejoinsRememberedPeers: a node restarted without a join
// address finds its peers through the addresses it remembered, even when
// Serf's snapshot lost them (it flushes lines only when a later one is
// appended, so a kill -9 soon after the peers joined loses them), instead
// of waiting up to 30 s for a peer's reconnect attempt.
func TestRestartRejoinsRememberedPeers(t *testing.T) {
	fw := &localForwarder{nodes: map[netip.AddrPort]*Node{}}
	dir := t.TempDir()
	a, acfg := startNode(t, fw, dir, "a", nil)
	waitFor(t, "a to lead", 10*time.Second, a.IsLeader)
	b, _ := startNode(t, fw, t.TempDir(), "b", []string{acfg.GossipAddr.String()})
	defer b.Close()
	waitFor(t, "a to remember b", 10*time.Second, func() bool { return len(a.loadPeers()) == 1 })
	// Let b's join gossip die down: a restarted node that hears it
	// learns of b that way.
	time.Sleep(3 * time.Second)
	a.Close()
	if err := os.Remove(filepath.Join(dir, "serf.snapshot")); err != nil {
		t.Fatal(err)
	}
	a2, _ := startNode(t, fw, dir, "a", nil, func(c *Config) {
		c.Addr, c.RaftAddr, c.GossipAddr = acfg.Addr, acfg.RaftAddr, acfg.GossipAddr
	})
	defer a2.Close()
	waitFor(t, "the restarted node to see b", 5*time.Second, func() bool {
		alive := 0
		for _, m := range a2.serf.Members() {
			if m.Status == serf.StatusAlive {
				alive++
			}
		}
		return alive == 2
	})
}
