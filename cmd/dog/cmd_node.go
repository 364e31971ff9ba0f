package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/cmd/dog/internal/render"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/units"
)

func (a *app) nodeCmd() *cobra.Command {
	c := a.newGroup("node", "list, inspect and stop nodes; watch recovery", "  dog node list")
	c.AddCommand(a.nodeListCmd(), a.nodeInfoCmd(), a.nodeKillCmd(), a.nodeRecoveryCmd())
	return c
}

// nodeRow is a node of `dog node list`, with everything gosheep knows.
type nodeRow struct {
	render.Node
	NodeID string `json:"node_id"`
	Space  uint64 `json:"space"`
}

// members returns the nodes dog's commands number: the current epoch's
// members in epoch order, or before format the nodes alive in gossip in
// the order format will give them (by node id).
func members(st *api.ClusterState) []cluster.Member {
	if cur := st.State.Current(); cur != nil {
		return cur.Members
	}
	var ms []cluster.Member
	for _, m := range st.Members {
		if m.Status == "alive" {
			ms = append(ms, m.Member)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
	return ms
}

// downMembers lists the current epoch's members gossip does not see alive:
// the cluster is about to start a new epoch without them.
func downMembers(st *api.ClusterState) []string {
	alive := map[string]bool{}
	for _, m := range st.Members {
		alive[m.ID] = m.Status == "alive"
	}
	var down []string
	if cur := st.State.Current(); cur != nil {
		for _, m := range cur.Members {
			if !alive[m.ID] {
				down = append(down, m.Addr.String())
			}
		}
	}
	return down
}

// nodeRows derives `dog node list` from the cluster state.
func nodeRows(st *api.ClusterState) []nodeRow {
	ms := members(st)
	ring := rings{}.of(ms)
	gossip := map[string]cluster.MemberStatus{}
	for _, m := range st.Members {
		gossip[m.ID] = m
	}
	rows := make([]nodeRow, 0, len(ms))
	for i, m := range ms {
		r := nodeRow{Node: render.Node{ID: i, Addr: m.Addr.String(), Vnodes: ring.Vnodes(m.ID), Zone: m.Zone, Self: m.ID == st.Self, Status: "unknown", Role: "-"},
			NodeID: m.ID, Space: m.Space}
		if g, ok := gossip[m.ID]; ok {
			r.Status = g.Status
			switch {
			case g.Leader:
				r.Role = "leader"
			case g.Voter:
				r.Role = "voter"
			default:
				r.Role = "nonvoter"
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// printNodeList prints `dog node list` of st.
func (a *app) printNodeList(st *api.ClusterState) error {
	rows := nodeRows(st)
	return a.emit(rows, func(w io.Writer) error {
		ns := make([]render.Node, len(rows))
		for i, r := range rows {
			ns[i] = r.Node
		}
		return render.NodeList(w, ns, a.verbose, a.opts())
	})
}

func (a *app) nodeListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "list the cluster's nodes (ids for 'dog node kill')",
		Long: `list shows the nodes of the current epoch, numbered from 0 in epoch order.
The node dog talks to is marked with '*'. With -v, also each node's gossip
status and Raft role.`,
		Example: "  dog node list\n  dog node list -r       # for scripts: id host:port vnodes zone",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.state(cmd.Context())
			if err != nil {
				return err
			}
			return a.printNodeList(st)
		},
	}
}

// nodeStatus is a node's answer to OpNodeInfo, or why there is none.
type nodeStatus struct {
	ID   int            `json:"id"`
	Addr string         `json:"addr"`
	Info *api.NodeInfo  `json:"info,omitempty"`
	Err  string         `json:"error,omitempty"`
	m    cluster.Member // the epoch's record
}

// askNodes queries every node concurrently.
func (a *app) askNodes(ctx context.Context, ms []cluster.Member) []nodeStatus {
	out := make([]nodeStatus, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		out[i] = nodeStatus{ID: i, Addr: m.Addr.String(), m: m}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ni, err := a.nodeInfo(ctx, m.Addr.String())
			if err != nil {
				_, out[i].Err = a.describe(err)
				return
			}
			out[i].Info = ni
		}()
	}
	wg.Wait()
	return out
}

type nodeInfoDoc struct {
	Nodes         []nodeStatus `json:"nodes"`
	Size          uint64       `json:"size"`
	Used          uint64       `json:"used"`
	Avail         uint64       `json:"avail"`
	VirtualSize   uint64       `json:"virtual_size"` // of the working VDIs
	UnreachableNr int          `json:"unreachable"`
}

// printNodeInfo prints `dog node info` from the nodes' answers.
func (a *app) printNodeInfo(st *api.ClusterState, all []nodeStatus) error {
	doc := nodeInfoDoc{Nodes: all}
	var rows []render.NodeUsage
	for _, n := range all {
		if n.Info == nil {
			doc.UnreachableNr++
			if !a.json() {
				a.warnf("node %d (%s): %s", n.ID, n.Addr, n.Err)
			}
			continue
		}
		u := n.Info.Usage
		rows = append(rows, render.NodeUsage{ID: n.ID, Size: u.Capacity, Used: u.Used, Avail: u.Free})
		doc.Size += u.Capacity
		doc.Used += u.Used
		doc.Avail += u.Free
	}
	if len(rows) == 0 {
		return &opError{what: "Cannot get information from any nodes", err: proto.ResNetworkError}
	}
	for _, v := range st.State.VDIs {
		if !v.Deleted && !v.IsSnapshot() {
			doc.VirtualSize += v.Size
		}
	}
	return a.emit(doc, func(w io.Writer) error { return render.NodeInfo(w, rows, doc.VirtualSize, a.opts()) })
}

func (a *app) nodeInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "show each node's capacity and use, and the totals",
		Long: `info shows each node's storage: Size is what the node offers, Used what its
objects take, Avail what is left for new objects. The last line adds up the
sizes of the working VDIs (thin provisioned: they may exceed the capacity).`,
		Example: "  dog node info\n  dog node info -r",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			st, err := a.state(ctx)
			if err != nil {
				return err
			}
			return a.printNodeInfo(st, a.askNodes(ctx, members(st)))
		},
	}
}

