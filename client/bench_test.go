package client

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

// BenchmarkRoundTrip4K measures 4 KiB reads and writes through one Conn to
// an in-process native server whose handler does no I/O, with 1 and 32
// concurrent callers: the cost of the protocol path itself.
func BenchmarkRoundTrip4K(b *testing.B) {
	block := make([]byte, 4096)
	_, addr := startNative(b, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		if req.Opcode == proto.OpReadObj {
			return proto.Response{}, block
		}
		return proto.Response{}, nil
	})
	for _, op := range []string{"read", "write"} {
		for _, callers := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/callers=%d", op, callers), func(b *testing.B) {
				c := dial(b, addr)
				ctx := context.Background()
				b.SetBytes(4096)
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				for g := 0; g < callers; g++ {
					n := b.N / callers
					if g < b.N%callers {
						n++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, 4096)
						o := ObjReq{OID: proto.DataOID(1, uint32(g))}
						for i := 0; i < n; i++ {
							var err error
							if op == "read" {
								_, err = c.ReadObj(ctx, o, buf)
							} else {
								err = c.WriteObj(ctx, o, buf)
							}
							if err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
	}
}
