package volume

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSyncGateShares: callers that arrive while a catch-up runs share the
// next one; every caller gets a run that started after it called; runs
// start at least the gap apart.
func TestSyncGateShares(t *testing.T) {
	const gap, callers = 5 * time.Millisecond, 20
	g := newSyncGate(gap)
	var mu sync.Mutex
	var starts []time.Time
	release := make(chan struct{})
	first := true
	run := func(ctx context.Context) error {
		mu.Lock()
		starts = append(starts, time.Now())
		wait := first
		first = false
		mu.Unlock()
		if wait {
			<-release
		}
		return nil
	}
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- g.do(ctx, run) }()
	for {
		mu.Lock()
		n := len(starts)
		mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	var entered atomic.Int32
	called := make([]time.Time, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			called[i] = time.Now()
			entered.Add(1)
			if err := g.do(ctx, run); err != nil {
				t.Error(err)
			}
		}()
	}
	for entered.Load() < callers {
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(starts) >= 1+callers {
		t.Fatalf("%d runs for %d callers: none shared", len(starts), 1+callers)
	}
	for i := 1; i < len(starts); i++ {
		if d := starts[i].Sub(starts[i-1]); d < gap {
			t.Errorf("runs %d and %d started %v apart, want at least %v", i-1, i, d, gap)
		}
	}
	// Every caller arrived after the first run started, so a later run
	// must have started after it called.
	last := starts[len(starts)-1]
	for i, c := range called {
		if !last.After(c) {
			t.Errorf("caller %d called at %v, after the last run started (%v)", i, c, last)
		}
	}
	t.Logf("%d callers during a catch-up shared %d run(s)", callers, len(starts)-1)
}

// TestSyncGateFailureNotShared: a run that failed is not handed to a
// caller that was waiting for it; that caller runs its own.
func TestSyncGateFailureNotShared(t *testing.T) {
	g := newSyncGate(0)
	boom := errors.New("boom")
	var runs, entered atomic.Int32
	release := make(chan struct{})
	// Run 1 blocks; of the two callers that arrive meanwhile, whichever
	// goes first fails (run 2), and the other must not share that.
	fn := func(context.Context) error {
		switch runs.Add(1) {
		case 1:
			<-release
		case 2:
			return boom
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- g.do(context.Background(), fn) }()
	for runs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			entered.Add(1)
			errs <- g.do(context.Background(), fn)
		}()
	}
	for entered.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	<-done
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) || runs.Load() != 3 {
		t.Fatalf("results %v and %v after %d runs, want one failure, one success of its own, 3 runs", e1, e2, runs.Load())
	}
	// A caller whose context ends while it waits out the gap gives up.
	g2 := newSyncGate(time.Hour)
	g2.do(context.Background(), func(context.Context) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g2.do(ctx, func(context.Context) error { t.Error("ran inside the gap"); return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting out the gap past the deadline: %v", err)
	}
}
