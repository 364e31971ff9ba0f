package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/cmd/dog/internal/render"
	"github.com/gosheep/gosheep/proto"
)

func (a *app) clusterCmd() *cobra.Command {
	c := a.newGroup("cluster", "format, inspect, shut down and repair the cluster", "  dog cluster info")
	c.AddCommand(a.clusterFormatCmd(), a.clusterInfoCmd(), a.clusterShutdownCmd(), a.clusterRecoverCmd(), a.clusterCheckCmd())
	return c
}

// The caution sheepdog prints before formatting a cluster that has VDIs.
const formatCaution = "    __\n" +
	"   ()'`;\n" +
	"   /\\|`\n" +
	"  /  |   Caution! The cluster is not empty.\n" +
	"(/_)_|_  Are you sure you want to continue? [yes/no]: "

func (a *app) clusterFormatCmd() *cobra.Command {
	var (
		copies, bss, store  string
		lock, strict, force bool
	)
	cmd := &cobra.Command{
		Use:   "format",
		Short: "create the cluster from the nodes that are up (destroys every VDI)",
		Long: `format makes the live nodes a new cluster: it sets the default redundancy
and object size and starts epoch 1. Every VDI of a formatted cluster is lost;
dog asks before formatting a cluster that has VDIs (-f does not ask).`,
		Example: `  dog cluster format                # 3 copies of every object
  dog cluster format -c 2 -z 23     # 2 copies, 8 MiB objects
  dog cluster format -c 4:2         # erasure coding: 4 data + 2 parity strips`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var ca proto.ClusterArgs
			if copies != "" {
				r, err := parse.Redundancy(copies)
				if err != nil {
					return err
				}
				ca.Copies, ca.CopyPolicy = r.NrCopies(), r.Policy()
			}
			if bss != "" {
				z, err := parse.BlockSizeShift(bss)
				if err != nil {
					return err
				}
				ca.BlockSizeShift = z
			}
			if store != "plain" {
				return usageErrorf("-b/--store %q: this cluster has only the \"plain\" store", store)
			}
			if lock {
				ca.Flags |= proto.ClusterFlagUseLock
			}
			if strict {
				ca.Flags |= proto.ClusterFlagStrict
			}
			ca.Flags |= proto.ClusterFlagAutoVnodes
			st, err := a.state(ctx)
			if err != nil {
				return err
			}
			want := int(ca.Copies)
			if want == 0 {
				want = proto.DefaultCopies
			}
			if zones := liveZones(st); want > zones && !force {
				q := fmt.Sprintf("Number of copies (%d) is larger than number of zones (%d).\nAre you sure you want to continue? [yes/no]: ", want, zones)
				if err := a.confirm(q, fmt.Sprintf("%d copies need %d zones, the cluster has %d", want, want, zones), "-f"); err != nil {
					return err
				}
			}
			if liveVDIs(st.State) > 0 && !force {
				if err := a.confirm(formatCaution, fmt.Sprintf("formatting destroys the cluster's %d VDIs and snapshots", liveVDIs(st.State)), "-f"); err != nil {
					return err
				}
			}
			now := a.now()
			ca.Ctime = uint64(now.Unix())<<32 | uint64(now.Nanosecond())
			c, err := a.conn(ctx)
			if err != nil {
				return err
			}
			if !a.json() {
				fmt.Fprintf(a.stdout, "using backend %s store\n", store)
			}
			rctx, cancel := a.rctx(ctx)
			defer cancel()
			if err := c.MakeFS(rctx, ca, store); err != nil {
				return failf(err, "Format failed")
			}
			if a.json() {
				red, _ := proto.FromPolicy(max(ca.Copies, 1), ca.CopyPolicy)
				if ca.Copies == 0 {
					red = proto.Redundancy{Copies: proto.DefaultCopies}
				}
				shift := ca.BlockSizeShift
				if shift == 0 {
					shift = proto.DefaultBSS
				}
				return a.emit(map[string]any{"store": store, "redundancy": red.String(), "block_size_shift": shift, "flags": ca.Flags}, nil)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&copies, "copies", "c", "", `default redundancy: N copies (1..31), or DATA:PARITY erasure coding such as "4:2" (default 3)`)
	f.StringVarP(&bss, "block_size_shift", "z", "", "default object size as a power of two, 20..31 (default 22: 4 MiB)")
	f.StringVarP(&store, "store", "b", "plain", "backend store")
	f.BoolVarP(&lock, "lock", "l", false, "lock VDIs so that only one client opens each")
	f.BoolVarP(&strict, "strict", "t", false, "refuse writes when fewer nodes than copies are up")
	f.BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}

// liveZones counts the zones of the alive nodes that store data.
func liveZones(st *api.ClusterState) int {
	zones := map[uint32]bool{}
	for _, m := range st.Members {
		if m.Status == "alive" && m.Space > 0 {
			zones[m.Zone] = true
		}
	}
	return len(zones)
}

// liveVDIs counts the VDIs (and snapshots) not deleted.
func liveVDIs(s *cluster.State) int {
	n := 0
	for _, v := range s.VDIs {
		if !v.Deleted {
			n++
		}
	}
	return n
}

// rings builds (and caches) each member set's placement ring, exactly as
// the sheep does (sheep/views.go): a pure function of the members.
type rings map[string]*placement.Ring

func (r rings) of(ms []cluster.Member) *placement.Ring {
	key := fmt.Sprint(ms)
	if x, ok := r[key]; ok {
		return x
	}
	ns := make([]placement.Node, len(ms))
	for i, m := range ms {
		ns[i] = placement.Node{ID: m.ID, Addr: m.Addr, Zone: m.Zone, Weight: m.Space}
	}
	x := placement.New(ns, placement.Options{})
	r[key] = x
	return x
}

// clusterInfo is the data of `dog cluster info`.
type clusterInfo struct {
	Status          string         `json:"status"`
	Formatted       bool           `json:"formatted"`
	Store           string         `json:"store,omitempty"`
	Redundancy      string         `json:"redundancy,omitempty"`
	BlockSizeShift  uint8          `json:"block_size_shift,omitempty"`
	Created         *time.Time     `json:"created,omitempty"`
	RecoveryEnabled bool           `json:"recovery_enabled"`
	Locking         bool           `json:"locking"`
	Strict          bool           `json:"strict"`
	Leader          string         `json:"leader,omitempty"`
	Epochs          []render.Epoch `json:"epochs"`
}

func ctimeOf(ct uint64) time.Time {
	return time.Unix(int64(ct>>32), int64(ct&0xffffffff))
}

// clusterInfoOf derives `dog cluster info` from the cluster state.
func clusterInfoOf(st *api.ClusterState) clusterInfo {
	s := st.State
	ci := clusterInfo{RecoveryEnabled: !s.RecoveryDisabled, Leader: st.Leader}
	switch {
	case s.Format == nil:
		ci.Status = proto.ResWaitForFormat.Error()
	case s.Status == cluster.StatusShutdown:
		ci.Status = proto.ResWaitForJoin.Error()
	default:
		ci.Status = "running, auto-recovery enabled"
		if s.RecoveryDisabled {
			ci.Status = "running, auto-recovery disabled"
		}
	}
	if f := s.Format; f != nil {
		ci.Formatted = true
		ci.Store = "plain"
		ci.Redundancy = f.Redundancy().String()
		ci.BlockSizeShift = f.BlockSizeShift
		t := ctimeOf(f.Ctime)
		ci.Created = &t
		ci.Locking = f.Flags&proto.ClusterFlagUseLock != 0
		ci.Strict = f.Flags&proto.ClusterFlagStrict != 0
	}
	rs := rings{}
	ci.Epochs = []render.Epoch{}
	for i := len(s.Epochs) - 1; i >= 0; i-- {
		e := s.Epochs[i]
		ring := rs.of(e.Members)
		re := render.Epoch{Epoch: e.Epoch, Time: time.Unix(0, e.Time)}
		for _, m := range e.Members {
			re.Nodes = append(re.Nodes, render.EpochNode{Addr: m.Addr.String(), Vnodes: ring.Vnodes(m.ID)})
		}
		ci.Epochs = append(ci.Epochs, re)
	}
	return ci
}

func (ci clusterInfo) render(leaderAddr string) render.ClusterInfo {
	r := render.ClusterInfo{Status: ci.Status, Formatted: ci.Formatted, Store: ci.Store, Redundancy: ci.Redundancy, Epochs: ci.Epochs}
	if ci.Created != nil {
		r.Created = *ci.Created
	}
	if ci.Leader != "" {
		l := "Cluster leader: " + ci.Leader
		if leaderAddr != "" {
			l += " (" + leaderAddr + ")"
		}
		r.Extra = append(r.Extra, l)
	}
	if ci.Formatted {
		flags := "none"
		switch {
		case ci.Locking && ci.Strict:
			flags = "lock, strict"
		case ci.Locking:
			flags = "lock"
		case ci.Strict:
			flags = "strict"
		}
		r.Extra = append(r.Extra, fmt.Sprintf("Cluster flags: %s", flags), fmt.Sprintf("Cluster object size: %d bytes", uint64(1)<<ci.BlockSizeShift))
	}
	return r
}

// leaderAddr finds the leader's address among the members.
func leaderAddr(st *api.ClusterState) string {
	for _, m := range st.Members {
		if m.ID == st.Leader {
			return m.Addr.String()
		}
	}
	return ""
}

// printClusterInfo prints `dog cluster info` of st.
func (a *app) printClusterInfo(st *api.ClusterState, diff bool) error {
	ci := clusterInfoOf(st)
	return a.emit(ci, func(w io.Writer) error {
		return render.Cluster(w, ci.render(leaderAddr(st)), a.verbose, diff, a.opts())
	})
}

func (a *app) clusterInfoCmd() *cobra.Command {
	var diff bool
	cmd := &cobra.Command{
		Use:   "info",
		Short: "show the cluster's status, creation time and epoch history",
		Example: `  dog cluster info
  dog cluster info -v       # also the redundancy, flags and Raft leader
  dog cluster info -d       # each epoch's joined (+) and departed (-) nodes`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.state(cmd.Context())
			if err != nil {
				return err
			}
			return a.printClusterInfo(st, diff)
		},
	}
	cmd.Flags().BoolVarP(&diff, "diff", "d", false, "show the nodes each epoch added (+) and removed (-)")
	return cmd
}

