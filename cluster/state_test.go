package cluster

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/proto"
)

// step is one command of a scenario and what must come of it.
type step struct {
	c    Command
	code proto.Result
	// check, if set, inspects the state and result after the step.
	check func(t *testing.T, s *State, r *Result)
}

func runScenario(t *testing.T, steps []step) *State {
	t.Helper()
	s := NewState()
	for i, st := range steps {
		c := st.c
		if c.Time == 0 {
			c.Time = int64(i+1) * 1e9
		}
		r := s.Apply(&c)
		if r.Code != st.code {
			t.Fatalf("step %d (%s %s): code %v (%s), want %v", i, c.Op, c.Name, r.Code, r.Message, st.code)
		}
		if st.check != nil {
			st.check(t, s, r)
		}
	}
	return s
}

var oneMember = []Member{{ID: "a"}}

func format(copies uint8) step {
	return step{c: Command{Op: CmdFormat, Format: &Format{Copies: copies, BlockSizeShift: 22}, Members: oneMember}}
}

func TestApplyBeforeFormat(t *testing.T) {
	runScenario(t, []step{
		{c: Command{Op: CmdCreateVDI, Name: "a", Size: 1 << 30}, code: proto.ResWaitForFormat},
		{c: Command{Op: CmdFormat, Format: &Format{Copies: 0, BlockSizeShift: 22}, Members: oneMember}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdFormat, Format: &Format{Copies: 3, BlockSizeShift: 40}, Members: oneMember}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdFormat, Format: &Format{Copies: 3, BlockSizeShift: 22}}, code: proto.ResInvalidParms},
		{c: Command{Op: "bogus"}, code: proto.ResWaitForFormat},
		format(3),
		{c: Command{Op: "bogus"}, code: proto.ResInvalidParms},
	})
}

func TestCreateLookupAndCollisions(t *testing.T) {
	runScenario(t, []step{
		format(3),
		{c: Command{Op: CmdCreateVDI, Name: "test", Size: 1 << 30}, check: func(t *testing.T, s *State, r *Result) {
			if r.VID != 0x7c2b25 {
				t.Fatalf("vid %#x", r.VID)
			}
			v := s.VDIs[r.VID]
			if v.Copies != 3 || v.BlockSizeShift != 22 || v.SnapID != 1 {
				t.Fatalf("defaults not applied: %+v", v)
			}
		}},
		{c: Command{Op: CmdCreateVDI, Name: "test", Size: 1 << 30}, code: proto.ResVDIExist},
		{c: Command{Op: CmdCreateVDI, Name: "", Size: 1}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdCreateVDI, Name: "zero", Size: 0}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdCreateVDI, Name: "huge", Size: MaxVDISize(22) + 1}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdCreateVDI, Name: "ec", Size: 1 << 30, Copies: 6, CopyPolicy: 0x22}, check: func(t *testing.T, s *State, r *Result) {
			if red := s.VDIs[r.VID].Redundancy(); red.Data != 4 || red.Parity != 2 {
				t.Fatalf("redundancy %v", red)
			}
		}},
		{c: Command{Op: CmdCreateVDI, Name: "badec", Size: 1 << 30, Copies: 6, CopyPolicy: 0x32}, code: proto.ResInvalidParms},
	})
}

func TestVIDProbingOnHashCollision(t *testing.T) {
	s := runScenario(t, []step{format(1)})
	// Occupy the hash slot of "b" with another row: "b" must take the next vid.
	h := proto.NameToVID("b")
	s.VDIs[h] = &VDI{VID: h, Name: "squatter", Size: 1, Copies: 1, BlockSizeShift: 22}
	r := s.Apply(&Command{Op: CmdCreateVDI, Name: "b", Size: 1 << 20, Time: 5e9})
	if r.Code != 0 || r.VID != h+1 {
		t.Fatalf("vid %#x (%v), want %#x", r.VID, r.Code, h+1)
	}
	if v, err := s.Lookup("b", "", 0); err != nil || v.VID != h+1 {
		t.Fatalf("lookup after probe: %v %v", v, err)
	}
}

