package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/target/native"
)

// pattern is the content the fake store returns for (oid, offset, i).
func pattern(oid proto.OID, off uint32, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(uint64(oid)*31 + uint64(off) + uint64(i))
	}
	return b
}

func sum(b []byte) uint64 {
	var s uint64
	for i, c := range b {
		s += uint64(c) * uint64(i+1)
	}
	return s
}

// objHandler is a stateless fake: reads return pattern(), writes answer
// the weighted sum of their payload in the obj response offset. It checks
// the protocol version the client chose.
func objHandler(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	want := proto.ProtoVer
	if req.Opcode.Internal() {
		want = proto.SheepProtoVer
	}
	if req.ProtoVer != want {
		return req.Reply(proto.ResVerMismatch), nil
	}
	o := req.Obj()
	switch req.Opcode {
	case proto.OpReadObj, proto.OpReadPeer:
		return proto.Response{}, pattern(proto.OID(o.OID), o.Offset, int(req.DataLength))
	case proto.OpWriteObj, proto.OpWritePeer, proto.OpCreateAndWriteObj:
		var rsp proto.Response
		rsp.SetObj(proto.ObjRsp{Offset: sum(data)})
		return rsp, nil
	}
	return req.Reply(proto.ResInvalidParms), nil
}

func TestDoReadWrite(t *testing.T) {
	_, addr := startNative(t, objHandler)
	c := dial(t, addr)
	ctx := testCtx(t)

	oid := proto.DataOID(0x7c2b25, 3)
	rbuf := make([]byte, 8192)
	data, err := c.ReadObj(ctx, ObjReq{OID: oid, Offset: 512}, rbuf[:4096])
	if err != nil || !bytes.Equal(data, pattern(oid, 512, 4096)) {
		t.Fatalf("read: %v", err)
	}
	if &data[0] != &rbuf[0] {
		t.Fatal("payload not read into the caller's buffer")
	}
	// A buffer too small for the response is not used: here the request
	// asks 100 bytes via DataLength with no buffer at all.
	rsp, data, err := c.Do(ctx, proto.Request{Opcode: proto.OpReadObj, DataLength: 100}, nil, nil)
	if err != nil || len(data) != 100 || rsp.DataLength != 100 || rsp.Opcode != proto.OpReadObj {
		t.Fatalf("read into new buffer: %+v %d %v", rsp, len(data), err)
	}
	w := pattern(7, 7, 100000) // large: goes out uncopied
	rsp, _, err = c.Do(ctx, proto.Request{Opcode: proto.OpWriteObj}, w, nil)
	if err != nil || rsp.Obj().Offset != sum(w) {
		t.Fatalf("write: %+v %v", rsp, err)
	}
	// A payload in two parts arrives as one, small (copied) or large.
	for _, n := range []int{100, 100000} {
		head, tail := pattern(8, 8, n), pattern(9, 9, 1000)
		rsp, _, err = c.DoTail(ctx, proto.Request{Opcode: proto.OpWriteObj}, head, tail, nil)
		if want := sum(append(append([]byte(nil), head...), tail...)); err != nil || rsp.Obj().Offset != want {
			t.Fatalf("write of %d+%d bytes in two parts: %+v %v", n, len(tail), rsp, err)
		}
	}
	// A read in two parts: the head, then the caller's buffer.
	head, body := make([]byte, 16), make([]byte, 4096)
	rsp, data, err = c.DoHead(ctx, proto.Request{Opcode: proto.OpReadObj}, head, body)
	if whole := pattern(0, 0, 16+4096); err != nil || rsp.DataLength != 16+4096 || !bytes.Equal(head, whole[:16]) ||
		!bytes.Equal(data, whole[16:]) || &data[0] != &body[0] {
		t.Fatalf("read in two parts: %+v %v", rsp, err)
	}
	// A payload shorter than the head fills only the head's start.
	clear(head)
	rsp, data, err = c.DoHead(ctx, proto.Request{Opcode: proto.OpReadObj, DataLength: 10}, head, body)
	if err != nil || rsp.DataLength != 10 || len(data) != 0 || !bytes.Equal(head[:10], pattern(0, 0, 10)) || head[10] != 0 {
		t.Fatalf("short read in two parts: %+v %d %v", rsp, len(data), err)
	}
	// Peer ops carry the internal protocol version (the handler checks).
	if _, err := c.ReadPeer(ctx, ObjReq{OID: oid, Epoch: 3}, rbuf[:10]); err != nil {
		t.Fatal(err)
	}
	if err := c.WritePeer(ctx, ObjReq{OID: oid}, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

func TestResultError(t *testing.T) {
	_, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		rsp := req.Reply(proto.ResNoObj)
		rsp.Epoch = 42
		return rsp, nil
	})
	c := dial(t, addr)
	rsp, _, err := c.Do(testCtx(t), proto.Request{Opcode: proto.OpReadObj, DataLength: 10}, nil, nil)
	if !errors.Is(err, proto.ResNoObj) || proto.ResultOf(err) != proto.ResNoObj || !strings.Contains(err.Error(), "READ_OBJ") {
		t.Fatalf("err %v", err)
	}
	if rsp.Result != proto.ResNoObj || rsp.Epoch != 42 {
		t.Fatalf("response not returned with the error: %+v", rsp)
	}
	if c.Err() != nil {
		t.Fatal("a result code must not break the connection")
	}
}

