package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cmd/dog/internal/backup"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
)

// originAttr is the attribute a restored snapshot keeps: the identity of
// the snapshot whose content it holds, so that later incremental backups of
// that snapshot apply to it.
const originAttr = "dog.backup.origin"

// identOf names snapshot v for a backup stream.
func identOf(st *api.ClusterState, v *cluster.VDI) *backup.Ident {
	id := &backup.Ident{Cluster: st.State.Format.Ctime, VID: v.VID, SnapCtime: v.SnapCtime, Name: v.Name, SnapID: v.SnapID, Tag: v.Tag}
	if o, ok := v.Attrs[originAttr]; ok {
		id.Origin = string(o)
	}
	return id
}

func (a *app) vdiBackupCmd() *cobra.Command {
	var to, from string
	cmd := &cobra.Command{
		Use:   "backup VDI",
		Short: "write a snapshot, or its changes since another, to stdout",
		Long: `backup writes snapshot -s of the VDI to stdout as a backup stream: all of
its data, or with -F only the objects that changed since the older snapshot
-F. 'dog vdi restore' applies it. The stream is checksummed throughout; its
format is described in cmd/dog/internal/backup.`,
		Example: `  dog vdi backup -s mon vol0 > vol0-mon.full
  dog vdi backup -F mon -s tue vol0 > vol0-tue.incr`,
		Args: args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			tag, id, err := parse.Snapshot(to)
			if err != nil {
				return err
			}
			if tag == "" && id == 0 {
				return usageErrorf("%s: give the snapshot to back up with -s (and the older one with -F for an incremental backup)", cmd.CommandPath())
			}
			ftag, fid, err := parse.Snapshot(from)
			if err != nil {
				return err
			}
			if tty, _ := a.terminal(a.stdout); tty {
				return usageErrorf("refusing to write a binary backup stream to a terminal: redirect stdout to a file")
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			toV, err := lookup(st, name, tag, id)
			if err != nil {
				return failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
			}
			var fromV *cluster.VDI
			if from != "" {
				if fromV, err = lookup(st, name, ftag, fid); err != nil {
					return failf(err, "Failed to open VDI %s", vdiDesc(name, ftag, fid))
				}
				if fromV.VID == toV.VID {
					return usageErrorf("-F and -s name the same snapshot")
				}
				if fromV.BlockSizeShift != toV.BlockSizeShift {
					return fmt.Errorf("snapshots %d and %d of %s have different object sizes", fromV.SnapID, toV.SnapID, name)
				}
			}
			v, err := a.openVDI(ctx, name, tag, id)
			if err != nil {
				return err
			}
			toIdx := v.Inode().DataVDIID
			var fromIdx []uint32
			if fromV != nil {
				vc, err := a.vconn(ctx)
				if err != nil {
					return err
				}
				if fromIdx, err = readIndex(ctx, vc, fromV); err != nil {
					return failf(err, "Failed to read the inode of %s", vdiDesc(name, ftag, fid))
				}
			}
			owner := func(idx []uint32, i int) uint32 {
				if i < len(idx) {
					return idx[i]
				}
				return 0
			}
			var objs []uint32
			for i := range toIdx {
				t := toIdx[i]
				if (fromV == nil && t != 0) || (fromV != nil && t != owner(fromIdx, i)) {
					objs = append(objs, uint32(i))
				}
			}
			h := backup.Header{VDI: name, Size: toV.Size, BlockSizeShift: toV.BlockSizeShift, Redundancy: toV.Redundancy().String(),
				To: *identOf(st, toV), Created: a.now().UTC(), Objects: uint32(len(objs))}
			if fromV != nil {
				h.From = identOf(st, fromV)
			}
			out := bufio.NewWriterSize(a.stdout, 1<<20)
			bw, err := backup.NewWriter(out, h)
			if err != nil {
				return err
			}
			os := uint64(v.ObjectSize())
			bar := a.bar(uint64(len(objs))*os, false)
			defer bar.Finish()
			// The pieces to read, object by object; an object the snapshot
			// no longer has is a marker (a zero record, nothing to read).
			k, pos, end := 0, uint64(0), uint64(0)
			next := func() (spanOf, bool) {
				if pos >= end {
					if k == len(objs) {
						return spanOf{}, false
					}
					i := objs[k]
					k++
					pos, end = uint64(i)*os, min(uint64(i+1)*os, toV.Size)
					if toIdx[i] == 0 {
						pos = end
						return spanOf{pos: uint64(i) * os, idx: i, first: true, marker: true}, true
					}
					n := chunkLen(pos, end, uint32(os))
					s := spanOf{pos: pos, n: n, idx: i, first: true}
					pos += uint64(n)
					return s, true
				}
				n := chunkLen(pos, end, uint32(os))
				s := spanOf{pos: pos, n: n, idx: uint32(pos / os)}
				pos += uint64(n)
				return s, true
			}
			err = readSpans(ctx, v, next, bar, func(s spanOf, p []byte) error {
				// Changed objects are emptied first, then get their data.
				if s.first && fromV != nil && owner(fromIdx, int(s.idx)) != 0 {
					if err := bw.Zero(s.idx); err != nil {
						return err
					}
				}
				if s.marker || isZero(p) {
					return nil
				}
				return bw.Data(s.idx, uint32(s.pos-uint64(s.idx)*os), p)
			})
			if err == nil {
				err = bw.Close()
			}
			if err == nil {
				err = out.Flush()
			}
			return failf(err, "Failed to back up %s", vdiDesc(name, tag, id))
		},
	}
	cmd.Flags().StringVarP(&to, "snapshot", "s", "", "the snapshot (id or tag) to back up (required)")
	cmd.Flags().StringVarP(&from, "from", "F", "", "back up only the changes since this older snapshot (id or tag)")
	return cmd
}