// CmdCheckWorking answers whether a VDI is still the working one at its
// place in the log and changes nothing: a proposer acts on its answer
// alone (Node.Decide).
func TestCheckWorking(t *testing.T) {
	runScenario(t, []step{{c: Command{Op: CmdCheckWorking, VID: 1}, code: proto.ResWaitForFormat}})
	var base uint32
	s := runScenario(t, []step{
		format(2),
		{c: Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30}, check: func(t *testing.T, s *State, r *Result) { base = r.VID }},
	})
	tm := int64(100e9)
	apply := func(c Command) *Result {
		t.Helper()
		tm += 1e9
		c.Time = tm
		return s.Apply(&c)
	}
	check := func(when string, vid uint32, want proto.Result) {
		t.Helper()
		before := s.Clone()
		r := apply(Command{Op: CmdCheckWorking, VID: vid})
		if r.Code != want {
			t.Fatalf("%s: vdi %#x: %v (%s), want %v", when, vid, r.Code, r.Message, want)
		}
		if r.Changed != nil || !reflect.DeepEqual(before, s) {
			t.Fatalf("%s: vdi %#x: the check changed something", when, vid)
		}
	}
	check("created", base, proto.ResSuccess)
	check("no such vdi", 0x7fffff, proto.ResReadonly)
	check("no vdi", 0, proto.ResReadonly)
	r := apply(Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true, BaseVID: base})
	if r.Code != proto.ResSuccess {
		t.Fatal(r.Err())
	}
	work := r.VID
	check("snapshotted", base, proto.ResReadonly)
	check("new working vdi", work, proto.ResSuccess)
	if r := apply(Command{Op: CmdDeleteVDI, Name: "v"}); r.Code != proto.ResSuccess {
		t.Fatal(r.Err())
	}
	check("deleted", work, proto.ResReadonly)
}

