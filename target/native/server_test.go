package native

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// testHandler is the fake op handler: READ_OBJ returns DataLength bytes of
// byte(ID), WRITE_OBJ reports the byte sum of its payload in the obj
// response offset, unknown opcodes get INVALID_PARMS.
func testHandler(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	switch req.Opcode {
	case proto.OpReadObj:
		b := Alloc(ctx, int(req.DataLength))
		for i := range b {
			b[i] = byte(req.ID)
		}
		return proto.Response{}, b
	case proto.OpWriteObj:
		var sum uint64
		for _, c := range data {
			sum += uint64(c)
		}
		rsp := proto.Response{}
		rsp.SetObj(proto.ObjRsp{Offset: sum})
		return rsp, nil
	case proto.OpGetNodeList:
		return proto.Response{}, nil
	}
	return req.Reply(proto.ResInvalidParms), nil
}

func startServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Handler == nil {
		cfg.Handler = HandlerFunc(testHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg)
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return s, ln.Addr().String()
}

// raw is a client that speaks bytes, so tests can send what no well-behaved
// client would.
type raw struct {
	t  testing.TB
	nc net.Conn
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second)) // a hang fails the test instead of the run
	return &raw{t, nc}
}

func (r *raw) send(req proto.Request, payload []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(append(req.Marshal(), payload...)); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *raw) recv() (proto.Response, []byte) {
	r.t.Helper()
	rsp, err := proto.ReadResponse(r.nc)
	if err != nil {
		r.t.Fatalf("read response: %v", err)
	}
	b := make([]byte, rsp.DataLength)
	if _, err := io.ReadFull(r.nc, b); err != nil {
		r.t.Fatalf("read payload: %v", err)
	}
	return rsp, b
}

