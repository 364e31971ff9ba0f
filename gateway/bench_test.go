package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// nopPeer answers every operation at once: the benchmarks measure the
// gateway's own cost per request (routing, contexts, fan-out).
type nopPeer struct{}

func (nopPeer) Create(context.Context, uint32, store.Key, uint32, uint32, []byte, bool, bool) error {
	return nil
}
func (nopPeer) Write(context.Context, uint32, store.Key, uint32, []byte, []uint32, bool) error {
	return nil
}
func (nopPeer) Read(context.Context, uint32, store.Key, uint32, []byte) error       { return nil }
func (nopPeer) Remove(context.Context, uint32, store.Key) error                     { return nil }
func (nopPeer) Zero(context.Context, uint32, store.Key, uint32, uint32, bool) error { return nil }
func (nopPeer) ECWrite(context.Context, uint32, Object, ECOp, uint32, uint32, []byte, bool) error {
	return nil
}
func (nopPeer) Heal(context.Context, uint32, store.Key, uint32, []byte, bool) error { return nil }
func (nopPeer) Sync(context.Context) error                                          { return nil }

type nopPeers struct{}

func (nopPeers) Peer(placement.Node) Peer { return nopPeer{} }

type fixedViews struct{ v *View }

func (f fixedViews) View() *View { return f.v }
func (f fixedViews) WaitNewer(ctx context.Context, _ uint32) error {
	<-ctx.Done()
	return ctx.Err()
}

// newTestGateway routes over nodes nodes (n0 is self) to no-op peers.
func newTestGateway(nodes int) *Gateway {
	var ns []placement.Node
	for i := range nodes {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), 7000)
		ns = append(ns, placement.Node{ID: fmt.Sprint("n", i), Addr: a, Zone: uint32(i), Weight: 1 << 40})
	}
	v := &View{Epoch: 1, Ring: placement.New(ns, placement.Options{})}
	return New(Config{Self: "n0", Views: fixedViews{v}, Peers: nopPeers{}})
}

// BenchmarkGateway4K is one 4 KiB request through the gateway, the way a
// front end sends it: a context without a deadline, as an iSCSI task has.
func BenchmarkGateway4K(b *testing.B) {
	for _, copies := range []uint8{1, 3} {
		g := newTestGateway(3)
		buf := make([]byte, 4096)
		ctx, cancel := context.WithCancel(context.Background())
		for _, op := range []string{"write", "read"} {
			b.Run(fmt.Sprintf("%s/copies=%d", op, copies), func(b *testing.B) {
				b.ReportAllocs()
				i := uint32(0)
				for b.Loop() {
					// A context per request, as each iSCSI task has its own.
					rctx, rcancel := context.WithCancel(ctx)
					o := Object{OID: proto.DataOID(7, i%1024), Red: proto.Redundancy{Copies: copies}, Size: 4 << 20}
					var err error
					if op == "write" {
						err = g.Write(rctx, o, 8192, buf, false)
					} else {
						err = g.Read(rctx, o, 8192, buf)
					}
					rcancel()
					if err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
		cancel()
	}
}
