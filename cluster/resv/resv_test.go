package resv

import (
	"encoding/json"
	"reflect"
	"testing"
)

func register(n string, key uint64) Op {
	return Op{Kind: OpPROut, Nexus: n, Port: "iqn." + n + ",i,0x1", SA: 0, SAKey: key}
}

func reserve(n string, key uint64, typ byte) Op {
	return Op{Kind: OpPROut, Nexus: n, SA: 1, Key: key, Type: typ}
}

// step is one operation with the outcome and unit attentions it must give.
type step struct {
	op     Op
	status Status
	uas    []UA
}

func run(t *testing.T, s *State, steps []step) {
	t.Helper()
	for i, st := range steps {
		seq := s.Seq
		o := Apply(s, st.op)
		if o.Status != st.status {
			t.Fatalf("step %d %+v: status %d, want %d", i, st.op, o.Status, st.status)
		}
		if !reflect.DeepEqual(s.UAs, st.uas) {
			t.Fatalf("step %d %+v: UAs %+v, want %+v", i, st.op, s.UAs, st.uas)
		}
		if s.Seq != seq+1 {
			t.Fatalf("step %d: seq %d after %d", i, s.Seq, seq)
		}
	}
}

func TestPersistentReservationScenario(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: register("a@n1", 0xa), status: OK},
		{op: register("b@n2", 0xb), status: OK},
		{op: register("b@n2", 0xb), status: Conflict}, // REGISTER with a wrong current key (0)
		{op: reserve("b@n2", 0xa, WriteExclusive), status: Conflict},
		{op: reserve("a@n1", 0xa, WriteExclusive), status: OK},
		{op: reserve("a@n1", 0xa, WriteExclusive), status: OK}, // same again: fine
		{op: reserve("b@n2", 0xb, WriteExclusive), status: Conflict},
		{op: reserve("a@n1", 0xa, 0x2), status: InvalidCDB},
	})
	if !s.Conflicts("b@n2", true) || s.Conflicts("b@n2", false) || s.Conflicts("a@n1", true) {
		t.Fatalf("write exclusive held by a: conflicts wrong: %+v", s)
	}
	if !s.Conflicts("c@n3", true) {
		t.Fatal("an unregistered nexus may write under write exclusive")
	}
	// b preempts a: a loses its registration and the reservation.
	run(t, s, []step{
		{op: Op{Kind: OpPROut, Nexus: "b@n2", SA: 4, Key: 0xb, SAKey: 0xa, Type: ExclusiveAccess}, status: OK,
			uas: []UA{{Nexus: "a@n1", Kind: UARegistrationsPreempted}}},
	})
	if s.Reg("a@n1") != nil || !s.IsHolder("b@n2") || s.Type != ExclusiveAccess {
		t.Fatalf("after preempt: %+v", s)
	}
	if !s.Conflicts("a@n1", false) {
		t.Fatal("exclusive access lets an unregistered nexus read")
	}
	// Release with the wrong type is an error; the right one ends it.
	run(t, s, []step{
		{op: Op{Kind: OpPROut, Nexus: "b@n2", SA: 2, Key: 0xb, Type: WriteExclusive}, status: InvalidRelease},
		{op: Op{Kind: OpPROut, Nexus: "b@n2", SA: 2, Key: 0xb, Type: ExclusiveAccess}, status: OK},
	})
	if s.Active {
		t.Fatal("still reserved after release")
	}
}

func TestReleaseAndClearRaiseUnitAttentions(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: register("a", 1), status: OK},
		{op: register("b", 2), status: OK},
		{op: register("c", 3), status: OK},
		{op: reserve("a", 1, WriteExclusiveRegOnly), status: OK},
		{op: Op{Kind: OpPROut, Nexus: "a", SA: 2, Key: 1, Type: WriteExclusiveRegOnly}, status: OK,
			uas: []UA{{Nexus: "b", Kind: UAReservationsReleased}, {Nexus: "c", Kind: UAReservationsReleased}}},
		{op: reserve("b", 2, WriteExclusive), status: OK},
		{op: Op{Kind: OpPROut, Nexus: "c", SA: 3, Key: 3}, status: OK,
			uas: []UA{{Nexus: "a", Kind: UAReservationsPreempted}, {Nexus: "b", Kind: UAReservationsPreempted}}},
	})
	if len(s.Regs) != 0 || s.Active {
		t.Fatalf("after clear: %+v", s)
	}
}

func TestAllRegistrantsEndsWithLastRegistration(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: register("a", 1), status: OK},
		{op: register("b", 2), status: OK},
		{op: reserve("a", 1, ExclusiveAccessAllReg), status: OK},
	})
	if !s.IsHolder("b") || s.Conflicts("b", true) || !s.Conflicts("x", false) {
		t.Fatalf("all registrants: %+v", s)
	}
	run(t, s, []step{
		{op: Op{Kind: OpPROut, Nexus: "a", SA: 0, Key: 1, SAKey: 0}, status: OK},
		{op: Op{Kind: OpPROut, Nexus: "b", SA: 6, SAKey: 0}, status: OK},
	})
	if s.Active || len(s.Regs) != 0 {
		t.Fatalf("reservation outlived every registration: %+v", s)
	}
}

