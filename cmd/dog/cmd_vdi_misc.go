package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/cmd/dog/internal/render"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
)

func (a *app) vdiObjectCmd() *cobra.Command {
	var snap, index string
	cmd := &cobra.Command{
		Use:   "object VDI",
		Short: "show which nodes hold an object of a VDI",
		Long: `object looks for the VDI's inode object, or with -i its data object of that
index, on every node, and shows where the current epoch's placement ring
puts its copies (or erasure-coded strips, in strip order).`,
		Example: "  dog vdi object vol0\n  dog vdi object -i 12 vol0\n  dog vdi object map vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			idx := int64(-1)
			if index != "" {
				i, err := parse.Index(index)
				if err != nil {
					return err
				}
				idx = int64(i)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			v, err := lookup(st, name, tag, id)
			if err != nil {
				return failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
			}
			loc, err := a.locate(ctx, st, v, idx)
			if err != nil {
				return err
			}
			return a.emit(loc, func(w io.Writer) error { return render.ObjectLocation(w, *loc) })
		},
	}
	snapFlag(cmd, &snap, "look at this snapshot (id or tag)")
	cmd.Flags().StringVarP(&index, "index", "i", "", "index of the data object (default: the inode object)")
	cmd.AddCommand(a.vdiObjectMapCmd())
	return cmd
}

// locate finds object idx of v (the inode when idx < 0) on every node.
func (a *app) locate(ctx context.Context, st *api.ClusterState, v *cluster.VDI, idx int64) (*render.Location, error) {
	cur := st.State.Current()
	if cur == nil {
		return nil, proto.ResWaitForFormat
	}
	red := v.Redundancy()
	l := &render.Location{VID: v.VID, Inode: idx < 0, Allocated: true, Epoch: cur.Epoch}
	oid := proto.InodeOID(v.VID)
	l.Copies = int(red.NrCopies())
	if idx >= 0 {
		n := nrObjects(v.Size, v.BlockSizeShift)
		if idx >= int64(n) {
			return nil, usageErrorf("object index %d is beyond the %d objects of %s", idx, n, v.Name)
		}
		vc, err := a.vconn(ctx)
		if err != nil {
			return nil, err
		}
		index, err := readIndex(ctx, vc, v)
		if err != nil {
			return nil, failf(err, "Failed to read the inode of %s", v.Name)
		}
		l.Index = uint32(idx)
		owner := index[idx]
		if owner == 0 {
			l.Allocated = false
			return l, nil
		}
		oid = proto.DataOID(owner, uint32(idx))
		l.EC = red.IsEC()
	}
	l.OID = oid.String()
	for _, m := range cur.Members {
		if m.Space > 0 {
			l.Nodes++
		}
	}
	for _, t := range (rings{}).of(cur.Members).Targets(oid, l.Copies) {
		l.Expected = append(l.Expected, t.Addr.String())
	}
	l.Holders = make([]render.Holder, len(cur.Members))
	var wg sync.WaitGroup
	for i, m := range cur.Members {
		l.Holders[i].Addr = m.Addr.String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := &l.Holders[i]
			entries, err := a.objInfo(ctx, h.Addr, oid)
			if err != nil {
				_, h.Err = a.describe(err)
				return
			}
			for _, e := range entries {
				switch {
				case e.Stale != 0:
					h.Stale = append(h.Stale, e.Stale)
				case e.Key.EC:
					h.Live = true
					h.Strips = append(h.Strips, int(e.Key.ECIndex))
				default:
					h.Live = true
				}
			}
			sort.Ints(h.Strips)
		}()
	}
	wg.Wait()
	return l, nil
}

// objInfo asks the sheep at addr which copies of oid it keeps.
func (a *app) objInfo(ctx context.Context, addr string, oid proto.OID) ([]recovery.Entry, error) {
	c, err := a.connTo(ctx, addr)
	if err != nil {
		return nil, err
	}
	var out []recovery.Entry
	err = a.meta(ctx, c, proto.OpObjInfo, "object lookup", api.ObjInfoRequest{OID: oid}, &out)
	return out, err
}

