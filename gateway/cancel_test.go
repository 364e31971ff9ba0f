package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// A mutation whose caller gives up (ABORT TASK, a dropped session) while
// one holder's leg is still on its way must not leave the copies apart:
// the held leg lands anyway, and every copy (or strip set) ends alike.
// Before, the held leg saw the canceled context and never reached its
// node, so two copies had the new data and one the old, in one epoch.
func TestCanceledMutationLeavesCopiesAlike(t *testing.T) {
	for _, tc := range []struct {
		name string
		red  proto.Redundancy
		op   string
	}{
		{"3 copies write", proto.Redundancy{Copies: 3}, "write"},
		{"3 copies zero", proto.Redundancy{Copies: 3}, "zero"},
		{"2:1 write", proto.Redundancy{Data: 2, Parity: 1}, "write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCluster(t, 3)
			o := Object{OID: proto.DataOID(9, 1), Red: tc.red, Size: testObjSize}
			gw := c.nodes[0].gw
			old := make([]byte, testObjSize)
			rand.Read(old)
			if err := gw.Create(context.Background(), o, 0, old, false); err != nil {
				t.Fatal(err)
			}
			held := c.holder(o, 2)
			if tc.red.IsEC() {
				held = c.holder(o, 1) // a data strip
			}
			arrived, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			c.mu.Lock()
			c.hook = func(n *fakeNode, op string, k store.Key) error {
				if n == held && op == tc.op {
					once.Do(func() { close(arrived) })
					<-release
				}
				return nil
			}
			c.mu.Unlock()

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			data := make([]byte, 8192)
			rand.Read(data)
			go func() {
				if tc.op == "zero" {
					done <- gw.Zero(ctx, o, 0, 8192, false)
				} else {
					done <- gw.Write(ctx, o, 0, data, false)
				}
			}()
			<-arrived
			cancel()
			time.Sleep(20 * time.Millisecond) // the canceled caller is gone
			close(release)
			err := <-done
			t.Logf("mutation returned %v after its caller was canceled", err)

			want := data
			if tc.op == "zero" {
				want = make([]byte, 8192)
			}
			if tc.red.IsEC() {
				got := make([]byte, 8192)
				if err := gw.Read(context.Background(), o, 0, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("the strips of the canceled write disagree: the object does not read back as written")
				}
				return
			}
			for i := range 3 {
				n := c.holder(o, i)
				got := make([]byte, 8192)
				if err := n.st.Read(context.Background(), key(o, i), 0, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("copy %d on %s does not hold the canceled %s that the others hold", i, n.n.ID, tc.op)
				}
			}
		})
	}
}
