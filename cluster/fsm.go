package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM applies committed Commands to a State and notifies watchers. Reads take
// the read lock; Apply and Restore take the write lock.
type FSM struct {
	mu       sync.RWMutex
	state    *State
	applied  uint64
	watched  uint64 // last index whose watchers have returned
	watchers []func(old, cur *State, c *Command, r *Result)
	changed  *sync.Cond
}

// NewFSM returns an FSM over an empty state.
func NewFSM() *FSM {
	f := &FSM{state: NewState()}
	f.changed = sync.NewCond(&f.mu)
	return f
}

// Watch registers fn, called after every applied command (and after a
// restore, with c == nil) outside the lock, in apply order. old and cur are
// read-only views.
func (f *FSM) Watch(fn func(old, cur *State, c *Command, r *Result)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchers = append(f.watchers, fn)
}

// Read runs fn with the current state under the read lock. fn must not keep
// references to the state or mutate it.
func (f *FSM) Read(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// Snapshot returns a deep copy of the state.
func (f *FSM) State() *State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Clone()
}

// AppliedIndex is the Raft index of the last command applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		f.mu.Lock()
		f.applied = l.Index
		f.watched = max(f.watched, l.Index) // no watcher runs for it
		f.changed.Broadcast()
		f.mu.Unlock()
		return fail(1, "undecodable command: %v", err)
	}
	return f.ApplyCommand(l.Index, &c)
}

// ApplyCommand applies c at index (exported for tests and replay without Raft).
func (f *FSM) ApplyCommand(index uint64, c *Command) *Result {
	f.mu.Lock()
	if c != nil && changesNothing(c.Op) {
		// No clones, no watchers: they cost O(VDIs) twice per command, and
		// an allocation commits one of these (CmdCheckWorking).
		r := f.state.Apply(c)
		r.Index = index
		f.applied = index
		f.watched = max(f.watched, index)
		f.changed.Broadcast()
		f.mu.Unlock()
		return r
	}
	var old *State
	if len(f.watchers) > 0 {
		old = f.state.Clone()
	}
	r := f.state.Apply(c)
	r.Index = index
	f.applied = index
	cur := f.state
	watchers := f.watchers
	var view *State
	if len(watchers) > 0 {
		view = cur.Clone()
	}
	f.changed.Broadcast()
	f.mu.Unlock()
	for _, w := range watchers {
		w(old, view, c, r)
	}
	f.markWatched(index)
	return r
}

func (f *FSM) markWatched(index uint64) {
	f.mu.Lock()
	f.watched = max(f.watched, index)
	f.changed.Broadcast()
	f.mu.Unlock()
}

// WaitApplied blocks until index has been applied or done is closed.
func (f *FSM) WaitApplied(index uint64, done <-chan struct{}) bool {
	return f.wait(func() bool { return f.applied >= index }, done)
}

// WaitWatched blocks until index has been applied and every watcher has
// returned from it, or done is closed: what the watchers do with a command
// (a node's targets installing reservations) has happened.
func (f *FSM) WaitWatched(index uint64, done <-chan struct{}) bool {
	return f.wait(func() bool { return f.watched >= index }, done)
}

func (f *FSM) wait(ok func() bool, done <-chan struct{}) bool {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-done:
			f.mu.Lock()
			f.changed.Broadcast()
			f.mu.Unlock()
		case <-stop:
		}
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !ok() {
		select {
		case <-done:
			return false
		default:
		}
		f.changed.Wait()
	}
	return true
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := json.Marshal(snapshotDoc{Applied: f.applied, State: f.state})
	if err != nil {
		return nil, fmt.Errorf("cluster: encode snapshot: %w", err)
	}
	return fsmSnapshot(b), nil
}

// snapshotDoc is the persisted FSM snapshot: the state and the Raft index
// it reflects (so WaitApplied works right after a restore).
type snapshotDoc struct {
	Applied uint64 `json:"applied"`
	State   *State `json:"state"`
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	doc := snapshotDoc{State: NewState()}
	if err := json.NewDecoder(rc).Decode(&doc); err != nil {
		return fmt.Errorf("cluster: decode snapshot: %w", err)
	}
	s := doc.State
	if s == nil {
		return fmt.Errorf("cluster: snapshot without state")
	}
	if s.VDIs == nil {
		s.VDIs = map[uint32]*VDI{}
	}
	if s.Locks == nil {
		s.Locks = map[uint32]*Lock{}
	}
	f.mu.Lock()
	old := f.state
	f.state = s
	f.applied = max(f.applied, doc.Applied)
	watchers := f.watchers
	view := s.Clone()
	f.changed.Broadcast()
	f.mu.Unlock()
	for _, w := range watchers {
		w(old, view, nil, &Result{})
	}
	f.markWatched(doc.Applied)
	return nil
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}