func (a *app) nodeKillCmd() *cobra.Command {
	var local bool
	cmd := &cobra.Command{
		Use:   "kill NODE-ID",
		Short: "make a node leave the cluster and exit",
		Long: `kill stops the node with the given id of 'dog node list' (or with -l, the
node dog talks to). The cluster starts a new epoch without it and recovers
the copies it held.`,
		Example: "  dog node kill 2\n  dog -a 10.0.0.3 node kill -l",
		Args:    args(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			addr := a.addr()
			switch {
			case local && len(args) > 0:
				return usageErrorf("give either -l or a node id, not both")
			case !local && len(args) == 0:
				return usageErrorf("%s: missing NODE-ID (see 'dog node list'), or -l for the node dog talks to", cmd.CommandPath())
			}
			var victim string // node id, when killing another node
			if !local {
				st, err := a.state(ctx)
				if err != nil {
					return err
				}
				ms := members(st)
				i, err := parse.NodeIndex(args[0], len(ms))
				if err != nil {
					return err
				}
				addr, victim = ms[i].Addr.String(), ms[i].ID
			}
			c, err := a.connTo(ctx, addr)
			if err != nil {
				return err
			}
			rctx, cancel := a.rctx(ctx)
			defer cancel()
			err = c.KillNode(rctx)
			if errors.Is(err, client.ErrConnClosed) && a.stopped(ctx, addr) {
				err = nil // it went down before its answer reached us
			}
			if err != nil {
				return failf(err, "Failed to kill node %s", addr)
			}
			if victim != "" && addr != a.addr() {
				// Return once the cluster knows, so that a following
				// 'dog node recovery -P' waits for the recovery it causes.
				a.awaitDeparture(ctx, victim)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&local, "local", "l", false, "kill the node dog talks to (-a/-p)")
	return cmd
}

// awaitDeparture waits (a little) until the node dog talks to no longer
// sees node id alive in gossip.
func (a *app) awaitDeparture(ctx context.Context, id string) {
	deadline := a.now().Add(10 * time.Second)
	for a.now().Before(deadline) {
		st, err := a.state(ctx)
		if err != nil {
			return
		}
		gone := true
		for _, m := range st.Members {
			if m.ID == id && m.Status == "alive" {
				gone = false
			}
		}
		if gone {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recoveryRow is a node's recovery, for -o json.
type recoveryRow struct {
	render.Recovery
	Failed    int64  `json:"failed"`
	Epoch     uint32 `json:"epoch"`
	Recovered uint32 `json:"recovered"`
	Paused    string `json:"paused,omitempty"`
	Err       string `json:"error,omitempty"`
}

// recoveryRows asks every node how its recovery goes.
func (a *app) recoveryRows(ctx context.Context, st *api.ClusterState) []recoveryRow {
	return recoveryRowsOf(st, a.askNodes(ctx, members(st)))
}

// recoveryRowsOf derives the recovery table from the nodes' answers.
func recoveryRowsOf(st *api.ClusterState, all []nodeStatus) []recoveryRow {
	ring := rings{}.of(members(st))
	epoch := st.State.Epoch()
	rows := []recoveryRow{}
	for _, n := range all {
		r := recoveryRow{Recovery: render.Recovery{ID: n.ID, Addr: n.Addr, Vnodes: ring.Vnodes(n.m.ID), Zone: n.m.Zone}, Err: n.Err}
		if n.Info != nil {
			s := n.Info.Recovery
			r.Active = s.Active || (s.Epoch < epoch && n.m.Space > 0)
			r.Done, r.Total = uint64(max(s.Done, 0)), uint64(max(s.Queued, 0))
			r.Failed, r.Epoch, r.Recovered, r.Paused = s.Failed, s.Epoch, s.Recovered, s.Paused
		}
		rows = append(rows, r)
	}
	return rows
}

func (a *app) nodeRecoveryCmd() *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "show the nodes in recovery, or wait for recovery to finish",
		Long: `recovery lists the nodes still recovering objects after a membership
change, with their progress. With -P it waits until no node is recovering,
drawing a progress bar on a terminal.`,
		Example: `  dog node recovery
  dog node recovery -P                      # wait for recovery to finish
  dog node recovery set-throttle 50M --concurrency 2
  dog node recovery get-throttle`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if wait {
				return a.waitRecovery(ctx)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			return a.printRecovery(a.recoveryRows(ctx, st))
		},
	}
	cmd.Flags().BoolVarP(&wait, "progress", "P", false, "wait for recovery to finish, showing its progress")
	cmd.AddCommand(a.setThrottleCmd(), a.getThrottleCmd())
	return cmd
}

// printRecovery prints `dog node recovery`.
func (a *app) printRecovery(rows []recoveryRow) error {
	for _, r := range rows {
		if r.Err != "" && !a.json() {
			a.warnf("node %d (%s): %s", r.ID, r.Addr, r.Err)
		}
	}
	return a.emit(rows, func(w io.Writer) error {
		rs := make([]render.Recovery, len(rows))
		for i, r := range rows {
			rs[i] = r.Recovery
		}
		return render.RecoveryList(w, rs, a.opts())
	})
}

// recoveryPoll is how often -P asks the nodes.
const recoveryPoll = 500 * time.Millisecond

// waitRecovery polls every node until none is recovering. A member that
// is down means a new epoch (and recovery) is coming: that is waited for
// too, for at most --timeout.
func (a *app) waitRecovery(ctx context.Context) error {
	var bar = a.bar(0, true)
	defer bar.Finish()
	var downSince time.Time
	for {
		st, err := a.formatted(ctx)
		if err != nil {
			return err
		}
		down := downMembers(st)
		switch {
		case len(down) == 0:
			downSince = time.Time{}
		case downSince.IsZero():
			downSince = a.now()
		case a.timeout > 0 && a.now().Sub(downSince) > a.timeout:
			return fmt.Errorf("node(s) %s are down, and the cluster has not started a new epoch without them within %s: recovery cannot start (see 'dog node list -v')",
				strings.Join(down, ", "), a.timeout)
		}
		active := len(down) > 0
		var done, total uint64
		for _, r := range a.recoveryRows(ctx, st) {
			if r.Err != "" {
				if a.verbose {
					a.warnf("node %d (%s): %s", r.ID, r.Addr, r.Err)
				}
				continue
			}
			if r.Active {
				active = true
			}
			done += r.Done
			total += r.Total
		}
		bar.Set(done, total)
		if !active {
			if a.json() {
				return a.emit(map[string]any{"recovering": false, "epoch": st.State.Epoch()}, nil)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(recoveryPoll):
		}
	}
}

func (a *app) setThrottleCmd() *cobra.Command {
	var concurrency int
	cmd := &cobra.Command{
		Use:   "set-throttle MAX-RATE",
		Short: "limit recovery's bandwidth per node (0: unlimited)",
		Long: `set-throttle limits how fast each node recovers objects, in bytes per
second (with K, M, G suffixes), so that recovery leaves bandwidth for VMs.
--concurrency sets how many objects a node recovers at once.`,
		Example: "  dog node recovery set-throttle 100M\n  dog node recovery set-throttle 0 --concurrency 8",
		Args:    args(1, 1, "MAX-RATE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			rate, err := parse.Size("max rate", args[0])
			if err != nil {
				return err
			}
			if concurrency < 0 {
				return usageErrorf("--concurrency %d: want 0 (default) or more", concurrency)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			t := st.State.Throttle
			t.MaxRate = rate
			if changed(cmd, "concurrency") {
				t.Concurrency = concurrency
			}
			if _, err := a.propose(ctx, "setting the recovery throttle", cluster.Command{Op: cluster.CmdThrottle, Throttle: t}); err != nil {
				return failf(err, "Failed to set the recovery throttle")
			}
			return a.emit(t, func(w io.Writer) error { return printThrottle(w, t, a.raw) })
		},
	}
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "objects each node recovers in parallel (0: the default)")
	return cmd
}

func (a *app) getThrottleCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get-throttle",
		Short:   "show recovery's bandwidth limit",
		Example: "  dog node recovery get-throttle",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.formatted(cmd.Context())
			if err != nil {
				return err
			}
			t := st.State.Throttle
			return a.emit(t, func(w io.Writer) error { return printThrottle(w, t, a.raw) })
		},
	}
}

func printThrottle(w io.Writer, t cluster.Throttle, raw bool) error {
	if raw {
		_, err := fmt.Fprintf(w, "%d %d\n", t.MaxRate, t.Concurrency)
		return err
	}
	rate, conc := "unlimited", "default"
	if t.MaxRate > 0 {
		rate = units.FormatSize(t.MaxRate) + "/s"
	}
	if t.Concurrency > 0 {
		conc = fmt.Sprint(t.Concurrency)
	}
	_, err := fmt.Fprintf(w, "max rate (%s), concurrency (%s)\n", rate, conc)
	return err
}