func (a *app) vdiObjectMapCmd() *cobra.Command {
	var snap, index string
	cmd := &cobra.Command{
		Use:     "map VDI",
		Short:   "show which VDI owns each allocated object",
		Example: "  dog vdi object map vol0\n  dog vdi object map -i 3 vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			only := int64(-1)
			if index != "" {
				i, err := parse.Index(index)
				if err != nil {
					return err
				}
				only = int64(i)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			v, err := lookup(st, name, tag, id)
			if err != nil {
				return failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
			}
			vc, err := a.vconn(ctx)
			if err != nil {
				return err
			}
			idx, err := readIndex(ctx, vc, v)
			if err != nil {
				return failf(err, "Failed to read the inode of %s", name)
			}
			if only >= int64(len(idx)) {
				return usageErrorf("object index %d is beyond the %d objects of %s", only, len(idx), name)
			}
			type entry struct {
				Index uint32 `json:"index"`
				VID   uint32 `json:"vid"`
			}
			doc := []entry{}
			for i, o := range idx {
				if (only >= 0 && int64(i) == only) || (only < 0 && o != 0) {
					doc = append(doc, entry{uint32(i), o})
				}
			}
			return a.emit(doc, func(w io.Writer) error { return render.ObjectMap(w, idx, only) })
		},
	}
	snapFlag(cmd, &snap, "look at this snapshot (id or tag)")
	cmd.Flags().StringVarP(&index, "index", "i", "", "show only this index")
	return cmd
}

