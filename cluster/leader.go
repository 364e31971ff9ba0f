package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"
)

// memberlistLocal tunes failure detection for a LAN: a dead node is
// suspected within ~1 s and declared failed a few seconds later.
func memberlistLocal() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 100 * time.Millisecond
	c.PushPullInterval = 10 * time.Second
	c.TCPTimeout = 2 * time.Second
	return c
}

// leaderLoop reconciles Raft membership and the epoch with Serf's view
// while this node leads (Consul's leader loop, without autopilot).
func (n *Node) leaderLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.Reconcile)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-n.events:
			if ue, ok := e.(serf.UserEvent); ok {
				if n.cfg.OnEvent != nil {
					n.cfg.OnEvent(ue.Name)
				}
				continue // not a membership change
			}
			n.rememberPeers()
		case <-n.raft.LeaderCh():
		case <-t.C:
		}
		if n.IsLeader() {
			n.reconcile(ctx)
		}
	}
}

func (n *Node) reconcile(ctx context.Context) {
	members := n.serf.Members()
	n.reconcileMetaVersion(ctx, members)
	// A member older than the cluster's metadata version would apply the
	// log differently: it joins neither Raft nor the epoch.
	var version uint32
	n.fsm.Read(func(s *State) { version = s.MetaVersion })
	fit := members[:0:0]
	for _, m := range members {
		if m.Status != serf.StatusAlive || !n.tooOld(m, version) {
			fit = append(fit, m)
			continue
		}
		// Back from before the upgrade, still in the configuration: out
		// of Raft, so it neither votes nor applies commands it does not know.
		if m.Name != n.cfg.ID && inConfiguration(n.raft, m.Name) {
			n.raft.RemoveServer(raft.ServerID(m.Name), 0, 0)
		}
	}
	n.reconcileRaft(fit)
	n.reconcileEpoch(ctx, fit)
}

// voterTarget is how many live Raft voters the cluster keeps when alive
// members are up: the configured count, or automatically five once five
// nodes are up (metadata then survives any two of them failing at once,
// which is what three copies and 4:2 erasure coding promise for data) and
// three below that. Below five, a dead voter is demoted once three live
// voters remain; live voters are never demoted.
func (n *Node) voterTarget(alive int) int {
	if n.cfg.Voters > 0 {
		return n.cfg.Voters
	}
	if alive >= 5 {
		return 5
	}
	return 3
}

// reconcileRaft keeps voterTarget voters among live members, adds every other
// live member as a non-voter (so it has the metadata locally), and drops
// members that left for good.
func (n *Node) reconcileRaft(members []serf.Member) {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	servers := map[string]raft.Server{}
	voters := 0
	for _, s := range cf.Configuration().Servers {
		servers[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	alive := map[string]serf.Member{}
	for _, m := range members {
		if m.Status == serf.StatusAlive {
			alive[m.Name] = m
		}
	}
	// Remove members that left gracefully or were reaped.
	for _, m := range members {
		if m.Status != serf.StatusLeft {
			continue
		}
		if s, ok := servers[m.Name]; ok && m.Name != n.cfg.ID {
			if err := n.raft.RemoveServer(s.ID, 0, 0).Error(); err == nil {
				if s.Suffrage == raft.Voter {
					voters--
				}
				delete(servers, m.Name)
			}
		}
	}
	target := n.voterTarget(len(alive))
	liveVoters := 0
	for id, s := range servers {
		if _, ok := alive[id]; ok && s.Suffrage == raft.Voter {
			liveVoters++
		}
	}
	names := make([]string, 0, len(alive))
	for name := range alive {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := alive[name]
		addr := raft.ServerAddress(m.Tags["raft"])
		if addr == "" {
			continue
		}
		s, in := servers[name]
		switch {
		case !in && liveVoters < target:
			if n.raft.AddVoter(raft.ServerID(name), addr, 0, 0).Error() == nil {
				liveVoters++
				voters++
			}
		case !in:
			n.raft.AddNonvoter(raft.ServerID(name), addr, 0, 0)
		case s.Suffrage != raft.Voter && liveVoters < target:
			// Promote a live non-voter to replace a dead voter.
			if n.raft.AddVoter(raft.ServerID(name), addr, 0, 0).Error() == nil {
				liveVoters++
				voters++
			}
		case s.Address != addr:
			// The member came back on another raft address.
			if s.Suffrage == raft.Voter {
				n.raft.AddVoter(raft.ServerID(name), addr, 0, 0)
			} else {
				n.raft.AddNonvoter(raft.ServerID(name), addr, 0, 0)
			}
		}
	}
	// Once enough live voters exist, demote dead ones so that quorum is
	// computed over nodes that can answer.
	if liveVoters >= target {
		for id, s := range servers {
			if _, ok := alive[id]; !ok && s.Suffrage == raft.Voter && id != n.cfg.ID {
				n.raft.DemoteVoter(s.ID, 0, 0)
			}
		}
	}
}

// reconcileEpoch commits a new epoch when the set of live members differs
// from the current epoch's and has been stable for EpochDelay.
func (n *Node) reconcileEpoch(ctx context.Context, members []serf.Member) {
	var (
		formatted bool
		cur       []Member
		shutdown  bool
	)
	n.fsm.Read(func(s *State) {
		formatted = s.Format != nil
		shutdown = s.Status == StatusShutdown
		if c := s.Current(); c != nil {
			cur = c.Members
		}
	})
	if !formatted {
		return
	}
	var want []Member
	for _, m := range members {
		if m.Status != serf.StatusAlive {
			continue
		}
		mm, ok := memberFromTags(m.Name, m.Tags)
		if ok {
			want = append(want, mm)
		}
	}
	if len(want) == 0 {
		return
	}
	if shutdown {
		// After `cluster shutdown` wait for every member of the last epoch,
		// as sheepdog does, then resume with the same epoch.
		have := map[string]bool{}
		for _, m := range want {
			have[m.ID] = true
		}
		for _, m := range cur {
			if !have[m.ID] {
				return
			}
		}
		want = cur
	} else if SameMembers(cur, want) {
		n.mu.Lock()
		clear(n.pending)
		n.mu.Unlock()
		return
	}
	key := fingerprint(want)
	n.mu.Lock()
	first, seen := n.pending[key]
	if !seen {
		clear(n.pending)
		n.pending[key] = time.Now()
		first = time.Now()
	}
	n.mu.Unlock()
	if time.Since(first) < n.cfg.EpochDelay {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := n.ApplyAsLeader(cctx, &Command{Op: CmdEpoch, Time: time.Now().UnixNano(), Members: want})
	if err != nil {
		n.log.Warn("epoch change failed", "err", err)
		return
	}
	if r.Err() != nil {
		n.log.Warn("epoch change refused", "err", r.Err())
		return
	}
	n.log.Info("new epoch", "epoch", r.Epoch, "members", len(want))
}

func fingerprint(ms []Member) string {
	var b strings.Builder
	for _, m := range sortedMembers(ms) {
		fmt.Fprintf(&b, "%s@%s/%d/%d;", m.ID, m.Addr, m.Zone, m.Space)
	}
	return b.String()
}

func inConfiguration(r *raft.Raft, id string) bool {
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}