func (r *raw) expectEOF() {
	r.t.Helper()
	var b [1]byte
	if n, err := r.nc.Read(b[:]); err == nil || n != 0 {
		r.t.Fatalf("want the server to hang up, got %d bytes, %v", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		r.t.Fatal("server kept the connection open")
	}
}

// roundTrip checks the connection still frames requests correctly.
func (r *raw) roundTrip(id uint32) {
	r.t.Helper()
	r.send(proto.Request{ProtoVer: proto.ProtoVer, Opcode: proto.OpReadObj, ID: id, DataLength: 5}, nil)
	rsp, b := r.recv()
	if rsp.ID != id || rsp.Result != proto.ResSuccess || !bytes.Equal(b, bytes.Repeat([]byte{byte(id)}, 5)) {
		r.t.Fatalf("follow-up request: %+v % x", rsp, b)
	}
}

func TestMalformedInput(t *testing.T) {
	var calls atomic.Int64
	counting := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		calls.Add(1)
		return testHandler(ctx, req, data)
	})
	s, addr := startServer(t, Config{Handler: counting, MaxPayload: 1 << 20})
	hdr := func(ver uint8, op proto.Opcode, flags proto.Flags, n uint32) proto.Request {
		return proto.Request{ProtoVer: ver, Opcode: op, Flags: flags, ID: 100, DataLength: n}
	}
	cases := []struct {
		name    string
		req     proto.Request
		payload []byte
		send    func(*raw) // instead of req/payload
		want    proto.Result
		handled bool // reached the handler
		hangup  bool // the server must close the connection afterwards
	}{
		{name: "short header", send: func(r *raw) {
			r.nc.Write(make([]byte, 20))
			r.nc.(*net.TCPConn).CloseWrite()
		}, hangup: true},
		{name: "internal op with public proto_ver", req: hdr(proto.ProtoVer, proto.OpGetNodeList, 0, 0), want: proto.ResVerMismatch},
		{name: "internal op with proto_ver 0", req: hdr(0, proto.OpGetNodeList, 0, 0), want: proto.ResVerMismatch},
		{name: "internal op ok", req: hdr(proto.SheepProtoVer, proto.OpGetNodeList, 0, 0), want: proto.ResSuccess, handled: true},
		{name: "public op with proto_ver 3 and payload", req: hdr(3, proto.OpWriteObj, proto.FlagWrite, 10),
			payload: []byte("0123456789"), want: proto.ResVerMismatch},
		{name: "public op with sheep proto_ver", req: hdr(proto.SheepProtoVer, proto.OpReadObj, 0, 1), want: proto.ResVerMismatch},
		{name: "QEMU proto_ver 0", req: hdr(0, proto.OpWriteObj, proto.FlagWrite, 3), payload: []byte{1, 2, 3}, want: proto.ResSuccess, handled: true},
		{name: "unknown opcode reaches handler", req: hdr(proto.ProtoVer, proto.Opcode(0x7e), 0, 0), want: proto.ResInvalidParms, handled: true},
		{name: "4 GiB read", req: hdr(proto.ProtoVer, proto.OpReadObj, 0, 0xffffffff), want: proto.ResInvalidParms},
		{name: "4 GiB write", req: hdr(proto.ProtoVer, proto.OpWriteObj, proto.FlagWrite, 0xffffffff),
			payload: make([]byte, 100), want: proto.ResInvalidParms, hangup: true},
		{name: "MaxPayload+1 write", req: hdr(proto.ProtoVer, proto.OpWriteObj, proto.FlagWrite, 1<<20+1),
			want: proto.ResInvalidParms, hangup: true},
		{name: "MaxPayload write", req: hdr(proto.ProtoVer, proto.OpWriteObj, proto.FlagWrite, 1<<20),
			payload: make([]byte, 1<<20), want: proto.ResSuccess, handled: true},
		{name: "client closes mid-payload", send: func(r *raw) {
			r.send(hdr(proto.ProtoVer, proto.OpWriteObj, proto.FlagWrite, 4096), make([]byte, 100))
			r.nc.(*net.TCPConn).CloseWrite()
		}, hangup: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := calls.Load()
			r := dialRaw(t, addr)
			if c.send != nil {
				c.send(r)
			} else {
				r.send(c.req, c.payload)
				rsp, b := r.recv()
				if rsp.Result != c.want || rsp.ID != c.req.ID || rsp.Opcode != c.req.Opcode || len(b) != 0 && c.want != proto.ResSuccess {
					t.Fatalf("got %+v (%v), want result %v", rsp, rsp.Result, c.want)
				}
			}
			if c.hangup {
				r.expectEOF()
			} else {
				r.roundTrip(7)
				before++ // the follow-up read is handled too
			}
			if got := calls.Load() - before; got != 1 && c.handled || got != 0 && !c.handled {
				t.Fatalf("handler called %d times", got)
			}
		})
	}
	if st := s.Stats(); st.Rejected != 7 {
		t.Errorf("Rejected = %d, want 7", st.Rejected)
	}
}

func TestFillsHeaderAndTruncates(t *testing.T) {
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		switch req.ID {
		case 1: // zero response: server fills id, opcode, data_length
			return proto.Response{Epoch: 5}, []byte("abc")
		case 2: // more than the client's 4-byte buffer
			return proto.Response{}, []byte("0123456789")
		case 3: // a wrong id is overridden
			return proto.Response{ID: 99, Opcode: proto.OpReadObj}, nil
		}
		return req.Reply(proto.ResInvalidParms), nil
	})
	s, addr := startServer(t, Config{Handler: h})
	r := dialRaw(t, addr)

	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 1, DataLength: 16}, nil)
	rsp, b := r.recv()
	if rsp.ID != 1 || rsp.Opcode != proto.OpReadObj || rsp.DataLength != 3 || rsp.Epoch != 5 || string(b) != "abc" {
		t.Fatalf("%+v %q", rsp, b)
	}
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 2, DataLength: 4}, nil)
	rsp, b = r.recv()
	if rsp.DataLength != 4 || string(b) != "0123" {
		t.Fatalf("not truncated: %+v %q", rsp, b)
	}
	r.send(proto.Request{Opcode: proto.OpGetVDIInfo, ID: 3}, nil)
	if rsp, _ = r.recv(); rsp.ID != 3 {
		t.Fatalf("id %d", rsp.ID)
	}
	if s.Stats().Truncated != 1 {
		t.Fatalf("Truncated = %d", s.Stats().Truncated)
	}
}

