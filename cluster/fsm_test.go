package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/hashicorp/raft"
)

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }
func (m *memSink) Close() error  { return nil }

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	f := NewFSM()
	apply := func(i uint64, c Command) {
		b, _ := json.Marshal(c)
		if r := f.Apply(&raft.Log{Index: i, Data: b}).(*Result); r.Err() != nil {
			t.Fatal(r.Err())
		}
	}
	apply(1, Command{Op: CmdFormat, Format: &Format{Copies: 2, BlockSizeShift: 22}, Members: []Member{{ID: "a"}}, Time: 1e9, MetaVersion: MetaVersion})
	apply(2, Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30, Time: 2e9})
	apply(3, Command{Op: CmdResv, VID: 7, Resv: &resv.Op{Kind: resv.OpReserve6, Nexus: "a@n1"}})
	if r := f.Apply(&raft.Log{Index: 4, Data: []byte("{not json")}).(*Result); r.Err() == nil {
		t.Fatal("garbage command applied")
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	var seen int
	g.Watch(func(old, cur *State, c *Command, r *Result) { seen++ })
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if seen != 1 {
		t.Fatalf("watchers called %d times on restore, want 1", seen)
	}
	a, _ := json.Marshal(f.State())
	b, _ := json.Marshal(g.State())
	if !bytes.Equal(a, b) {
		t.Fatalf("restored state differs:\n%s\n%s", a, b)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte("garbage")))); err == nil {
		t.Fatal("garbage snapshot restored")
	}
	if g.State().Resv[7].Reserve6 != "a@n1" {
		t.Fatal("reservations not in the snapshot")
	}
	if f.AppliedIndex() != 4 {
		t.Fatalf("applied index %d", f.AppliedIndex())
	}
}

// A reservation change is applied by every FSM alike, and WaitWatched
// returns only once the watchers (a node's targets installing it) have.
func TestFSMResvAndWaitWatched(t *testing.T) {
	f := NewFSM()
	release := make(chan struct{})
	var installed *resv.State
	f.Watch(func(old, cur *State, c *Command, r *Result) {
		if c != nil && c.Op == CmdResv {
			<-release
			installed = cur.Resv[c.VID]
		}
	})
	f.ApplyCommand(1, &Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: []Member{{ID: "a"}}, Time: 1e9, MetaVersion: MetaVersion})
	go f.ApplyCommand(2, &Command{Op: CmdResv, VID: 9, Resv: &resv.Op{Kind: resv.OpPROut, Nexus: "x", SAKey: 5}})
	done := make(chan bool)
	go func() { done <- f.WaitWatched(2, nil) }()
	if !f.WaitApplied(2, nil) {
		t.Fatal("WaitApplied")
	}
	select {
	case <-done:
		t.Fatal("WaitWatched returned before the watcher did")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if !<-done {
		t.Fatal("WaitWatched failed")
	}
	if installed == nil || installed.Reg("x") == nil || installed.Seq != 1 {
		t.Fatalf("watcher saw %+v", installed)
	}
	stop := make(chan struct{})
	close(stop)
	if f.WaitWatched(3, stop) {
		t.Fatal("WaitWatched of a future index returned true after done closed")
	}
	r := f.ApplyCommand(3, &Command{Op: CmdResv, VID: 9})
	if r.Err() == nil {
		t.Fatal("reservation command without an operation applied")
	}
}

// Commands that change nothing skip the watchers (and the two state
// clones that feed them), yet count as watched: Everywhere waits for
// them like for any other index.
func TestFSMNoOpsSkipWatchers(t *testing.T) {
	f := NewFSM()
	var calls []string
	f.Watch(func(old, cur *State, c *Command, r *Result) { calls = append(calls, c.Op) })
	f.ApplyCommand(1, &Command{Op: CmdFormat, Format: &Format{Copies: 1, BlockSizeShift: 22}, Members: []Member{{ID: "a"}}, Time: 1e9})
	r := f.ApplyCommand(2, &Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30, Time: 2e9})
	vid := r.VID
	before := f.State()
	// Fields these ops do not use must not make them change anything.
	noise := Command{Members: []Member{{ID: "z"}}, Format: &Format{Copies: 2}, Name: "v", Size: 5, Delete: true, Enable: true, Epoch: 9, MetaVersion: 9}
	idx := uint64(2)
	for i, c := range []Command{
		{Op: CmdSync},
		{Op: CmdCheckWorking, VID: vid},
		{Op: CmdCheckWorking, VID: vid + 1},
	} {
		noisy := noise
		noisy.Op, noisy.VID, noisy.Time = c.Op, c.VID, int64(3+i)*1e9
		for _, cmd := range []Command{c, noisy} {
			idx++
			r := f.ApplyCommand(idx, &cmd)
			if want := changesNothing(cmd.Op); !want {
				t.Fatalf("%s is not listed as changing nothing", cmd.Op)
			}
			if r.Index != idx || !f.WaitWatched(idx, nil) || f.AppliedIndex() != idx {
				t.Fatalf("%s at %d: result index %d, applied %d", cmd.Op, idx, r.Index, f.AppliedIndex())
			}
		}
	}
	if !reflect.DeepEqual(before, f.State()) {
		t.Fatal("a command that changes nothing changed the state")
	}
	if want := []string{CmdFormat, CmdCreateVDI}; !reflect.DeepEqual(calls, want) {
		t.Fatalf("watchers ran for %q, want only %q", calls, want)
	}
}
