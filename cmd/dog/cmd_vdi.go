package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/cmd/dog/internal/render"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/units"
)

func (a *app) vdiCmd() *cobra.Command {
	c := a.newGroup("vdi", "create, list, snapshot, copy and inspect virtual disk images", "  dog vdi list\n  dog vdi create vol0 10G")
	c.AddCommand(
		a.vdiCreateCmd(), a.vdiListCmd(), a.vdiDeleteCmd(), a.vdiSnapshotCmd(), a.vdiCloneCmd(),
		a.vdiRollbackCmd(), a.vdiResizeCmd(), a.vdiReadCmd(), a.vdiWriteCmd(), a.vdiTreeCmd(),
		a.vdiObjectCmd(), a.vdiSetattrCmd(), a.vdiGetattrCmd(), a.vdiCheckCmd(), a.vdiBackupCmd(),
		a.vdiRestoreCmd(), a.vdiExportCmd(), a.vdiImportCmd(), a.vdiChapCmd(), a.vdiReservationCmd(),
	)
	return c
}

// snapFlag adds -s/--snapshot (a snapshot id, or a tag) to cmd.
func snapFlag(cmd *cobra.Command, dst *string, usage string) {
	cmd.Flags().StringVarP(dst, "snapshot", "s", "", usage)
}

// vdiArg checks the VDI name argument.
func vdiArg(name string) error { return parse.VDIName(name) }

// nrObjects is how many index entries a VDI of size bytes spans.
func nrObjects(size uint64, bss uint8) uint32 {
	os := uint64(1) << bss
	return uint32((size + os - 1) / os)
}

// readIndex reads the data_vdi_id entries a VDI's size spans.
func readIndex(ctx context.Context, c vdi.Conn, v *cluster.VDI) ([]uint32, error) {
	ino, err := vdi.ReadInode(ctx, c, v.VID, nrObjects(v.Size, v.BlockSizeShift))
	if err != nil {
		return nil, err
	}
	return ino.DataVDIID, nil
}

// maxSize is the largest VDI with objects of 1<<bss bytes.
func maxSize(bss uint8) uint64 { return cluster.MaxVDISize(bss) }

func (a *app) vdiCreateCmd() *cobra.Command {
	var (
		copies, bss     string
		prealloc, hyper bool
	)
	cmd := &cobra.Command{
		Use:   "create VDI SIZE",
		Short: "create a VDI (thin provisioned unless -P)",
		Long: `create makes a new VDI of SIZE bytes (K, M, G, T suffixes). Its objects
are allocated as they are written, unless -P allocates them all now. -c and
-z override the cluster's default redundancy and object size.`,
		Example: `  dog vdi create vol0 10G
  dog vdi create -c 2 -P db 100G      # 2 copies, all space allocated now
  dog vdi create -c 4:2 archive 1T    # erasure coded
  dog vdi create -z 23 big 8T         # 8 MiB objects: VDIs up to 8 TiB`,
		Args: args(2, 2, "VDI", "SIZE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			if err := vdiArg(name); err != nil {
				return err
			}
			size, err := parse.PositiveSize("vdi size", args[1])
			if err != nil {
				return err
			}
			if hyper {
				return unsupported{what: "hyper volumes (-y)"}
			}
			op := api.VolumeOp{Op: api.VolCreate, Name: name, Size: size}
			if copies != "" {
				r, err := parse.Redundancy(copies)
				if err != nil {
					return err
				}
				op.Redundancy = r.String()
			}
			if bss != "" {
				if op.BSS, err = parse.BlockSizeShift(bss); err != nil {
					return err
				}
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return failf(err, "Failed to create VDI %s", name)
			}
			shift := op.BSS
			if shift == 0 {
				shift = st.State.Format.BlockSizeShift
			}
			if size > maxSize(shift) {
				return usageErrorf("VDI size is larger than %s: use '-z' for a larger object size (up to %s with -z %d)",
					units.FormatSize(maxSize(shift)), units.FormatSize(maxSize(proto.MaxBSS)), proto.MaxBSS)
			}
			r, err := a.volume(ctx, op)
			if err != nil {
				return failf(err, "Failed to create VDI %s", name)
			}
			if prealloc {
				if err := a.fillVDI(ctx, name, nil, true); err != nil {
					return failf(err, "Failed to preallocate VDI %s", name)
				}
			}
			return a.created(r.VID, "VDI ID of newly created VDI: %x\n", map[string]any{"name": name, "vid": r.VID, "size": size})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&copies, "copies", "c", "", `redundancy: N copies, or DATA:PARITY erasure coding such as "4:2" (default: the cluster's)`)
	f.StringVarP(&bss, "block_size_shift", "z", "", "object size as a power of two, 20..31 (default: the cluster's)")
	f.BoolVarP(&prealloc, "prealloc", "P", false, "allocate every object now")
	f.BoolVarP(&hyper, "hyper", "y", false, "hyper volume (not supported)")
	return cmd
}