func TestSnapshotCloneRollbackDelete(t *testing.T) {
	var base, snap1, work2, clone uint32
	runScenario(t, []step{
		format(2),
		{c: Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30}, check: func(t *testing.T, s *State, r *Result) { base = r.VID }},
		// Clone needs a snapshot.
		{c: Command{Op: CmdCreateVDI, Name: "c", BaseVID: 0x7fffff}, code: proto.ResNoBaseVDI},
		{c: Command{Op: CmdCreateVDI, Name: "c", BaseVID: 0}, code: proto.ResInvalidParms},
		{c: Command{Op: CmdCreateVDI, Name: "v", Snapshot: true, BaseVID: 0x123}, code: proto.ResNoBaseVDI},
		{c: Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true}, code: proto.ResNoBaseVDI},
		{c: Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true, BaseVID: 1}, code: proto.ResNoBaseVDI},
		{c: Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true}, code: proto.ResNoBaseVDI},
	})
	s := runScenario(t, []step{
		format(2),
		{c: Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30}, check: func(t *testing.T, s *State, r *Result) { base = r.VID }},
	})
	apply := func(c Command) *Result {
		t.Helper()
		c.Time = 100e9
		return s.Apply(&c)
	}
	r := apply(Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true, BaseVID: base})
	if r.Code != 0 {
		t.Fatal(r.Err())
	}
	snap1, work2 = base, r.VID
	if !s.VDIs[snap1].IsSnapshot() || s.VDIs[snap1].Tag != "t1" || s.VDIs[work2].SnapID != 2 || s.VDIs[work2].ParentVID != snap1 {
		t.Fatalf("snapshot rows wrong: %+v %+v", s.VDIs[snap1], s.VDIs[work2])
	}
	if got := fmt.Sprint(r.Changed); got != fmt.Sprint([]uint32{snap1, work2}) {
		t.Fatalf("changed %s", got)
	}
	if r := apply(Command{Op: CmdCreateVDI, Name: "v", Tag: "t1", Snapshot: true, BaseVID: work2}); r.Code != proto.ResVDIExist {
		t.Fatalf("duplicate tag: %v", r.Code)
	}
	// Lookups by tag, by id, and errors.
	if v, err := s.Lookup("v", "t1", 0); err != nil || v.VID != snap1 {
		t.Fatal(v, err)
	}
	if v, err := s.Lookup("v", "", 1); err != nil || v.VID != snap1 {
		t.Fatal(v, err)
	}
	if _, err := s.Lookup("v", "nope", 0); !errors.Is(err, proto.ResNoTag) {
		t.Fatalf("missing tag: %v", err)
	}
	if _, err := s.Lookup("w", "", 0); !errors.Is(err, proto.ResNoVDI) {
		t.Fatalf("missing vdi: %v", err)
	}
	// Clone of the snapshot; of the working vdi it fails.
	if r := apply(Command{Op: CmdCreateVDI, Name: "c", BaseVID: work2}); r.Code != proto.ResInvalidParms {
		t.Fatalf("clone of working vdi: %v", r.Code)
	}
	r = apply(Command{Op: CmdCreateVDI, Name: "c", BaseVID: snap1})
	if r.Code != 0 {
		t.Fatal(r.Err())
	}
	clone = r.VID
	if c := s.VDIs[clone]; c.ParentVID != snap1 || c.Size != 1<<30 || c.Copies != 2 || s.RootVID(clone) != clone {
		t.Fatalf("clone row %+v", c)
	}
	// Rollback: the working vdi is deleted, a new one branches from the snapshot.
	r = apply(Command{Op: CmdRollback, VID: snap1})
	if r.Code != 0 {
		t.Fatal(r.Err())
	}
	if !s.VDIs[work2].Deleted || s.VDIs[r.VID].ParentVID != snap1 || s.VDIs[r.VID].SnapID != 3 {
		t.Fatalf("rollback rows: old %+v new %+v", s.VDIs[work2], s.VDIs[r.VID])
	}
	if s.RootVID(r.VID) != base {
		t.Fatalf("root vid %#x, want %#x: device identity must survive rollback", s.RootVID(r.VID), base)
	}
	if w, ok := s.Working("v"); !ok || w.VID != r.VID {
		t.Fatal("working vdi after rollback")
	}
	fam := s.Family(clone)
	if len(fam) != 4 {
		t.Fatalf("family of %d rows, want 4 (snapshot, deleted working, new working, clone)", len(fam))
	}
	// Delete the snapshot by tag; lookups no longer find it.
	if r := apply(Command{Op: CmdDeleteVDI, Name: "v", Tag: "t1"}); r.Code != 0 {
		t.Fatal(r.Err())
	}
	if _, err := s.Lookup("v", "t1", 0); !errors.Is(err, proto.ResNoTag) {
		t.Fatalf("deleted snapshot still found: %v", err)
	}
	if !s.Bitmap().Test(snap1) {
		t.Fatal("deleted vids must stay set in the bitmap")
	}
	if r := apply(Command{Op: CmdReclaimed, VID: clone}); r.Code != proto.ResInvalidParms {
		t.Fatal("reclaimed accepted for a live vdi")
	}
}

