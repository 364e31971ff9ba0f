package sheep

import (
	"context"
	"fmt"
	"testing"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// sumsAgree decides, from the copies' fingerprints, whether the copies
// agree, are to be compared by their data, or are left alone (a copy
// missing or unreachable).
func TestSumsAgree(t *testing.T) {
	a, b := [20]byte{1}, [20]byte{2}
	for _, tc := range []struct {
		name            string
		fps             []any // a [20]byte or an error, per copy
		agree, fallback bool
	}{
		{"all equal", []any{a, a, a}, true, false},
		{"one differs", []any{a, b, a}, false, true},
		{"the primary differs", []any{b, a, a}, false, true},
		{"a node without GET_SUMS_HASH", []any{a, a, fmt.Errorf("peer: %w", proto.ResInvalidParms)}, false, true},
		{"a copy missing", []any{a, proto.ResNoObj, a}, false, false},
		{"differs and one missing", []any{a, b, proto.ResNoObj}, false, false},
		{"unreachable", []any{a, a, fmt.Errorf("dial: %w", proto.ResNetworkError)}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := make([]placement.Node, len(tc.fps))
			for i := range ts {
				ts[i].ID = fmt.Sprint(i)
			}
			fp := func(_ context.Context, n placement.Node, _ store.Key) ([20]byte, error) {
				var i int
				fmt.Sscan(n.ID, &i)
				if err, ok := tc.fps[i].(error); ok {
					return [20]byte{}, err
				}
				return tc.fps[i].([20]byte), nil
			}
			agree, fallback := sumsAgree(context.Background(), ts, store.ReplicaKey(1), fp)
			if agree != tc.agree || fallback != tc.fallback {
				t.Fatalf("agree %v, fallback %v; want %v, %v", agree, fallback, tc.agree, tc.fallback)
			}
		})
	}
}

// nodeLeft tells a departure (which brings a converge pass forward) from
// a join or the first epoch.
func TestNodeLeft(t *testing.T) {
	state := func(ids ...string) *cluster.State {
		var ms []cluster.Member
		for _, id := range ids {
			ms = append(ms, cluster.Member{ID: id})
		}
		return &cluster.State{Epochs: []cluster.EpochLog{{Epoch: 1, Members: ms}}}
	}
	for _, tc := range []struct {
		name     string
		old, cur *cluster.State
		left     bool
	}{
		{"first epoch", nil, state("a"), false},
		{"no epoch before", &cluster.State{}, state("a"), false},
		{"a join", state("a", "b"), state("a", "b", "c"), false},
		{"a departure", state("a", "b", "c"), state("a", "c"), true},
		{"one leaves as another joins", state("a", "b"), state("a", "c"), true},
		{"the same members", state("a", "b"), state("b", "a"), false},
	} {
		if got := nodeLeft(tc.old, tc.cur); got != tc.left {
			t.Errorf("%s: nodeLeft %v, want %v", tc.name, got, tc.left)
		}
	}
}