func TestPipelinedOutOfOrder(t *testing.T) {
	const n = 8
	gates := make([]chan struct{}, n)
	for i := range gates {
		gates[i] = make(chan struct{})
	}
	var entered sync.WaitGroup
	entered.Add(n)
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		entered.Done()
		<-gates[req.ID]
		rsp := proto.Response{}
		rsp.SetObj(proto.ObjRsp{Offset: uint64(len(data))})
		return rsp, append([]byte(nil), data...) // echo
	})
	_, addr := startServer(t, Config{Handler: h})
	r := dialRaw(t, addr)
	for i := 0; i < n; i++ {
		p := bytes.Repeat([]byte{byte(i)}, 1000*(i+1))
		r.send(proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite, ID: uint32(i), DataLength: uint32(len(p))}, p)
	}
	entered.Wait() // all n run concurrently
	for i := n - 1; i >= 0; i-- {
		close(gates[i])
		rsp, b := r.recv()
		if rsp.ID != uint32(i) || rsp.Obj().Offset != uint64(1000*(i+1)) || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 1000*(i+1))) {
			t.Fatalf("response %d: %+v, %d bytes", i, rsp, len(b))
		}
	}
}

func TestMaxInflightBackpressure(t *testing.T) {
	const limit, total = 4, 12
	var running, peak atomic.Int64
	entered := make(chan uint32, total)
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		cur := running.Add(1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		entered <- req.ID
		select {
		case <-release:
		case <-ctx.Done(): // lets Close finish when the test fails early
		}
		running.Add(-1)
		return proto.Response{}, nil
	})
	_, addr := startServer(t, Config{Handler: h, MaxInflight: limit})
	r := dialRaw(t, addr)
	for i := 0; i < total; i++ {
		r.send(proto.Request{Opcode: proto.OpReadObj, ID: uint32(i)}, nil)
	}
	for i := 0; i < limit; i++ {
		<-entered
	}
	// The server must not start a fifth handler while four are outstanding.
	// (A short wait: a broken limit shows up as an extra entry.)
	select {
	case id := <-entered:
		t.Fatalf("request %d started beyond MaxInflight", id)
	case <-time.After(100 * time.Millisecond):
	}
	for i := 0; i < total; i++ {
		release <- struct{}{}
		r.recv()
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak concurrency %d, want %d", p, limit)
	}
}

func TestHandlerPanic(t *testing.T) {
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		if req.ID == 1 {
			var m map[string]int
			m["boom"]++ // a real runtime panic
		}
		return testHandler(ctx, req, data)
	})
	s, addr := startServer(t, Config{Handler: h})
	r := dialRaw(t, addr)
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 1, DataLength: 10}, nil)
	rsp, b := r.recv()
	if rsp.Result != proto.ResSystemError || rsp.ID != 1 || len(b) != 0 {
		t.Fatalf("%+v", rsp)
	}
	r.roundTrip(2)
	if s.Stats().Panics != 1 {
		t.Fatalf("Panics = %d", s.Stats().Panics)
	}
}

func TestCloseWhileInflight(t *testing.T) {
	entered := make(chan struct{})
	var sawCancel atomic.Bool
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		entered <- struct{}{}
		<-ctx.Done()
		sawCancel.Store(true)
		return proto.Response{}, nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Config{Handler: h})
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), ln) }()
	r := dialRaw(t, ln.Addr().String())
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 1}, nil)
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 2}, nil)
	<-entered
	<-entered
	if s.ActiveConns() != 1 {
		t.Fatalf("ActiveConns = %d", s.ActiveConns())
	}
	s.Close() // returns only after both handlers returned
	if !sawCancel.Load() {
		t.Fatal("Close returned before the handlers")
	}
	if s.ActiveConns() != 0 {
		t.Fatalf("ActiveConns = %d after Close", s.ActiveConns())
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	r.expectEOF()
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("still accepting")
	}
}

