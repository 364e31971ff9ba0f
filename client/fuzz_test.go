package client

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// FuzzConnResponses plays a peer that answers three pipelined requests
// (ids 1, 2, 3: a 16-byte read, a write, a 0-byte read) with arbitrary
// bytes. The Conn must not panic or hang, every call must complete, and a
// call may only succeed with a payload it allowed.
func FuzzConnResponses(f *testing.F) {
	rsp := func(id, n uint32, res proto.Result, payload []byte) []byte {
		r := proto.Response{ID: id, DataLength: n, Result: res}
		return append(r.Marshal(), payload...)
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	f.Add(cat(rsp(2, 0, 0, nil), rsp(1, 16, 0, make([]byte, 16)), rsp(3, 0, proto.ResNoObj, nil)))
	f.Add(cat(rsp(1, 17, 0, make([]byte, 17))))      // oversized
	f.Add(cat(rsp(9, 0, 0, nil)))                    // unknown id
	f.Add(cat(rsp(1, 16, 0, make([]byte, 3))))       // cut short
	f.Add(cat(rsp(3, 0, 0, nil), rsp(3, 0, 0, nil))) // duplicate
	f.Add(cat(rsp(2, 0xffffffff, 0, nil)))           // absurd length
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		cli, srv := net.Pipe()
		defer srv.Close()
		c := NewConn(cli)
		defer c.Close()
		got := make(chan struct{}, 3)
		go func() {
			// Swallow the three requests, then answer with the input.
			for i := 0; i < 3; i++ {
				req, err := proto.ReadRequest(srv)
				if err != nil {
					return
				}
				if req.Flags&proto.FlagWrite != 0 {
					io.CopyN(io.Discard, srv, int64(req.DataLength))
				}
				got <- struct{}{}
			}
			srv.Write(in)
			srv.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		type result struct {
			data  []byte
			limit int
			err   error
		}
		res := make(chan result, 3)
		reqs := []struct {
			r    proto.Request
			w    []byte
			rbuf []byte
		}{
			{proto.Request{Opcode: proto.OpReadObj, DataLength: 16}, nil, make([]byte, 16)},
			{proto.Request{Opcode: proto.OpWriteObj}, []byte("four"), nil},
			{proto.Request{Opcode: proto.OpReadObj}, nil, nil},
		}
		for _, q := range reqs {
			go func() {
				_, data, err := c.Do(ctx, q.r, q.w, q.rbuf)
				res <- result{data, max(int(q.r.DataLength), len(q.w)), err}
			}()
			<-got // the peer has it: the next call gets the next id
		}
		for range reqs {
			select {
			case r := <-res:
				if r.err == nil && len(r.data) > r.limit {
					t.Fatalf("accepted %d bytes for a limit of %d", len(r.data), r.limit)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("a call never completed")
			}
		}
	})
}
