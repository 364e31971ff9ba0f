package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

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
	apply(1, Command{Op: CmdFormat, Format: &Format{Copies: 2, BlockSizeShift: 22}, Members: []Member{{ID: "a"}}, Time: 1e9})
	apply(2, Command{Op: CmdCreateVDI, Name: "v", Size: 1 << 30, Time: 2e9})
	if r := f.Apply(&raft.Log{Index: 3, Data: []byte("{not json")}).(*Result); r.Err() == nil {
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
	if f.AppliedIndex() != 3 {
		t.Fatalf("applied index %d", f.AppliedIndex())
	}
}
