package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/resv"
)

// resvTypeNames are the persistent reservation types (SPC-4 Table 222).
var resvTypeNames = map[byte]string{
	resv.WriteExclusive:         "write exclusive",
	resv.ExclusiveAccess:        "exclusive access",
	resv.WriteExclusiveRegOnly:  "write exclusive, registrants only",
	resv.ExclusiveAccessRegOnly: "exclusive access, registrants only",
	resv.WriteExclusiveAllReg:   "write exclusive, all registrants",
	resv.ExclusiveAccessAllReg:  "exclusive access, all registrants",
}

func (a *app) vdiReservationCmd() *cobra.Command {
	c := a.newGroup("reservation", "show or clear the SCSI reservations of a VDI's iSCSI target",
		"  dog vdi reservation show vol0\n  dog vdi reservation clear vol0")
	show := &cobra.Command{
		Use:   "show VDI",
		Short: "show the VDI's SCSI reservations (every node enforces the same ones)",
		Long: `show lists the VDI's persistent reservation registrations (one per I_T
nexus: initiator port through a node), the persistent reservation, and an
SPC-2 RESERVE if one is held.`,
		Example: "  dog vdi reservation show vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, vid, err := a.resvTarget(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rs := st.State.Resv[vid]
			if rs == nil {
				rs = &resv.State{}
			}
			return a.emit(resvDoc(args[0], rs), func(w io.Writer) error { return printResv(w, args[0], rs) })
		},
	}
	clr := &cobra.Command{
		Use:   "clear VDI",
		Short: "drop every SCSI reservation and registration of the VDI",
		Long: `clear removes every persistent reservation registration, the persistent
reservation and any SPC-2 RESERVE of the VDI, on every node, as when the
host holding them is gone for good. Registered initiators get a
RESERVATIONS PREEMPTED unit attention. Fencing software relies on these
reservations: clear only what no live host still depends on.`,
		Example: "  dog vdi reservation clear vol0",
		Args:    args(1, 1, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, vid, err := a.resvTarget(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if _, err := a.propose(cmd.Context(), "vdi reservation clear", cluster.Command{Op: cluster.CmdResv, VID: vid,
				Resv: &resv.Op{Kind: resv.OpAdminClear}}); err != nil {
				return failf(err, "Failed to clear the reservations of %s", args[0])
			}
			if a.json() {
				return a.emit(map[string]any{"vdi": args[0], "cleared": true}, nil)
			}
			return nil
		},
	}
	c.AddCommand(show, clr)
	return c
}

// resvTarget looks name up and returns the id its reservations are kept
// under: the root of its snapshot chain, which its iSCSI target reports.
func (a *app) resvTarget(ctx context.Context, name string) (*api.ClusterState, uint32, error) {
	st, err := a.formatted(ctx)
	if err != nil {
		return nil, 0, err
	}
	v, err := lookup(st, name, "", 0)
	if err != nil {
		return nil, 0, failf(err, "Failed to open VDI %s", name)
	}
	return st, st.State.RootVID(v.VID), nil
}

func resvDoc(name string, rs *resv.State) map[string]any {
	regs := make([]map[string]any, 0, len(rs.Regs))
	for _, r := range rs.Regs {
		regs = append(regs, map[string]any{"nexus": r.Nexus, "initiator": r.Port, "key": fmt.Sprintf("%#x", r.Key),
			"holder": rs.IsHolder(r.Nexus)})
	}
	doc := map[string]any{"vdi": name, "generation": rs.Gen, "registrations": regs}
	if rs.Active {
		doc["type"] = resvTypeNames[rs.Type]
	}
	if rs.Reserve6 != "" {
		doc["reserve6"] = rs.Reserve6
	}
	return doc
}

func printResv(w io.Writer, name string, rs *resv.State) error {
	if len(rs.Regs) == 0 && !rs.Active && rs.Reserve6 == "" {
		_, err := fmt.Fprintf(w, "%s: no reservations\n", name)
		return err
	}
	if rs.Reserve6 != "" {
		fmt.Fprintf(w, "%s: reserved (SPC-2 RESERVE) by %s\n", name, rs.Reserve6)
	}
	if rs.Active {
		fmt.Fprintf(w, "%s: persistent reservation, %s\n", name, resvTypeNames[rs.Type])
	} else if len(rs.Regs) > 0 {
		fmt.Fprintf(w, "%s: registered, not reserved\n", name)
	}
	for _, r := range rs.Regs {
		mark := " "
		if rs.IsHolder(r.Nexus) {
			mark = "*"
		}
		fmt.Fprintf(w, "%s key 0x%016x  %s\n", mark, r.Key, r.Nexus)
	}
	_, err := fmt.Fprintf(w, "generation %d\n", rs.Gen)
	return err
}