// created reports a new vid: with -v in sheepdog's words, with -o json as doc.
func (a *app) created(vid uint32, verbose string, doc any) error {
	if a.json() {
		return a.emit(doc, nil)
	}
	if a.verbose {
		if a.raw {
			fmt.Fprintf(a.stdout, "%x\n", vid)
		} else {
			fmt.Fprintf(a.stdout, verbose, vid)
		}
	}
	return nil
}

// vdiRows derives `dog vdi list` from the state and the VDIs' indexes
// (vid -> data_vdi_id): Used counts objects a VDI owns, Shared objects it
// refers to that an ancestor owns.
func vdiRows(st *cluster.State, index map[uint32][]uint32, name string) []render.VDI {
	var rows []render.VDI
	for _, v := range st.SortedVDIs() {
		if v.Deleted || (name != "" && v.Name != name) {
			continue
		}
		idx, ok := index[v.VID]
		if !ok {
			continue
		}
		var own, shared uint64
		for _, o := range idx {
			switch {
			case o == v.VID:
				own++
			case o != 0:
				shared++
			}
		}
		r := render.VDI{
			Name: v.Name, Snapshot: v.IsSnapshot(), Clone: v.SnapID == 1 && v.ParentVID != 0,
			Size: v.Size, Used: own << v.BlockSizeShift, Shared: shared << v.BlockSizeShift,
			Created: ctimeOf(v.CreateTime), VID: v.VID, Redundancy: v.Redundancy().String(), Tag: v.Tag, BSS: v.BlockSizeShift,
		}
		if v.IsSnapshot() {
			r.SnapID = v.SnapID
		}
		rows = append(rows, r)
	}
	return rows
}

