package serve

import (
	"sync/atomic"
	"testing"
	"time"
)

// call makes a Handoff run arbitrary functions.
func call(f func()) { f() }

func TestHandoffFastRunKeepsRole(t *testing.T) {
	var passes atomic.Int32
	w := NewWatch(50 * time.Millisecond)
	defer w.Close()
	h := NewHandoff(w, call, func() { passes.Add(1) })
	for i := 0; i < 1000; i++ {
		ran := false
		if !h.Run(func() { ran = true }) {
			t.Fatalf("run %d: role passed on for a request far shorter than the delay", i)
		}
		if !ran {
			t.Fatal("fn not run")
		}
	}
	time.Sleep(150 * time.Millisecond) // a stray pass would come by now
	if n := passes.Load(); n != 0 {
		t.Fatalf("pass called %d times", n)
	}
}

func TestHandoffSlowRunPassesRole(t *testing.T) {
	passed := make(chan struct{})
	w := NewWatch(time.Millisecond)
	defer w.Close()
	h := NewHandoff(w, call, func() { close(passed) })
	// fn waits for what only a new reader could bring: without the pass
	// this would never end.
	kept := h.Run(func() {
		select {
		case <-passed:
		case <-time.After(5 * time.Second):
			t.Error("a slow run was never passed on")
		}
	})
	if kept && !t.Failed() {
		t.Fatal("Run kept the role after passing it on")
	}
}

func TestHandoffNewReaderWhileOldStillRuns(t *testing.T) {
	passed := make(chan struct{}, 1)
	w := NewWatch(time.Millisecond)
	defer w.Close()
	h := NewHandoff(w, call, func() { passed <- struct{}{} })
	release := make(chan struct{})
	old := make(chan bool)
	go func() { old <- h.Run(func() { <-release }) }()
	<-passed
	// The new reader runs fast requests while the old one is still busy.
	for i := 0; i < 100; i++ {
		if !h.Run(func() {}) {
			t.Fatalf("new reader lost the role on run %d", i)
		}
	}
	close(release)
	if <-old {
		t.Fatal("old reader kept the role after it was passed on")
	}
	select {
	case <-passed:
		t.Fatal("passed on twice")
	case <-time.After(20 * time.Millisecond):
	}
}

// Exactly one reader at a time, however runs and timers interleave: a
// reader whose Run reports it kept the role must still be the one the
// last pass did not replace.
func TestHandoffOneReader(t *testing.T) {
	var holder, ids, runs atomic.Int64
	done := make(chan struct{})
	var h *Handoff[func()]
	reader := func(id int64) {
		for i := 0; ; i++ {
			if runs.Add(1) == 5000 {
				close(done)
			}
			if runs.Load() >= 5000 {
				return
			}
			d := time.Duration(0)
			if i%5 == 0 {
				d = 30 * time.Microsecond // outlasts the delay
			}
			if !h.Run(func() { time.Sleep(d) }) {
				return
			}
			if got := holder.Load(); got != id {
				t.Errorf("reader %d kept the role after it passed to reader %d", id, got)
				return
			}
		}
	}
	w := NewWatch(20 * time.Microsecond)
	defer w.Close()
	h = NewHandoff(w, call, func() {
		id := ids.Add(1)
		holder.Store(id)
		go reader(id)
	})
	go reader(0)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("no progress")
	}
	if ids.Load() == 0 {
		t.Fatal("no run was ever passed on; the test did not test the race")
	}
}

// A Watch that went to sleep for lack of runs still rescues the next slow
// one, however the run and the falling asleep interleave.
func TestHandoffWatchWakes(t *testing.T) {
	w := NewWatch(time.Millisecond)
	defer w.Close()
	passed := make(chan struct{}, 1)
	h := NewHandoff(w, call, func() { passed <- struct{}{} })
	defer h.Close()
	for i := 0; i < 12; i++ {
		// About idleTicks ticks: asleep, or about to be, or long asleep.
		time.Sleep(time.Duration(idleTicks-10+4*i) * time.Millisecond)
		kept := h.Run(func() {
			select {
			case <-passed:
			case <-time.After(5 * time.Second):
				t.Errorf("round %d: a slow run was never passed on", i)
			}
		})
		if kept && !t.Failed() {
			t.Fatalf("round %d: kept the role after passing it on", i)
		}
		if t.Failed() {
			return
		}
	}
}

func TestHandoffInlineWantsQuiet(t *testing.T) {
	w := NewWatch(time.Hour)
	defer w.Close()
	h := NewHandoff(w, call, func() {})
	defer h.Close()
	if !h.Inline(true) {
		t.Fatal("a first request alone should run on the reader")
	}
	if h.Inline(false) {
		t.Fatal("a request not alone ran on the reader")
	}
	for i := 0; i < quietRequests; i++ {
		if h.Inline(true) {
			t.Fatalf("request %d alone after an overlap ran on the reader", i)
		}
	}
	if !h.Inline(true) {
		t.Fatalf("still not on the reader after %d requests alone", quietRequests)
	}
}