// zeroObject empties object idx of v: drops it from the index (the server
// reclaims it), or zeroes the part a last, partial object spans.
func zeroObject(ctx context.Context, v *vdi.VDI, idx uint32) error {
	os := uint64(v.ObjectSize())
	pos := uint64(idx) * os
	n := min(os, v.Size()-pos)
	if n == os {
		return v.Discard(ctx, pos, n)
	}
	for off := uint64(0); off < n; off += maxChunk {
		if err := v.WriteAt(ctx, make([]byte, min(n-off, maxChunk)), pos+off); err != nil {
			return err
		}
	}
	return nil
}

func (a *app) vdiRestoreCmd() *cobra.Command {
	var (
		snap, tagAs, copies string
		force               bool
	)
	cmd := &cobra.Command{
		Use:   "restore VDI",
		Short: "apply a backup stream from stdin to a VDI",
		Long: `restore applies a stream of 'dog vdi backup' read from stdin, then takes a
snapshot of the result (tagged as the backed-up snapshot, or --tag).

A full backup creates the VDI (an existing one is replaced only with -f).
An incremental backup applies on top of snapshot -s of the VDI, which must
hold the stream's starting point: the very snapshot it was taken from, or a
snapshot an earlier restore made of it. The VDI first returns to that
snapshot; anything written since is discarded. If the stream turns out
damaged, the VDI is returned to the snapshot (or the new VDI deleted).`,
		Example: `  dog vdi restore vol0-copy < vol0-mon.full
  dog vdi restore -s mon vol0-copy < vol0-tue.incr`,
		Args: args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			ctx := cmd.Context()
			name := args[0]
			if err := vdiArg(name); err != nil {
				return err
			}
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			if tagAs != "" {
				if err := parse.Tag(tagAs); err != nil {
					return err
				}
			}
			op := api.VolumeOp{Op: api.VolCreate, Name: name}
			if copies != "" {
				r, err := parse.Redundancy(copies)
				if err != nil {
					return err
				}
				op.Redundancy = r.String()
			}
			if a.interactive() {
				return usageErrorf("restore reads a backup stream from stdin: redirect it from a file")
			}
			br, err := backup.NewReader(bufio.NewReaderSize(a.stdin, 1<<20))
			if err != nil {
				return failf(err, "Failed to read the backup stream")
			}
			h := br.Header()
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			cur, lerr := lookup(st, name, "", 0)
			var undo func()
			switch {
			case h.Incremental():
				if tag == "" && id == 0 {
					return usageErrorf("this backup holds the changes from %s to %s: give -s, the snapshot of %s holding %s", h.From, h.To, name, h.From)
				}
				base, err := lookup(st, name, tag, id)
				if err != nil {
					return failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
				}
				if identOf(st, base).Key() != h.From.Key() {
					return fmt.Errorf("backup base mismatch: the stream applies to %s, but snapshot %s is not that snapshot nor restored from it",
						h.From, vdiDesc(name, tag, id))
				}
				if base.BlockSizeShift != h.BlockSizeShift {
					return fmt.Errorf("%s has %d-byte objects, the backup %d-byte ones", name, base.ObjectSize(), h.ObjectSize())
				}
				if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolRollback, Name: name, Tag: tag, SnapID: id}); err != nil {
					return failf(err, "Failed to return %s to snapshot %s", name, vdiDesc(name, tag, id))
				}
				undo = func() { a.undoRollback(name, tag, id) }
			case tag != "" || id != 0:
				return usageErrorf("this is a full backup: -s names the base snapshot of incremental backups only")
			case lerr == nil:
				if !force {
					return usageErrorf("VDI %s exists: restoring a full backup replaces its content; pass -f to go ahead, or restore into a new VDI", name)
				}
				if cur.BlockSizeShift != h.BlockSizeShift {
					return fmt.Errorf("%s has %d-byte objects, the backup %d-byte ones: restore into a new VDI", name, cur.ObjectSize(), h.ObjectSize())
				}
				if err := a.emptyVDI(ctx, name); err != nil {
					return failf(err, "Failed to clear %s", name)
				}
			default:
				op.Size, op.BSS = h.Size, h.BlockSizeShift
				if op.Redundancy == "" {
					op.Redundancy = h.Redundancy
				}
				if _, err := a.volume(ctx, op); err != nil {
					return failf(err, "Failed to create VDI %s", name)
				}
				undo = func() { a.cleanup(name) }
			}
			defer func() {
				if err != nil && undo != nil {
					undo()
				}
			}()
			v, err := a.openVDI(ctx, name, "", 0)
			if err != nil {
				return err
			}
			if v.Size() < h.Size {
				if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolResize, Name: name, Size: h.Size}); err != nil {
					return failf(err, "Failed to grow %s to the backup's size", name)
				}
				if v, err = a.openVDI(ctx, name, "", 0); err != nil {
					return err
				}
			}
			target := v.Inode().VDIID
			objects, err := a.applyStream(ctx, br, v)
			if err != nil {
				return failf(err, "Failed to restore %s", name)
			}
			// Freeze the result, and remember what it holds.
			if tagAs == "" {
				tagAs = h.To.Tag
				if _, err := lookup(st, name, tagAs, 0); err == nil || tagAs == "" {
					tagAs = "" // taken (restoring into the source): leave it untagged
				}
			}
			if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolSnapshot, Name: name, Tag: tagAs}); err != nil {
				return failf(err, "Restored %s, but failed to snapshot it", name)
			}
			undo = nil
			if _, err := a.propose(ctx, "vdi setattr", cluster.Command{Op: cluster.CmdSetAttr, VID: target, Key: originAttr, Value: []byte(h.To.Key())}); err != nil {
				return failf(err, "Restored %s, but failed to record its origin", name)
			}
			st, err = a.state(ctx)
			if err != nil {
				return err
			}
			snapID := uint32(0)
			if s, ok := st.State.VDIs[target]; ok {
				snapID = s.SnapID
			}
			doc := map[string]any{"vdi": name, "from": h.From, "to": h.To, "objects": objects, "snapshot": map[string]any{"snap_id": snapID, "tag": tagAs, "vid": target}}
			return a.emit(doc, func(w io.Writer) error {
				if a.raw {
					_, err := fmt.Fprintf(w, "%d %s\n", snapID, tagAs)
					return err
				}
				_, err := fmt.Fprintf(w, "restored %s into %s (%d objects); snapshot id %d%s holds it\n", h.To, name, objects, snapID, tagNote(tagAs))
				return err
			})
		},
	}
	snapFlag(cmd, &snap, "for an incremental backup: the snapshot (id or tag) it applies on top of")
	cmd.Flags().StringVar(&tagAs, "tag", "", "tag of the snapshot taken after the restore (default: the backed-up snapshot's tag)")
	cmd.Flags().StringVarP(&copies, "copies", "c", "", "redundancy of a VDI the restore creates (default: the backed-up VDI's)")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "let a full backup replace an existing VDI's content")
	return cmd
}