// indexes reads the index of every listed VDI, a few at a time.
func (a *app) indexes(ctx context.Context, vdis []*cluster.VDI) (map[uint32][]uint32, error) {
	vc, err := a.vconn(ctx)
	if err != nil {
		return nil, err
	}
	var (
		mu    sync.Mutex
		out   = map[uint32][]uint32{}
		first error
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, v := range vdis {
		g.Go(func() error {
			idx, err := readIndex(gctx, vc, v)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					return err
				}
				a.warnf("Failed to read the inode of %s (vid %x): %s", v.Name, v.VID, firstMsg(a, err))
				if first == nil {
					first = failf(err, "Failed to read the inode of %s", v.Name)
				}
				return nil
			}
			out[v.VID] = idx
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, first
}

func firstMsg(a *app, err error) string {
	_, msg := a.describe(err)
	return msg
}

// printVDIList prints `dog vdi list` of the state and indexes.
func (a *app) printVDIList(st *cluster.State, index map[uint32][]uint32, name string) error {
	rows := vdiRows(st, index, name)
	if rows == nil {
		rows = []render.VDI{}
	}
	return a.emit(rows, func(w io.Writer) error { return render.VDIList(w, rows, a.opts()) })
}

func (a *app) vdiListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list [VDI]",
		Short: "list VDIs and snapshots",
		Long: `list shows every VDI and snapshot (or those of one name): 's' marks
snapshots, 'c' clones. Used is the space of the objects the VDI owns, Shared
that of objects it shares with the snapshot it came from.`,
		Example: "  dog vdi list\n  dog vdi list vol0\n  dog vdi list -r     # for scripts",
		Args:    args(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := ""
			if len(args) > 0 {
				name = args[0]
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			var want []*cluster.VDI
			for _, v := range st.State.VDIs {
				if !v.Deleted && (name == "" || v.Name == name) {
					want = append(want, v)
				}
			}
			index, ierr := a.indexes(ctx, want)
			if index == nil {
				return ierr
			}
			if err := a.printVDIList(st.State, index, name); err != nil {
				return err
			}
			return ierr
		},
	}
}

func (a *app) vdiDeleteCmd() *cobra.Command {
	var snap string
	cmd := &cobra.Command{
		Use:   "delete VDI",
		Short: "delete a VDI, or one of its snapshots with -s",
		Long: `delete removes a VDI (or with -s, one snapshot). Objects no other VDI
shares are reclaimed in the background.`,
		Example: "  dog vdi delete vol0\n  dog vdi delete -s nightly vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			if _, err := a.volume(cmd.Context(), api.VolumeOp{Op: api.VolDelete, Name: name, Tag: tag, SnapID: id}); err != nil {
				return failf(err, "Failed to delete %s", vdiDesc(name, tag, id))
			}
			if a.json() {
				return a.emit(map[string]any{"deleted": name, "tag": tag, "snap_id": id}, nil)
			}
			return nil
		},
	}
	snapFlag(cmd, &snap, "delete this snapshot (id or tag) instead of the VDI")
	return cmd
}