func TestReserve6(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: Op{Kind: OpReserve6, Nexus: "a"}, status: OK},
		{op: Op{Kind: OpReserve6, Nexus: "a"}, status: OK},
		{op: Op{Kind: OpReserve6, Nexus: "b"}, status: Conflict},
		{op: Op{Kind: OpRelease6, Nexus: "b"}, status: OK}, // not the holder: no effect
		{op: Op{Kind: OpNexusLost, Nexus: "b"}, status: OK},
	})
	if s.Reserve6 != "a" {
		t.Fatalf("holder %q", s.Reserve6)
	}
	run(t, s, []step{
		{op: Op{Kind: OpNexusLost, Nexus: "a"}, status: OK},
		{op: Op{Kind: OpReserve6, Nexus: "b"}, status: OK},
		{op: Op{Kind: OpReset}, status: OK, uas: []UA{{All: true, Kind: UAReset}}},
	})
	if s.Reserve6 != "" {
		t.Fatal("reset kept the SPC-2 reservation")
	}
	// Persistent registrations make RESERVE(6) conflict.
	run(t, s, []step{
		{op: register("a", 1), status: OK},
		{op: Op{Kind: OpReserve6, Nexus: "a"}, status: Conflict},
	})
}

func TestRegistrationLimit(t *testing.T) {
	s := &State{}
	for i := range MaxRegistrations {
		if o := Apply(s, register(string(rune('A'+i%26))+string(rune('a'+i/26)), 1)); o.Status != OK {
			t.Fatalf("registration %d: %d", i, o.Status)
		}
	}
	if o := Apply(s, register("over", 1)); o.Status != NoResources {
		t.Fatalf("registration past the limit: %d", o.Status)
	}
	for i := 1; i < len(s.Regs); i++ {
		if s.Regs[i-1].Nexus >= s.Regs[i].Nexus {
			t.Fatal("registrations not sorted by nexus")
		}
	}
}

// Every node's FSM applies the same operations, one of them to a state
// decoded from a snapshot taken half way: outcomes and states must match.
func TestApplyIsDeterministicAcrossSnapshots(t *testing.T) {
	ops := []Op{
		register("z", 9), register("m", 5), register("a", 1), reserve("m", 5, WriteExclusiveAllReg),
		{Kind: OpPROut, Nexus: "a", SA: 4, Key: 1, SAKey: 0, Type: ExclusiveAccess},
		{Kind: OpReserve6, Nexus: "q"}, {Kind: OpReset}, register("b", 2),
	}
	const half = 4
	a := &State{}
	for _, op := range ops[:half] {
		Apply(a, op)
	}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	var c State
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	for i, op := range ops[half:] {
		if oa, oc := Apply(a, op), Apply(&c, op); oa != oc {
			t.Fatalf("op %d: outcomes %+v and %+v", half+i, oa, oc)
		}
	}
	if !reflect.DeepEqual(a, &c) {
		t.Fatalf("diverged:\n%+v\n%+v", a, &c)
	}
	// The preempt with key 0 of an all-registrants reservation removed
	// every other registration and made a the holder.
	if !a.IsHolder("a") || a.Type != ExclusiveAccess || a.Reg("z") != nil || a.Reg("b") == nil {
		t.Fatalf("final state: %+v", a)
	}
}

func TestCloneIsDeep(t *testing.T) {
	s := &State{}
	Apply(s, register("a", 1))
	c := s.Clone()
	c.Regs[0].Key = 7
	if s.Regs[0].Key != 1 {
		t.Fatal("clone shares registrations")
	}
	if (*State)(nil).Clone() != nil {
		t.Fatal("nil clone")
	}
}

func TestAdminClear(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: register("a", 1), status: OK},
		{op: register("b", 2), status: OK},
		{op: reserve("a", 1, ExclusiveAccess), status: OK},
		{op: Op{Kind: OpAdminClear}, status: OK,
			uas: []UA{{Nexus: "a", Kind: UAReservationsPreempted}, {Nexus: "b", Kind: UAReservationsPreempted}}},
	})
	if s.Active || len(s.Regs) != 0 || s.Conflicts("x", true) {
		t.Fatalf("after an admin clear: %+v", s)
	}
	run(t, s, []step{
		{op: Op{Kind: OpReserve6, Nexus: "c"}, status: OK},
		{op: Op{Kind: OpAdminClear}, status: OK},
	})
	if s.Reserve6 != "" {
		t.Fatal("an admin clear kept the SPC-2 reservation")
	}
}

func TestPreemptAndAbortMarksAborts(t *testing.T) {
	s := &State{}
	run(t, s, []step{
		{op: register("a", 1), status: OK},
		{op: register("b", 2), status: OK},
		{op: register("c", 2), status: OK},
		{op: Op{Kind: OpPROut, Nexus: "a", SA: 4, Key: 1, SAKey: 2}, status: OK, // PREEMPT: no abort
			uas: []UA{{Nexus: "b", Kind: UARegistrationsPreempted}, {Nexus: "c", Kind: UARegistrationsPreempted}}},
		{op: register("b", 3), status: OK},
		{op: Op{Kind: OpPROut, Nexus: "a", SA: 5, Key: 1, SAKey: 3}, status: OK,
			uas: []UA{{Nexus: "b", Kind: UARegistrationsPreempted, Abort: true}}},
	})
}