func TestPipelinedOutOfOrder(t *testing.T) {
	const n = 16
	gates := make(map[uint64]chan struct{})
	for i := 0; i < n; i++ {
		gates[uint64(i)] = make(chan struct{})
	}
	var entered sync.WaitGroup
	entered.Add(n)
	srv, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		entered.Done()
		select {
		case <-gates[req.Obj().OID]:
		case <-ctx.Done():
		}
		return objHandler(ctx, req, data)
	})
	c := dial(t, addr)
	ctx := testCtx(t)
	results := make([]chan error, n)
	for i := 0; i < n; i++ {
		results[i] = make(chan error, 1)
		go func() {
			oid := proto.OID(i)
			data, err := c.ReadObj(ctx, ObjReq{OID: oid}, make([]byte, 1000+i))
			if err == nil && !bytes.Equal(data, pattern(oid, 0, 1000+i)) {
				err = fmt.Errorf("request %d got someone else's data", i)
			}
			results[i] <- err
		}()
	}
	entered.Wait() // all n in flight at once...
	if srv.ActiveConns() != 1 {
		t.Fatalf("%d connections", srv.ActiveConns()) // ...over one connection
	}
	for i := n - 1; i >= 0; i-- { // answered in reverse order
		close(gates[uint64(i)])
		if err := <-results[i]; err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentCallers(t *testing.T) {
	_, addr := startNative(t, objHandler)
	c := dial(t, addr)
	ctx := testCtx(t)
	const callers, ops = 32, 60
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 64<<10)
			for i := 0; i < ops; i++ {
				oid := proto.DataOID(uint32(g), uint32(i))
				n := rng.IntN(len(buf))
				if rng.IntN(2) == 0 {
					data, err := c.ReadObj(ctx, ObjReq{OID: oid, Offset: uint32(i)}, buf[:n])
					if err != nil || !bytes.Equal(data, pattern(oid, uint32(i), n)) {
						errs <- fmt.Errorf("caller %d read %d: %v", g, i, err)
						return
					}
				} else {
					w := pattern(oid, 1, n)
					rsp, _, err := c.Do(ctx, proto.Request{Opcode: proto.OpWriteObj}, w, nil)
					if err != nil || rsp.Obj().Offset != sum(w) {
						errs <- fmt.Errorf("caller %d write %d: %v", g, i, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestContextCancel(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var calls atomic.Int64
	_, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		calls.Add(1)
		if req.Obj().OID == 1 {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done(): // a failed test must not hang the server's Close
			}
		}
		return objHandler(ctx, req, data)
	})
	c := dial(t, addr)
	ctx := testCtx(t)

	dead, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.ReadObj(dead, ObjReq{OID: 5}, make([]byte, 4)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}

	abandonedBuf := bytes.Repeat([]byte{0xee}, 4096)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadObj(cctx, ObjReq{OID: 1}, abandonedBuf)
		done <- err
	}()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	// The connection survives: other requests work while the abandoned one
	// is still being handled, and after its late response arrives.
	if _, err := c.ReadObj(ctx, ObjReq{OID: 2}, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	close(release)
	for i := 0; i < 3; i++ { // the late response is read (and dropped) in order before these
		if data, err := c.ReadObj(ctx, ObjReq{OID: 3}, make([]byte, 4096)); err != nil || !bytes.Equal(data, pattern(3, 0, 4096)) {
			t.Fatal(err)
		}
	}
	if c.Err() != nil {
		t.Fatalf("connection broke: %v", c.Err())
	}
	if !bytes.Equal(abandonedBuf, bytes.Repeat([]byte{0xee}, 4096)) {
		t.Fatal("late response written into the abandoned caller's buffer")
	}
	if calls.Load() != 5 {
		t.Fatalf("%d requests reached the server, want 5 (the pre-cancelled one must not)", calls.Load())
	}
}

func TestMaxAbandoned(t *testing.T) {
	entered := make(chan struct{}, 8)
	_, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		entered <- struct{}{}
		<-ctx.Done() // never answers while the connection lives
		return proto.Response{}, nil
	})
	c := dial(t, addr, WithMaxAbandoned(2))
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancel(testCtx(t))
		done := make(chan error, 1)
		go func() { _, _, err := c.Do(ctx, proto.Request{Opcode: proto.OpReadObj}, nil, nil); done <- err }()
		<-entered
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if broken := c.Err() != nil; broken != (i == 2) {
			t.Fatalf("after %d abandoned: broken=%v", i+1, broken)
		}
	}
	if !isNetErr(c.Err()) {
		t.Fatalf("Err %v", c.Err())
	}
}