func (a *app) vdiSnapshotCmd() *cobra.Command {
	var (
		tag    string
		reduce bool
	)
	cmd := &cobra.Command{
		Use:   "snapshot VDI",
		Short: "freeze the VDI's current state as a snapshot",
		Long: `snapshot freezes the VDI as it is now; writes go on in a new working VDI
of the same name that shares the snapshot's objects until it overwrites them.
-s gives the snapshot a tag to refer to it by (else use its id, see 'dog vdi
list').`,
		Example: "  dog vdi snapshot -s before-upgrade vol0\n  dog vdi snapshot vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			if tag != "" {
				if _, id, err := parse.Snapshot(tag); err != nil || id != 0 {
					return usageErrorf("-s %q: a snapshot tag must not be a number (numbers are snapshot ids)", tag)
				}
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return failf(err, "Failed to create snapshot for %s", name)
			}
			cur, err := lookup(st, name, "", 0)
			if err != nil {
				return failf(err, "Failed to create snapshot for %s", name)
			}
			if reduce {
				vc, err := a.vconn(ctx)
				if err != nil {
					return err
				}
				idx, err := readIndex(ctx, vc, cur)
				if err != nil {
					return failf(err, "Failed to read VDI %s", name)
				}
				own := false
				for _, o := range idx {
					own = own || o == cur.VID
				}
				if !own {
					if a.verbose {
						a.warnf("VDI %s doesn't have its own objects, skipping creation of snapshot", name)
					}
					return a.emit(map[string]any{"skipped": true}, func(io.Writer) error { return nil })
				}
			}
			r, err := a.volume(ctx, api.VolumeOp{Op: api.VolSnapshot, Name: name, Tag: tag})
			if err != nil {
				return failf(err, "Failed to create snapshot for %s", name)
			}
			if a.json() {
				return a.emit(map[string]any{"name": name, "tag": tag, "snapshot_vid": cur.VID, "snap_id": cur.SnapID, "vid": r.VID}, nil)
			}
			if a.verbose {
				if a.raw {
					fmt.Fprintf(a.stdout, "%x %x\n", r.VID, cur.VID)
				} else {
					fmt.Fprintf(a.stdout, "new VID of original VDI: %x, VDI ID of newly created snapshot: %x\n", r.VID, cur.VID)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&tag, "snapshot", "s", "", "tag of the new snapshot")
	cmd.Flags().BoolVarP(&reduce, "reduce-identical-snapshots", "R", false, "do not snapshot a VDI that has not changed since its last snapshot")
	return cmd
}

func (a *app) vdiCloneCmd() *cobra.Command {
	var (
		snap              string
		prealloc, noShare bool
	)
	cmd := &cobra.Command{
		Use:   "clone SRC DST",
		Short: "make a new VDI from a snapshot",
		Long: `clone makes DST, a new VDI starting as snapshot -s of SRC. It shares the
snapshot's objects until it overwrites them, unless -n copies them (DST then
stands alone) or -P allocates every object now.`,
		Example: "  dog vdi clone -s golden base vm1\n  dog vdi clone -s 3 -n vol0 vol0-copy",
		Args:    args(2, 2, "SRC", "DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			src, dst := args[0], args[1]
			if err := vdiArg(dst); err != nil {
				return err
			}
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			if tag == "" && id == 0 {
				return usageErrorf("Only snapshot VDIs can be cloned: give the snapshot with -s (see 'dog vdi list %s')", src)
			}
			var r *cluster.Result
			if noShare {
				r, err = a.copyVDI(ctx, src, tag, id, dst, prealloc)
			} else {
				r, err = a.volume(ctx, api.VolumeOp{Op: api.VolClone, Name: src, Tag: tag, SnapID: id, Dest: dst})
				if err == nil && prealloc {
					err = a.fillVDI(ctx, dst, nil, true)
				}
			}
			if err != nil {
				return failf(err, "Failed to clone %s to %s", vdiDesc(src, tag, id), dst)
			}
			return a.created(r.VID, "VDI ID of newly created clone: %x\n", map[string]any{"name": dst, "vid": r.VID, "source": src, "tag": tag, "snap_id": id})
		},
	}
	snapFlag(cmd, &snap, "the snapshot (id or tag) to clone (required)")
	cmd.Flags().BoolVarP(&prealloc, "prealloc", "P", false, "allocate every object of the clone now")
	cmd.Flags().BoolVarP(&noShare, "no-share", "n", false, "copy the snapshot's objects instead of sharing them")
	return cmd
}

// copyVDI makes dst a standalone copy of snapshot (tag/id) of src.
func (a *app) copyVDI(ctx context.Context, src, tag string, id uint32, dst string, holes bool) (*cluster.Result, error) {
	st, err := a.formatted(ctx)
	if err != nil {
		return nil, err
	}
	s, err := lookup(st, src, tag, id)
	if err != nil {
		return nil, err
	}
	vc, err := a.vconn(ctx)
	if err != nil {
		return nil, err
	}
	idx, err := readIndex(ctx, vc, s)
	if err != nil {
		return nil, err
	}
	r, err := a.volume(ctx, api.VolumeOp{Op: api.VolCreate, Name: dst, Size: s.Size, Redundancy: s.Redundancy().String(), BSS: s.BlockSizeShift})
	if err != nil {
		return nil, err
	}
	return r, a.fillVDI(ctx, dst, idx, holes)
}

// fillVDI makes the working VDI name own its objects: those it shares with
// an ancestor are copied (server-side, by a copy-on-write create without
// data), entries of from (another VDI's index) are copied from there, and
// with holes every unallocated object is created empty.
func (a *app) fillVDI(ctx context.Context, name string, from []uint32, holes bool) error {
	vc, err := a.vconn(ctx)
	if err != nil {
		return err
	}
	v, err := vdi.Open(ctx, vc, name, "", 0)
	if err != nil {
		return err
	}
	ino := v.Inode()
	n := nrObjects(ino.VDISize, ino.BlockSizeShift)
	bar := a.bar(uint64(n), true)
	defer bar.Finish()
	const batch = 256
	for lo := uint32(0); lo < n; lo += batch {
		hi := min(lo+batch, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		set := make([]bool, hi-lo)
		for i := lo; i < hi; i++ {
			owner := ino.DataVDIID[i]
			if int(i) < len(from) && from[i] != 0 {
				owner = from[i]
			}
			if owner == ino.VDIID || (owner == 0 && !holes) {
				continue
			}
			set[i-lo] = true
			var cow proto.OID
			if owner != 0 {
				cow = proto.DataOID(owner, i)
			}
			g.Go(func() error {
				return createObj(gctx, vc, proto.DataOID(ino.VDIID, i), cow, ino.NrCopies, ino.CopyPolicy)
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		// Record the new objects in the index, one write per run.
		for i := 0; i < len(set); {
			if !set[i] {
				i++
				continue
			}
			j := i
			vids := []uint32{}
			for ; j < len(set) && set[j]; j++ {
				vids = append(vids, ino.VDIID)
			}
			if err := writeIndex(ctx, vc, ino.VDIID, lo+uint32(i), vids, ino.NrCopies); err != nil {
				return err
			}
			i = j
		}
		bar.Set(uint64(hi), uint64(n))
	}
	return nil
}

// createObj creates a data object: a copy of cow when set, else zeros.
func createObj(ctx context.Context, c vdi.Conn, oid, cow proto.OID, copies, policy uint8) error {
	req := proto.Request{Opcode: proto.OpCreateAndWriteObj, Flags: proto.FlagWrite}
	if cow != 0 {
		req.Flags |= proto.FlagCOW
	}
	req.SetObj(proto.ObjArgs{OID: uint64(oid), CowOID: uint64(cow), Copies: copies, CopyPolicy: policy})
	_, _, err := c.Do(ctx, req, nil, nil)
	return err
}

// writeIndex sets data_vdi_id[first...] of vid's inode.
func writeIndex(ctx context.Context, c vdi.Conn, vid, first uint32, vids []uint32, copies uint8) error {
	req := proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite}
	req.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(vid)), Offset: proto.IndexOffset(first), Copies: copies})
	_, _, err := c.Do(ctx, req, proto.EncodeIndex(vids), nil)
	return err
}

const rollbackQuestion = "This operation discards any changes made since the previous\nsnapshot was taken.  Continue? [yes/no]: "

func (a *app) vdiRollbackCmd() *cobra.Command {
	var (
		snap  string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "rollback VDI",
		Short: "return the VDI to a snapshot, discarding changes since",
		Long: `rollback makes the VDI's working state snapshot -s again; everything written
since is lost. dog asks first unless -f is given; without a terminal to ask
on, -f is required.`,
		Example: "  dog vdi rollback -s before-upgrade vol0\n  dog vdi rollback -f -s 2 vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			if tag == "" && id == 0 {
				return usageErrorf("%s: give the snapshot to roll back to with -s (see 'dog vdi list %s')", cmd.CommandPath(), name)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			if _, err := lookup(st, name, tag, id); err != nil {
				return failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
			}
			if !force {
				if err := a.confirm(rollbackQuestion, fmt.Sprintf("rolling back discards what was written to %s since snapshot %s", name, snap), "-f"); err != nil {
					return err
				}
			}
			r, err := a.volume(ctx, api.VolumeOp{Op: api.VolRollback, Name: name, Tag: tag, SnapID: id})
			if err != nil {
				return failf(err, "Failed to roll back %s", vdiDesc(name, tag, id))
			}
			return a.created(r.VID, "New VDI ID of rollbacked VDI: %x\n", map[string]any{"name": name, "vid": r.VID, "tag": tag, "snap_id": id})
		},
	}
	snapFlag(cmd, &snap, "the snapshot (id or tag) to return to (required)")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}