func TestResizeLocksAttrs(t *testing.T) {
	s := runScenario(t, []step{
		format(1),
		{c: Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30}},
	})
	vid := proto.NameToVID("v")
	for _, c := range []struct {
		cmd  Command
		code proto.Result
	}{
		{Command{Op: CmdResize, VID: vid, Size: 1 << 29}, proto.ResInvalidParms},
		{Command{Op: CmdResize, VID: vid, Size: 2 << 30}, 0},
		{Command{Op: CmdResize, VID: vid, Size: MaxVDISize(22) + 1}, proto.ResInvalidParms},
		{Command{Op: CmdResize, VID: 99, Size: 1}, proto.ResNoVDI},
		{Command{Op: CmdLock, VID: vid, Owner: "qemu1"}, 0},
		{Command{Op: CmdLock, VID: vid, Owner: "qemu1"}, 0},
		{Command{Op: CmdLock, VID: vid, Owner: "qemu2"}, proto.ResVDILocked},
		{Command{Op: CmdDeleteVDI, VID: vid, Owner: "qemu2"}, proto.ResVDILocked},
		{Command{Op: CmdUnlock, VID: vid, Owner: "qemu2"}, proto.ResVDILocked},
		{Command{Op: CmdUnlock, VID: vid, Owner: "qemu1"}, 0},
		{Command{Op: CmdUnlock, VID: vid}, proto.ResVDINotLocked},
		{Command{Op: CmdSetAttr, VID: vid, Key: "k", Value: []byte("v1")}, 0},
		{Command{Op: CmdSetAttr, VID: vid, Key: "k", Value: []byte("v2"), Excl: true}, proto.ResVDIExist},
		{Command{Op: CmdSetAttr, VID: vid, Key: "", Value: []byte("x")}, proto.ResInvalidParms},
		{Command{Op: CmdSetAttr, VID: vid, Key: "big", Value: make([]byte, MaxAttrValue+1)}, proto.ResInvalidParms},
		{Command{Op: CmdSetAttr, VID: vid, Key: "gone", Delete: true}, proto.ResNoObj},
		{Command{Op: CmdSetAttr, VID: vid, Key: "k", Delete: true}, 0},
	} {
		cmd := c.cmd
		if r := s.Apply(&cmd); r.Code != c.code {
			t.Fatalf("%s %+v: %v (%s), want %v", cmd.Op, cmd, r.Code, r.Message, c.code)
		}
	}
	if s.VDIs[vid].Size != 2<<30 || len(s.VDIs[vid].Attrs) != 0 {
		t.Fatalf("row after ops: %+v", s.VDIs[vid])
	}
}

func TestEpochsAndShutdown(t *testing.T) {
	s := runScenario(t, []step{format(1)})
	a, b := Member{ID: "a"}, Member{ID: "b"}
	if r := s.Apply(&Command{Op: CmdEpoch, Members: []Member{a}}); r.Epoch != 1 {
		t.Fatalf("same members must not bump the epoch: %d", r.Epoch)
	}
	if r := s.Apply(&Command{Op: CmdEpoch, Members: []Member{b, a}}); r.Epoch != 2 {
		t.Fatalf("epoch %d", r.Epoch)
	}
	if r := s.Apply(&Command{Op: CmdEpoch}); r.Code != proto.ResInvalidParms {
		t.Fatal("empty epoch accepted")
	}
	s.Apply(&Command{Op: CmdShutdown})
	if s.Status != StatusShutdown {
		t.Fatal("shutdown not recorded")
	}
	s.Apply(&Command{Op: CmdEpoch, Members: []Member{a, b}})
	if s.Status != StatusOK || s.Epoch() != 2 {
		t.Fatalf("resume with the same members: status %s epoch %d", s.Status, s.Epoch())
	}
	if e, ok := s.EpochLog(1); !ok || len(e.Members) != 1 {
		t.Fatal("epoch history lost")
	}
	s.Apply(&Command{Op: CmdRecoveryDone, Epoch: 2, NodeID: "b"})
	s.Apply(&Command{Op: CmdRecoveryDone, Epoch: 2, NodeID: "a"})
	s.Apply(&Command{Op: CmdRecoveryDone, Epoch: 2, NodeID: "a"})
	if got := fmt.Sprint(s.Recovered[2]); got != "[a b]" {
		t.Fatalf("recovered %s", got)
	}
	// Reformat wipes the table but keeps epochs increasing.
	s.Apply(&Command{Op: CmdCreateVDI, Name: "x", Size: 1})
	s.Apply(&Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: []Member{a}, Time: 9e9})
	if len(s.VDIs) != 0 || s.Epoch() != 3 {
		t.Fatalf("after reformat: %d vdis, epoch %d", len(s.VDIs), s.Epoch())
	}
}