func tagNote(tag string) string {
	if tag == "" {
		return ""
	}
	return fmt.Sprintf(" (tag %s)", tag)
}

// applyStream writes the records of br into v, ioDepth writes at a time,
// and returns the number of objects restored.
func (a *app) applyStream(ctx context.Context, br *backup.Reader, v *vdi.VDI) (int, error) {
	h := br.Header()
	os := uint64(h.ObjectSize())
	bar := a.bar(uint64(h.Objects)*os, false)
	defer bar.Finish()
	g, gctx := errgroup.WithContext(ctx)
	free := make(chan []byte, ioDepth)
	for range ioDepth {
		free <- make([]byte, min(os, maxChunk))
	}
	objects, last := 0, int64(-1)
	err := func() error {
		for {
			rec, err := br.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if int64(rec.Index) != last {
				objects++
				last = int64(rec.Index)
			}
			if rec.Kind == backup.KindZero {
				// No write of this object can be in flight: a zero
				// record is its object's first.
				if err := zeroObject(gctx, v, rec.Index); err != nil {
					return err
				}
				continue
			}
			base := uint64(rec.Index)*os + uint64(rec.Offset)
			for done := uint64(0); done < uint64(rec.Length); {
				var buf []byte
				select {
				case buf = <-free:
				case <-gctx.Done():
					return gctx.Err()
				}
				n := min(uint64(len(buf)), uint64(rec.Length)-done)
				if _, err := io.ReadFull(br, buf[:n]); err != nil {
					free <- buf
					return err
				}
				pos, p := base+done, buf[:n]
				g.Go(func() error {
					defer func() { free <- buf }()
					if pos+uint64(len(p)) > v.Size() {
						return fmt.Errorf("%w: data beyond the end of the VDI", backup.ErrCorrupt)
					}
					if err := v.WriteAt(gctx, p, pos); err != nil {
						return err
					}
					bar.Add(uint64(len(p)))
					return nil
				})
				done += n
			}
			// Reading on verifies the record's checksum.
			if _, err := br.Read(nil); err != nil && err != io.EOF {
				return err
			}
		}
	}()
	werr := g.Wait()
	if err == nil {
		err = werr
	}
	return objects, err
}

// emptyVDI drops every object of the working VDI name.
func (a *app) emptyVDI(ctx context.Context, name string) error {
	v, err := a.openVDI(ctx, name, "", 0)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(ioDepth * 2)
	for i, o := range slices.Clone(v.Inode().DataVDIID) {
		if o == 0 {
			continue
		}
		g.Go(func() error { return zeroObject(gctx, v, uint32(i)) })
	}
	return g.Wait()
}

// undoRollback returns name to its snapshot after a failed restore.
func (a *app) undoRollback(name, tag string, id uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolRollback, Name: name, Tag: tag, SnapID: id}); err != nil && !errors.Is(err, context.Canceled) {
		a.warnf("could not return %s to snapshot %s after the failure: %s", name, vdiDesc(name, tag, id), firstMsg(a, err))
	}
}