func (a *app) clusterShutdownCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "shutdown",
		Short:   "stop the cluster: every node stops serving I/O",
		Example: "  dog cluster shutdown",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.conn(cmd.Context())
			if err != nil {
				return err
			}
			ctx, cancel := a.rctx(cmd.Context())
			defer cancel()
			err = c.Shutdown(ctx)
			if errors.Is(err, client.ErrConnClosed) && a.stopped(cmd.Context(), a.addr()) {
				// The sheep went down before its answer reached us.
				err = nil
			}
			return failf(err, "failed to shut down the cluster")
		},
	}
}

// stopped reports whether the sheep at addr has stopped serving: it
// refuses connections, or says the cluster is shut down.
func (a *app) stopped(ctx context.Context, addr string) bool {
	for i := 0; i < 20; i++ {
		a.forget(addr)
		c, err := a.connTo(ctx, addr)
		var ce *connError
		if errors.As(err, &ce) {
			return true
		}
		if err == nil {
			var st api.ClusterState
			err := a.meta(ctx, c, proto.OpClusterState, "reading the cluster state", nil, &st)
			if err == nil && st.State != nil && st.State.Status == cluster.StatusShutdown {
				return true
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

func (a *app) clusterRecoverCmd() *cobra.Command {
	c := a.newGroup("recover", "enable or disable automatic recovery", "  dog cluster recover disable\n  dog cluster recover enable")
	mk := func(name, short string, enable bool) *cobra.Command {
		return &cobra.Command{
			Use:     name,
			Short:   short,
			Example: "  dog cluster recover " + name,
			Args:    args(0, 0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				conn, err := a.conn(cmd.Context())
				if err != nil {
					return err
				}
				ctx, cancel := a.rctx(cmd.Context())
				defer cancel()
				if enable {
					err = conn.EnableRecover(ctx)
				} else {
					err = conn.DisableRecover(ctx)
				}
				if err != nil {
					return failf(err, "failed to %s recovery", name)
				}
				word := map[bool]string{true: "enable", false: "disable"}[enable]
				if a.json() {
					return a.emit(map[string]bool{"recovery_enabled": enable}, nil)
				}
				fmt.Fprintf(a.stdout, "Cluster recovery: %s\n", word)
				return nil
			},
		}
	}
	c.AddCommand(
		mk("enable", "resume automatic recovery (and recover now if needed)", true),
		mk("disable", "suspend automatic recovery, e.g. during maintenance", false))
	return c
}

func (a *app) clusterCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "check and repair every VDI and snapshot",
		Long: `check runs 'dog vdi check --repair' on every VDI and snapshot: each object's
copies are compared and missing or damaged ones rebuilt from good ones.`,
		Example: "  dog cluster check",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			vdis := st.State.SortedVDIs()
			sort.SliceStable(vdis, func(i, j int) bool { return vdis[i].Name < vdis[j].Name })
			var reports []checkResult
			bad := 0
			for _, v := range vdis {
				if v.Deleted {
					continue
				}
				if !a.json() {
					if v.IsSnapshot() {
						fmt.Fprintf(a.stdout, "fix snapshot %s (id: %d, tag: %q)\n", v.Name, v.SnapID, v.Tag)
					} else {
						fmt.Fprintf(a.stdout, "fix vdi %s\n", v.Name)
					}
				}
				snap := uint32(0)
				if v.IsSnapshot() {
					snap = v.SnapID
				}
				rep, err := a.checkVDI(ctx, v.Name, "", snap, true)
				if err != nil {
					return err
				}
				res := checkResult{Snapshot: v.IsSnapshot(), SnapID: snap, CheckReport: *rep}
				reports = append(reports, res)
				if !res.ok() {
					bad++
				}
				if !a.json() {
					if err := printCheck(a.stdout, res); err != nil {
						return err
					}
				}
			}
			if a.json() {
				if err := a.emit(reports, nil); err != nil {
					return err
				}
			}
			if bad > 0 {
				return fmt.Errorf("%d VDI(s) still have damaged or lost objects", bad)
			}
			return nil
		},
	}
}