func TestCloneIsDeep(t *testing.T) {
	s := runScenario(t, []step{format(1), {c: Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 20}}})
	vid := proto.NameToVID("v")
	s.Apply(&Command{Op: CmdSetAttr, VID: vid, Key: "k", Value: []byte("1")})
	c := s.Clone()
	c.VDIs[vid].Attrs["k"][0] = '2'
	c.VDIs[vid].Name = "changed"
	c.Epochs[0].Members[0].ID = "zz"
	if string(s.VDIs[vid].Attrs["k"]) != "1" || s.VDIs[vid].Name != "v" || s.Epochs[0].Members[0].ID != "a" {
		t.Fatal("Clone shares memory with the original")
	}
}

// Reservations work only once every node applies them: a cluster
// formatted by an older build (version 0) refuses them until the leader
// raises the version, which never goes down; a format starts at the
// version it is given and drops the reservations of the old format.
func TestMetaVersionGatesReservations(t *testing.T) {
	resvOp := &resv.Op{Kind: resv.OpReserve6, Nexus: "n"}
	s := runScenario(t, []step{
		format(3),
		{c: Command{Op: CmdResv, VID: 1, Resv: resvOp}, code: proto.ResNoSupport},
		{c: Command{Op: CmdMetaVersion, MetaVersion: 1}, code: proto.ResSuccess},
		{c: Command{Op: CmdResv, VID: 1, Resv: resvOp}, code: proto.ResNoSupport},
		{c: Command{Op: CmdMetaVersion, MetaVersion: 2}, code: proto.ResSuccess},
		{c: Command{Op: CmdMetaVersion, MetaVersion: 1}, code: proto.ResSuccess,
			check: func(t *testing.T, s *State, r *Result) {
				if s.MetaVersion != 2 {
					t.Fatalf("metadata version went down to %d", s.MetaVersion)
				}
			}},
		{c: Command{Op: CmdResv, VID: 1, Resv: resvOp}, code: proto.ResSuccess,
			check: func(t *testing.T, s *State, r *Result) {
				if s.Resv[1].Reserve6 != "n" || r.Resv == nil || r.Outcome == nil {
					t.Fatalf("reservation not applied: %+v", r)
				}
			}},
		{c: Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: oneMember}, code: proto.ResSuccess},
	})
	if s.Resv != nil || s.MetaVersion != 2 {
		t.Fatalf("after a new format: resv %v, version %d", s.Resv, s.MetaVersion)
	}
	s = runScenario(t, []step{
		{c: Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: oneMember, MetaVersion: MetaVersion}},
		{c: Command{Op: CmdResv, VID: 1, Resv: resvOp}, code: proto.ResSuccess},
	})
	if c := s.Clone(); c.MetaVersion != MetaVersion {
		t.Fatal("Clone drops the metadata version")
	}
}

// Node numbers follow first membership, and stay through departures and
// returns: every node computes the same from the same history.
func TestPortNumber(t *testing.T) {
	s := runScenario(t, []step{format(1)}) // members: a
	m := func(ids ...string) []Member {
		var out []Member
		for _, id := range ids {
			out = append(out, Member{ID: id})
		}
		return out
	}
	for _, ms := range [][]Member{m("c", "a"), m("b"), m("a", "b", "d")} {
		if r := s.Apply(&Command{Op: CmdEpoch, Members: ms}); r.Code != 0 {
			t.Fatalf("epoch %v: %v", ms, r.Code)
		}
	}
	for id, want := range map[string]uint16{"a": 1, "c": 2, "b": 3, "d": 4} {
		if n, ok := s.PortNumber(id); !ok || n != want {
			t.Errorf("%s: %d %v, want %d", id, n, ok, want)
		}
	}
	if n, ok := s.PortNumber("e"); ok {
		t.Errorf("never a member, numbered %d", n)
	}
	if n, ok := s.Clone().PortNumber("d"); !ok || n != 4 {
		t.Errorf("clone: d is %d %v", n, ok)
	}
}
