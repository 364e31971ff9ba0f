package native

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

const fuzzMaxPayload = 64 << 10

// fuzzHandler exercises every way a handler can answer: payloads from
// Alloc, echoes of the request payload, panics, oversized payloads, JSON.
func fuzzHandler(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	switch req.Opcode {
	case proto.OpReadObj:
		b := Alloc(ctx, int(req.DataLength))
		for i := range b {
			b[i] = byte(i)
		}
		return proto.Response{}, b
	case proto.OpWriteObj:
		return proto.Response{}, data
	case 0x66:
		panic("fuzz panic")
	case 0x67:
		return proto.Response{}, make([]byte, int(min(req.DataLength, fuzzMaxPayload))+10)
	case proto.OpMeta:
		var v map[string]any
		if err := DecodeJSON(data, &v); err != nil {
			return req.Reply(proto.ResultOf(err)), nil
		}
		return ReplyJSON(ctx, req, v)
	}
	return req.Reply(proto.ResInvalidParms), nil
}

func seedStream(reqs ...any) []byte {
	var b []byte
	for _, r := range reqs {
		switch r := r.(type) {
		case proto.Request:
			b = append(b, r.Marshal()...)
		case []byte:
			b = append(b, r...)
		}
	}
	return b
}

// FuzzServeConn feeds arbitrary byte streams to a connection: the server
// must not panic (outside handlers), hang, or allocate beyond its limits,
// and everything it sends back must be well framed.
func FuzzServeConn(f *testing.F) {
	f.Add(seedStream(proto.Request{ProtoVer: 2, Opcode: proto.OpReadObj, ID: 1, DataLength: 512}))
	f.Add(seedStream(proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite, ID: 2, DataLength: 4}, []byte("data"),
		proto.Request{Opcode: proto.OpReadObj, ID: 3, DataLength: 3}))
	f.Add(seedStream(proto.Request{ProtoVer: 9, Opcode: proto.OpWriteObj, Flags: proto.FlagWrite, DataLength: 2}, []byte("xx")))
	f.Add(seedStream(proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite, DataLength: 0xffffffff}))
	f.Add(seedStream(proto.Request{Opcode: proto.OpReadObj, DataLength: 0xffffffff}, proto.Request{Opcode: 0x66}, proto.Request{Opcode: 0x67, DataLength: 8}))
	meta := proto.Request{ProtoVer: proto.SheepProtoVer, Opcode: proto.OpMeta, Flags: proto.FlagWrite, DataLength: 9}
	meta.SetMeta(proto.MetaArgs{ReplyLength: 4})
	f.Add(seedStream(meta, []byte(`{"a":"b"}`)))
	f.Add(seedStream(proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite, DataLength: 100}, []byte("short")))
	f.Add([]byte{1, 2, 3})

	// One server for all inputs, as in production: its buffer pools are warm.
	s := NewServer(Config{Handler: HandlerFunc(fuzzHandler), MaxPayload: fuzzMaxPayload, MaxInflight: 4, WriteTimeout: 5 * time.Second})
	f.Cleanup(func() { s.Close() })

	f.Fuzz(func(t *testing.T, in []byte) {
		panics := s.Stats().Panics
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		alloc0 := ms.TotalAlloc

		cli, srv := net.Pipe()
		served := make(chan struct{})
		go func() { s.ServeConn(context.Background(), srv); close(served) }()
		cli.SetDeadline(time.Now().Add(10 * time.Second))

		framing := make(chan error, 1)
		go func() { framing <- checkResponses(cli) }()
		cli.Write(in) // fails early if the server hung up: fine
		// net.Pipe has no half-close: hang up. Responses still in flight are
		// dropped, which is what a client that goes away causes anyway.
		cli.Close()
		if err := <-framing; err != nil {
			t.Fatal(err)
		}
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the client hung up")
		}

		runtime.ReadMemStats(&ms)
		if d := ms.TotalAlloc - alloc0; d > 16<<20+uint64(len(in))<<10 {
			t.Fatalf("allocated %d bytes for %d bytes of input", d, len(in))
		}
		// Handler panics (opcode 0x66) are expected; connection-loop panics are not.
		if got := s.Stats().Panics - panics; got > uint64(bytes.Count(in, []byte{0x66})) {
			t.Fatalf("%d panics", got)
		}
	})
}

// checkResponses reads responses until the pipe closes; each must be a
// whole header with a payload no larger than the server's MaxPayload.
func checkResponses(nc net.Conn) error {
	buf := make([]byte, fuzzMaxPayload)
	for {
		rsp, err := proto.ReadResponse(nc)
		if err != nil {
			return nil // closed: partial data at close is not a framing error
		}
		if rsp.DataLength > fuzzMaxPayload {
			return errors.New("response payload above MaxPayload")
		}
		if rsp.Result != proto.ResSuccess && rsp.DataLength != 0 {
			return errors.New("error response with a payload")
		}
		if _, err := io.ReadFull(nc, buf[:rsp.DataLength]); err != nil {
			return nil
		}
	}
}