// readRequests reads n requests (and their payloads) from a raw peer.
func readRequests(t testing.TB, nc net.Conn, n int) []proto.Request {
	var reqs []proto.Request
	for i := 0; i < n; i++ {
		req, err := proto.ReadRequest(nc)
		if err != nil {
			t.Errorf("raw peer: %v", err)
			return reqs
		}
		if req.Flags&proto.FlagWrite != 0 {
			io.CopyN(io.Discard, nc, int64(req.DataLength))
		}
		reqs = append(reqs, req)
	}
	return reqs
}

func reply(nc net.Conn, req proto.Request, n uint32, payload []byte) {
	rsp := req.Reply(proto.ResSuccess)
	rsp.DataLength = n
	nc.Write(append(rsp.Marshal(), payload...))
}

// concurrentReads starts n reads of 10 bytes and returns their results.
func concurrentReads(ctx context.Context, c *Conn, n int) []chan error {
	res := make([]chan error, n)
	for i := range res {
		res[i] = make(chan error, 1)
		go func() {
			_, err := c.ReadObj(ctx, ObjReq{OID: proto.OID(i)}, make([]byte, 10))
			res[i] <- err
		}()
	}
	return res
}

func TestServerDiesMidStream(t *testing.T) {
	addr := startRaw(t, func(nc net.Conn) {
		reqs := readRequests(t, nc, 3)
		byOID := map[uint64]proto.Request{}
		for _, r := range reqs {
			byOID[r.Obj().OID] = r
		}
		reply(nc, byOID[1], 10, make([]byte, 10)) // request 1 succeeds
		reply(nc, byOID[2], 10, make([]byte, 4))  // request 2: payload cut short
		// ...and the peer dies.
	})
	c := dial(t, addr)
	ctx := testCtx(t)
	res := concurrentReads(ctx, c, 3)
	if err := <-res[1]; err != nil {
		t.Fatalf("answered request: %v", err)
	}
	for _, i := range []int{0, 2} {
		if err := <-res[i]; !isNetErr(err) {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	<-c.Done()
	if _, err := c.ReadObj(ctx, ObjReq{OID: 9}, make([]byte, 1)); !isNetErr(err) {
		t.Fatalf("call on a dead connection: %v", err)
	}
}

func TestServerCloseFailsInflight(t *testing.T) {
	entered := make(chan struct{})
	srv, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		close(entered)
		<-ctx.Done()
		return proto.Response{}, nil
	})
	c := dial(t, addr)
	done := make(chan error, 1)
	go func() { _, err := c.ReadObj(testCtx(t), ObjReq{OID: 1}, make([]byte, 10)); done <- err }()
	<-entered
	srv.Close()
	if err := <-done; !isNetErr(err) {
		t.Fatalf("%v", err)
	}
}