func (a *app) vdiSetattrCmd() *cobra.Command {
	var (
		snap      string
		del, excl bool
	)
	cmd := &cobra.Command{
		Use:   "setattr VDI KEY [VALUE]",
		Short: "set (or with -d delete) an attribute of a VDI",
		Long: `setattr stores a key/value attribute with the VDI (libvirt and OpenStack
keep their metadata this way). Without VALUE the value is read from stdin
(at most 64 KiB). -x fails if the key exists; -d deletes the key.`,
		Example: `  dog vdi setattr vol0 owner alice
  echo -n '{"os":"linux"}' | dog vdi setattr vol0 meta
  dog vdi setattr -d vol0 owner`,
		Args: args(2, 3, "VDI", "KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name, key := args[0], args[1]
			if err := parse.AttrKey(key); err != nil {
				return err
			}
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			var value []byte
			switch {
			case del && len(args) == 3:
				return usageErrorf("-d deletes the attribute: do not give a value")
			case len(args) == 3:
				value = []byte(args[2])
			case !del:
				value, err = io.ReadAll(io.LimitReader(a.stdin, cluster.MaxAttrValue+1))
				if err != nil {
					return failf(err, "Failed to read the attribute value from stdin")
				}
			}
			if len(value) > cluster.MaxAttrValue {
				return usageErrorf("the attribute value is larger than %d bytes", cluster.MaxAttrValue)
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			v, err := lookup(st, name, tag, id)
			if err != nil {
				return failf(err, "VDI not found")
			}
			_, err = a.propose(ctx, "vdi setattr", cluster.Command{Op: cluster.CmdSetAttr, VID: v.VID, Key: key, Value: value, Delete: del, Excl: excl})
			switch {
			case errors.Is(err, proto.ResVDIExist):
				return &exitError{code: exitExists, msg: fmt.Sprintf("The attribute '%s' already exists", key)}
			case errors.Is(err, proto.ResNoObj):
				return &exitError{code: exitMissing, msg: fmt.Sprintf("Attribute '%s' not found", key)}
			case err != nil:
				return failf(err, "Failed to set attribute")
			}
			if a.json() {
				return a.emit(map[string]any{"vdi": name, "key": key, "deleted": del}, nil)
			}
			return nil
		},
	}
	snapFlag(cmd, &snap, "set the attribute of this snapshot (id or tag)")
	cmd.Flags().BoolVarP(&del, "delete", "d", false, "delete the attribute")
	cmd.Flags().BoolVarP(&excl, "exclusive", "x", false, "fail if the attribute exists")
	return cmd
}

func (a *app) vdiGetattrCmd() *cobra.Command {
	var snap string
	cmd := &cobra.Command{
		Use:     "getattr VDI KEY",
		Short:   "print an attribute of a VDI",
		Long:    "getattr writes the attribute's value to stdout as it was stored, without a newline.",
		Example: "  dog vdi getattr vol0 owner",
		Args:    args(2, 2, "VDI", "KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, key := args[0], args[1]
			if err := parse.AttrKey(key); err != nil {
				return err
			}
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			st, err := a.formatted(cmd.Context())
			if err != nil {
				return err
			}
			v, err := lookup(st, name, tag, id)
			if err != nil {
				return failf(err, "VDI not found")
			}
			val, ok := v.Attrs[key]
			if !ok {
				return &exitError{code: exitMissing, msg: fmt.Sprintf("Attribute '%s' not found", key)}
			}
			doc := map[string]any{"vdi": name, "key": key}
			if utf8.Valid(val) {
				doc["value"] = string(val)
			} else {
				doc["value_base64"] = val
			}
			return a.emit(doc, func(w io.Writer) error {
				_, err := w.Write(val)
				return err
			})
		},
	}
	snapFlag(cmd, &snap, "read the attribute of this snapshot (id or tag)")
	return cmd
}

// checkResult is one VDI's check, for output.
type checkResult struct {
	Snapshot bool   `json:"snapshot"`
	SnapID   uint32 `json:"snap_id,omitempty"`
	api.CheckReport
}

// ok reports whether nothing is left damaged.
func (r checkResult) ok() bool {
	return r.Lost == 0 && r.Unreachable == 0 && r.Missing+r.Mismatch+r.Corrupt <= r.Repaired
}

func printCheck(w io.Writer, r checkResult) error {
	for _, d := range r.Details {
		if _, err := fmt.Fprintln(w, d); err != nil {
			return err
		}
	}
	state := "fine"
	switch {
	case r.Lost > 0:
		state = "DATA LOST"
	case r.Missing+r.Mismatch+r.Corrupt > r.Repaired:
		state = "damaged (run with --repair)"
	case r.Unreachable > 0:
		state = fmt.Sprintf("incomplete: %d copies unreachable", r.Unreachable)
	case r.Repaired > 0:
		state = "repaired"
	}
	_, err := fmt.Fprintf(w, "%s: %d objects, %d copies checked: %d missing, %d mismatched, %d corrupt, %d repaired, %d lost: %s\n",
		r.VDI, r.Objects, r.Copies, r.Missing, r.Mismatch, r.Corrupt, r.Repaired, r.Lost, state)
	return err
}

// checkVDI runs the server-side check of a VDI or snapshot.
func (a *app) checkVDI(ctx context.Context, name, tag string, snapID uint32, repair bool) (*api.CheckReport, error) {
	r, err := a.volumeT(ctx, a.longTimeout(), api.VolumeOp{Op: api.VolCheck, Name: name, Tag: tag, SnapID: snapID, Repair: repair})
	if err != nil {
		return nil, failf(err, "Failed to check %s", vdiDesc(name, tag, snapID))
	}
	var rep api.CheckReport
	if err := json.Unmarshal(r.Value, &rep); err != nil {
		return nil, fmt.Errorf("check of %s: malformed report from the sheep: %v", name, err)
	}
	if rep.VDI == "" {
		rep.VDI = name
	}
	return &rep, nil
}

func (a *app) vdiCheckCmd() *cobra.Command {
	var (
		snap   string
		repair bool
	)
	cmd := &cobra.Command{
		Use:   "check VDI",
		Short: "check (and with --repair fix) every copy of a VDI's objects",
		Long: `check compares every copy (or erasure-coded strip) of the VDI's objects with
where the placement ring wants them and with each other. With --repair,
missing and damaged copies are rebuilt from good ones, safely while the VDI
is in use: a damaged copy changes only in its damaged blocks. Copies that
differ with sound checksums (a write cut short by a crash) take the
majority's content after a wait of the peer timeout (a write in flight
makes copies differ for that long at most), and only if nothing wrote to
them meanwhile; otherwise the report says to check again. The exit status
is 1 when damage remains.`,
		Example: "  dog vdi check vol0\n  dog vdi check --repair vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			rep, err := a.checkVDI(cmd.Context(), name, tag, id, repair)
			if err != nil {
				return err
			}
			res := checkResult{Snapshot: tag != "" || id != 0, SnapID: id, CheckReport: *rep}
			if err := a.emit(res, func(w io.Writer) error { return printCheck(w, res) }); err != nil {
				return err
			}
			if !res.ok() {
				return fmt.Errorf("%s has damaged, lost or unreachable objects", name)
			}
			return nil
		},
	}
	snapFlag(cmd, &snap, "check this snapshot (id or tag)")
	cmd.Flags().BoolVar(&repair, "repair", false, "rebuild missing and damaged copies")
	return cmd
}

// chapMinSecret is RFC 3720's recommended minimum secret length (96 bits).
const chapMinSecret = 12