func (a *app) vdiResizeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "resize VDI SIZE",
		Short:   "grow a VDI",
		Long:    "resize grows the VDI to SIZE bytes (K, M, G, T suffixes); VDIs cannot shrink.",
		Example: "  dog vdi resize vol0 20G",
		Args:    args(2, 2, "VDI", "SIZE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			size, err := parse.PositiveSize("vdi size", args[1])
			if err != nil {
				return err
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			v, err := lookup(st, name, "", 0)
			if err != nil {
				return failf(err, "Failed to open VDI %s", name)
			}
			if size < v.Size {
				return usageErrorf("Shrinking VDIs is not implemented (%s is %s; asked for %s)", name, units.FormatSize(v.Size), units.FormatSize(size))
			}
			if size > maxSize(v.BlockSizeShift) {
				return usageErrorf("New VDI size is too large. This volume's max size is %d", maxSize(v.BlockSizeShift))
			}
			if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolResize, Name: name, Size: size}); err != nil {
				return failf(err, "Failed to resize %s", name)
			}
			if a.json() {
				return a.emit(map[string]any{"name": name, "size": size}, nil)
			}
			return nil
		},
	}
}

// treeDoc is a node of `dog vdi tree -o json`.
type treeDoc struct {
	Name     string     `json:"name"`
	VID      uint32     `json:"vid"`
	SnapID   uint32     `json:"snap_id"`
	Tag      string     `json:"tag,omitempty"`
	Current  bool       `json:"current"`
	Created  time.Time  `json:"created"`
	Children []*treeDoc `json:"children,omitempty"`
}