func TestOversizedResponseRejected(t *testing.T) {
	addr := startRaw(t, func(nc net.Conn) {
		reqs := readRequests(t, nc, 2)
		reply(nc, reqs[0], 11, make([]byte, 11)) // asked for 10
		io.Copy(io.Discard, nc)
	})
	c := dial(t, addr)
	res := concurrentReads(testCtx(t), c, 2)
	// The offending call and the bystander both fail, both blaming the
	// protocol violation, and both map to NETWORK_ERROR for the gateway.
	for _, r := range res {
		if err := <-r; !errors.Is(err, ErrProtocol) || proto.ResultOf(err) != proto.ResNetworkError {
			t.Fatalf("%v", err)
		}
	}
	if !errors.Is(c.Err(), ErrProtocol) || !errors.Is(c.Err(), ErrConnClosed) {
		t.Fatalf("conn err %v", c.Err())
	}
}

func TestUnknownResponseID(t *testing.T) {
	addr := startRaw(t, func(nc net.Conn) {
		reqs := readRequests(t, nc, 1)
		bogus := reqs[0]
		bogus.ID += 1000
		reply(nc, bogus, 0, nil)
		io.Copy(io.Discard, nc)
	})
	c := dial(t, addr)
	if _, err := c.ReadObj(testCtx(t), ObjReq{OID: 1}, make([]byte, 10)); !isNetErr(err) {
		t.Fatalf("%v", err)
	}
	if !errors.Is(c.Err(), ErrProtocol) {
		t.Fatalf("conn err %v", c.Err())
	}
}

func TestCloseIsIdempotentAndFailsCalls(t *testing.T) {
	_, addr := startNative(t, native.HandlerFunc(objHandler))
	c := dial(t, addr)
	c.Close()
	c.Close()
	if _, err := c.ReadObj(testCtx(t), ObjReq{OID: 1}, make([]byte, 1)); !isNetErr(err) {
		t.Fatal(err)
	}
}

// TestInlineSendBounded: a request written from the caller's goroutine to
// a peer that stops reading gives up at the caller's deadline (plus the
// grace a transfer gets) and breaks the connection, since half a request
// cannot be taken back.
func TestInlineSendBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		time.Sleep(10 * time.Second) // never reads
	}()
	c := dial(t, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.WriteObj(ctx, ObjReq{OID: 1}, make([]byte, 64<<20))
	if err == nil {
		t.Fatal("a write nobody reads succeeded")
	}
	if el := time.Since(start); el > cancelGrace+3*time.Second {
		t.Fatalf("the write gave up after %v", el)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection survived a request cut in half")
	}
}

// TestNoDeadlineGoesThroughWriter: a caller without a deadline cannot
// bound a write of its own, so the writer goroutine sends for it; both
// kinds of caller mix on one connection.
func TestNoDeadlineGoesThroughWriter(t *testing.T) {
	_, addr := startNative(t, objHandler)
	c := dial(t, addr)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if i%2 == 0 {
				ctx = testCtx(t)
			}
			for j := range 50 {
				oid := proto.OID(i*100 + j)
				data, err := c.ReadObj(ctx, ObjReq{OID: oid}, make([]byte, 100+j*1000))
				if err != nil || !bytes.Equal(data, pattern(oid, 0, 100+j*1000)) {
					t.Errorf("caller %d read %d: %v", i, j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
