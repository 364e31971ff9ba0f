package sheep

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// A request of an epoch this node's FSM has but its placement view (and
// so recovery) has not yet waits for the view, instead of passing to a
// guard that still settles keys by the old epoch.
func TestCheckEpochFollowsServedEpoch(t *testing.T) {
	var served atomic.Uint32
	served.Store(4)
	h := &handler{served: served.Load} // no FSM: the served epoch alone decides
	ctx := context.Background()
	if err := h.checkEpoch(ctx, 4); err != nil {
		t.Fatalf("current epoch: %v", err)
	}
	if err := h.checkEpoch(ctx, 3); !errors.Is(err, proto.ResOldNodeVer) {
		t.Fatalf("older epoch: %v, want OLD_NODE_VER", err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		served.Store(5) // the watcher: recovery started, then the view
	}()
	start := time.Now()
	if err := h.checkEpoch(ctx, 5); err != nil {
		t.Fatalf("newer epoch once served: %v", err)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Fatalf("a newer epoch passed after %v, before the view had it", waited)
	}
	if err := h.checkEpoch(ctx, 6); !errors.Is(err, proto.ResNewNodeVer) {
		t.Fatalf("an epoch never served: %v, want NEW_NODE_VER", err)
	}
}