// treeVDIs lists the live VDIs in creation order for `dog vdi tree`.
func treeVDIs(st *cluster.State) []*cluster.VDI {
	var vs []*cluster.VDI
	for _, v := range st.VDIs {
		if !v.Deleted {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool {
		if vs[i].Name != vs[j].Name {
			return vs[i].Name < vs[j].Name
		}
		if vs[i].CreateTime != vs[j].CreateTime {
			return vs[i].CreateTime < vs[j].CreateTime
		}
		return vs[i].VID < vs[j].VID
	})
	return vs
}

func treeJSON(vs []*cluster.VDI) []*treeDoc {
	docs := map[uint32]*treeDoc{}
	byVID := map[uint32]*cluster.VDI{}
	for _, v := range vs {
		byVID[v.VID] = v
		docs[v.VID] = &treeDoc{Name: v.Name, VID: v.VID, SnapID: v.SnapID, Tag: v.Tag, Current: !v.IsSnapshot(), Created: ctimeOf(v.CreateTime)}
	}
	roots := []*treeDoc{}
	for _, v := range vs {
		p, ok := byVID[v.ParentVID]
		if ok && p.Name == v.Name && p.VID != v.VID && !cycles(byVID, v.VID) {
			docs[p.VID].Children = append(docs[p.VID].Children, docs[v.VID])
		} else {
			roots = append(roots, docs[v.VID])
		}
	}
	return roots
}

// cycles reports whether following parents from vid comes back to it.
func cycles(byVID map[uint32]*cluster.VDI, vid uint32) bool {
	cur := byVID[vid].ParentVID
	for i := 0; i <= len(byVID); i++ {
		if cur == vid {
			return true
		}
		p, ok := byVID[cur]
		if !ok {
			return false
		}
		cur = p.ParentVID
	}
	return true
}

// printTree prints `dog vdi tree` of the state.
func (a *app) printTree(st *cluster.State) error {
	vs := treeVDIs(st)
	if a.json() {
		return a.emit(treeJSON(vs), nil)
	}
	tv := make([]render.TreeVDI, len(vs))
	for i, v := range vs {
		tv[i] = render.TreeVDI{Name: v.Name, VID: v.VID, Parent: v.ParentVID, Created: ctimeOf(v.CreateTime), Current: !v.IsSnapshot()}
	}
	return render.Tree(a.stdout, tv, a.opts())
}

func (a *app) vdiTreeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "tree",
		Short: "show each VDI's snapshots as a tree",
		Long: `tree shows each VDI's snapshots in order, with their creation times; a
rollback starts a branch. "(you are here)" is the working VDI.`,
		Example: "  dog vdi tree",
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.formatted(cmd.Context())
			if err != nil {
				return err
			}
			return a.printTree(st.State)
		},
	}
}