func TestShutdownGraceful(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		entered <- struct{}{}
		<-release
		return proto.Response{}, []byte("done")
	})
	s, addr := startServer(t, Config{Handler: h})
	r := dialRaw(t, addr)
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 9, DataLength: 4}, nil)
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	close(release)
	rsp, b := r.recv() // the in-flight request still gets its answer
	if rsp.ID != 9 || string(b) != "done" {
		t.Fatalf("%+v %q", rsp, b)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	r.expectEOF()
}

func TestServeContextCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Config{Handler: HandlerFunc(testHandler)})
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	r := dialRaw(t, ln.Addr().String())
	r.roundTrip(1)
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
	r.expectEOF()
}

func TestAllocAndAfterReply(t *testing.T) {
	released := make(chan string, 1)
	h := HandlerFunc(func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		b := Alloc(ctx, 3000)
		copy(b, "pooled")
		if !AfterReply(ctx, func() { released <- "released" }) {
			panic("AfterReply refused a server context")
		}
		return proto.Response{}, b[:6]
	})
	_, addr := startServer(t, Config{Handler: h})
	r := dialRaw(t, addr)
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 1, DataLength: 100}, nil)
	if _, b := r.recv(); string(b) != "pooled" {
		t.Fatalf("%q", b)
	}
	if <-released != "released" {
		t.Fatal("AfterReply func not run")
	}
	if AfterReply(context.Background(), func() {}) {
		t.Fatal("AfterReply outside a request")
	}
	if b := Alloc(context.Background(), 10); len(b) != 10 {
		t.Fatal("Alloc outside a request")
	}
}

func TestBufPool(t *testing.T) {
	var p bufPool
	for _, n := range []int{0, 1, 512, 513, 4096, 4 << 20, proto.InodeSize, 16 << 20} {
		b, h := p.get(n)
		if len(b) != n || h == nil || cap(b) < n || cap(b) > 2*max(n, 512) {
			t.Fatalf("get(%d): len %d cap %d", n, len(b), cap(b))
		}
		p.put(h)
	}
	if b, h := p.get(16<<20 + 1); len(b) != 16<<20+1 || h != nil {
		t.Fatal("oversized buffers are not pooled")
	}
}

type fakeRecorder struct {
	mu       sync.Mutex
	sessions map[string]int
	requests []string
}

func (r *fakeRecorder) Request(frontend, op string, n int, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := "ok"
	if err != nil {
		res = proto.ResultOf(err).Error()
	}
	r.requests = append(r.requests, frontend+" "+op+" "+res+" "+string(rune('0'+n%10)))
}

func (r *fakeRecorder) Sessions(frontend string, delta int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions[frontend] += delta
}

func TestRecorder(t *testing.T) {
	rec := &fakeRecorder{sessions: map[string]int{}}
	s, addr := startServer(t, Config{Recorder: rec})
	r := dialRaw(t, addr)
	r.send(proto.Request{Opcode: proto.OpReadObj, ID: 1, DataLength: 3}, nil)
	r.recv()
	rec.mu.Lock()
	open := rec.sessions["native"]
	rec.mu.Unlock()
	if open != 1 {
		t.Fatalf("%d sessions open during the connection", open)
	}
	r.send(proto.Request{ProtoVer: proto.SheepProtoVer, Opcode: proto.OpReadPeer, ID: 2}, nil)
	r.recv()
	r.nc.Close()
	s.Close() // waits for the connection to wind down
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := []string{"native READ_OBJ ok 3", "peer READ_PEER Invalid parameters 0"}
	if len(rec.requests) != 2 || rec.requests[0] != want[0] || rec.requests[1] != want[1] {
		t.Fatalf("requests %q", rec.requests)
	}
	if rec.sessions["native"] != 0 {
		t.Fatalf("sessions %v", rec.sessions)
	}
}