func (a *app) vdiChapCmd() *cobra.Command {
	c := a.newGroup("chap", "set or clear the iSCSI CHAP credentials of a VDI's target",
		"  dog vdi chap set vol0 --user alice --secret 's3cret-s3cret'\n  dog vdi chap clear vol0")
	var user, secret, muser, msecret string
	set := &cobra.Command{
		Use:   "set VDI",
		Short: "require CHAP authentication to log in to the VDI's iSCSI target",
		Long: `set makes the VDI's iSCSI target require initiators to authenticate with
CHAP as --user/--secret; with --mutual-user/--mutual-secret the target also
authenticates itself to the initiator. Secrets should be at least 12 bytes
(RFC 3720); the two secrets must differ.`,
		Example: `  dog vdi chap set vol0 --user alice --secret 'twelve-bytes+'
  dog vdi chap set vol0 --user alice --secret 'twelve-bytes+' --mutual-user tgt --mutual-secret 'another-secret'`,
		Args: args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case user == "" || secret == "":
				return usageErrorf("%s: --user and --secret are required", cmd.CommandPath())
			case (muser == "") != (msecret == ""):
				return usageErrorf("give both --mutual-user and --mutual-secret, or neither")
			case msecret != "" && msecret == secret:
				return usageErrorf("the mutual secret must differ from the initiator's secret (RFC 3720)")
			case len(user) > 255 || len(secret) > 255 || len(muser) > 255 || len(msecret) > 255:
				return usageErrorf("CHAP names and secrets are limited to 255 bytes")
			}
			for _, s := range []string{secret, msecret} {
				if s != "" && len(s) < chapMinSecret {
					a.warnf("warning: a CHAP secret of %d bytes is weak; RFC 3720 asks for at least %d", len(s), chapMinSecret)
				}
			}
			return a.setCHAP(cmd.Context(), args[0], &cluster.CHAP{User: user, Secret: secret, MutualUser: muser, MutualSecret: msecret})
		},
	}
	f := set.Flags()
	f.StringVar(&user, "user", "", "user name initiators log in as")
	f.StringVar(&secret, "secret", "", "initiators' CHAP secret")
	f.StringVar(&muser, "mutual-user", "", "name the target answers with (mutual CHAP)")
	f.StringVar(&msecret, "mutual-secret", "", "target's secret (mutual CHAP)")
	clr := &cobra.Command{
		Use:     "clear VDI",
		Short:   "let initiators log in to the VDI's target without CHAP",
		Example: "  dog vdi chap clear vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.setCHAP(cmd.Context(), args[0], nil)
		},
	}
	show := &cobra.Command{
		Use:     "show VDI",
		Short:   "show whether the VDI's target requires CHAP (not the secrets)",
		Example: "  dog vdi chap show vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.formatted(cmd.Context())
			if err != nil {
				return err
			}
			v, err := lookup(st, args[0], "", 0)
			if err != nil {
				return failf(err, "Failed to open VDI %s", args[0])
			}
			doc := map[string]any{"vdi": v.Name, "chap": v.CHAP != nil}
			if v.CHAP != nil {
				doc["user"], doc["mutual_user"] = v.CHAP.User, v.CHAP.MutualUser
			}
			return a.emit(doc, func(w io.Writer) error {
				var err error
				switch {
				case v.CHAP == nil:
					_, err = fmt.Fprintf(w, "%s: no CHAP\n", v.Name)
				case v.CHAP.MutualUser != "":
					_, err = fmt.Fprintf(w, "%s: CHAP user %s, mutual user %s\n", v.Name, v.CHAP.User, v.CHAP.MutualUser)
				default:
					_, err = fmt.Fprintf(w, "%s: CHAP user %s\n", v.Name, v.CHAP.User)
				}
				return err
			})
		},
	}
	c.AddCommand(set, clr, show)
	return c
}

func (a *app) setCHAP(ctx context.Context, name string, chap *cluster.CHAP) error {
	st, err := a.formatted(ctx)
	if err != nil {
		return err
	}
	v, err := lookup(st, name, "", 0)
	if err != nil {
		return failf(err, "Failed to open VDI %s", name)
	}
	if _, err := a.propose(ctx, "vdi chap", cluster.Command{Op: cluster.CmdSetCHAP, VID: v.VID, CHAP: chap}); err != nil {
		return failf(err, "Failed to set the CHAP credentials of %s", name)
	}
	if a.json() {
		return a.emit(map[string]any{"vdi": name, "chap": chap != nil}, nil)
	}
	return nil
}
