package client

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/target/native"
)

type captured struct {
	req  proto.Request
	data []byte
}

// recorder is a fake sheep that records every request and answers with
// the current answer function.
type recorder struct {
	mu     sync.Mutex
	reqs   []captured
	answer func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte)
}

func (r *recorder) handle(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	r.mu.Lock()
	r.reqs = append(r.reqs, captured{*req, bytes.Clone(data)})
	answer := r.answer
	r.mu.Unlock()
	if answer == nil {
		return proto.Response{}, nil
	}
	return answer(ctx, req, data)
}

func (r *recorder) take() []captured {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs, r.answer = nil, nil
	return reqs
}

func (r *recorder) set(f func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte)) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

func startRecorder(t *testing.T) (*recorder, *Conn) {
	rec := &recorder{}
	_, addr := startNative(t, rec.handle)
	return rec, dial(t, addr)
}

// expect checks one captured request against the fields a case cares
// about; the header is compared whole, so unexpected flags or union bytes
// fail too.
func expect(t *testing.T, got []captured, want proto.Request, payload []byte) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%d requests sent, want 1", len(got))
	}
	g := got[0].req
	want.ID = g.ID
	if g != want {
		t.Fatalf("request\n got %+v\nwant %+v", g, want)
	}
	if !bytes.Equal(got[0].data, payload) {
		t.Fatalf("payload\n got %q\nwant %q", got[0].data, payload)
	}
}

func obj(op proto.Opcode, ver uint8, flags proto.Flags, epoch, n uint32, a proto.ObjArgs) proto.Request {
	r := proto.Request{ProtoVer: ver, Opcode: op, Flags: flags, Epoch: epoch, DataLength: n}
	r.SetObj(a)
	return r
}

func TestObjOpsWire(t *testing.T) {
	rec, c := startRecorder(t)
	ctx := testCtx(t)
	oid := proto.DataOID(0x7c2b25, 1)
	pub, sheep := proto.ProtoVer, proto.SheepProtoVer
	W := proto.FlagWrite

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, bytes.Repeat([]byte{7}, int(req.DataLength))
	})
	data, err := c.ReadObj(ctx, ObjReq{OID: oid, Offset: 0x1000, Copies: 3, Flags: proto.FlagCache}, make([]byte, 4096))
	if err != nil || len(data) != 4096 || data[4095] != 7 {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpReadObj, pub, proto.FlagCache, 0, 4096, proto.ObjArgs{OID: uint64(oid), Offset: 0x1000, Copies: 3}), nil)

	if err := c.WriteObj(ctx, ObjReq{OID: oid, Offset: 8, CopyPolicy: 0x22, Copies: 6}, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpWriteObj, pub, W, 0, 3, proto.ObjArgs{OID: uint64(oid), Offset: 8, Copies: 6, CopyPolicy: 0x22}), []byte("abc"))

	cow := proto.DataOID(0x7c2b24, 1)
	if err := c.CreateAndWriteObj(ctx, ObjReq{OID: oid, CowOID: cow, Flags: proto.FlagDirect}, []byte("xy")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpCreateAndWriteObj, pub, W|proto.FlagCOW|proto.FlagDirect, 0, 2,
		proto.ObjArgs{OID: uint64(oid), CowOID: uint64(cow)}), []byte("xy"))

	if err := c.CreateAndWriteObj(ctx, ObjReq{OID: oid}, []byte("z")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpCreateAndWriteObj, pub, W, 0, 1, proto.ObjArgs{OID: uint64(oid)}), []byte("z"))

	if err := c.RemoveObj(ctx, ObjReq{OID: oid}); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpRemoveObj, pub, 0, 0, 0, proto.ObjArgs{OID: uint64(oid)}), nil)

	if err := c.DiscardObj(ctx, ObjReq{OID: oid}); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpDiscardObj, pub, 0, 0, 0, proto.ObjArgs{OID: uint64(oid)}), nil)

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, make([]byte, req.DataLength)
	})
	peer := ObjReq{OID: oid, Epoch: 7, ECIndex: 2, TgtEpoch: 6, Copies: 6, CopyPolicy: 0x22, Flags: proto.FlagRecovery}
	if _, err := c.ReadPeer(ctx, peer, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	pa := proto.ObjArgs{OID: uint64(oid), ECIndex: 2, TgtEpoch: 6, Copies: 6, CopyPolicy: 0x22}
	expect(t, rec.take(), obj(proto.OpReadPeer, sheep, proto.FlagRecovery, 7, 512, pa), nil)

	peer.Flags = proto.FlagSync
	if err := c.WritePeer(ctx, peer, []byte("p")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpWritePeer, sheep, W|proto.FlagSync, 7, 1, pa), []byte("p"))
	if err := c.CreateAndWritePeer(ctx, peer, []byte("q")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpCreateAndWritePeer, sheep, W|proto.FlagSync, 7, 1, pa), []byte("q"))
	peer.Flags = 0
	if err := c.RemovePeer(ctx, peer); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpRemovePeer, sheep, 0, 7, 0, pa), nil)

	if err := c.FlushVDI(ctx, 0x7c2b25); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), obj(proto.OpFlushVDI, pub, 0, 0, 0, proto.ObjArgs{OID: 0x807c2b2500000000}), nil)
}

func vdiReq(op proto.Opcode, n uint32, a proto.VDIArgs) proto.Request {
	r := proto.Request{ProtoVer: proto.ProtoVer, Opcode: op, Flags: proto.FlagWrite, DataLength: n}
	r.SetVDI(a)
	return r
}

func TestVDIOpsWire(t *testing.T) {
	rec, c := startRecorder(t)
	ctx := testCtx(t)
	vdiAnswer := func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		var rsp proto.Response
		rsp.SetVDI(proto.VDIRsp{VDIID: 0x7c2b26, Copies: 3, BlockSizeShift: 22})
		return rsp, nil
	}
	nameTagPayload := func(name, tag string) []byte {
		b := make([]byte, 512)
		copy(b, name)
		copy(b[256:], tag)
		return b
	}

	rec.set(vdiAnswer)
	a := proto.VDIArgs{VDISize: 10 << 30, BaseVDIID: 0x7c2b25, Copies: 3, BlockSizeShift: 22, SnapID: 1}
	v, err := c.NewVDI(ctx, "test", a)
	if err != nil || v.VDIID != 0x7c2b26 || v.Copies != 3 || v.BlockSizeShift != 22 {
		t.Fatalf("%+v %v", v, err)
	}
	expect(t, rec.take(), vdiReq(proto.OpNewVDI, 256, a), nameTagPayload("test", "")[:256])

	rec.set(vdiAnswer)
	if v, err := c.LockVDI(ctx, "test", "", 0, 1); err != nil || v.VDIID != 0x7c2b26 {
		t.Fatalf("%+v %v", v, err)
	}
	expect(t, rec.take(), vdiReq(proto.OpLockVDI, 512, proto.VDIArgs{Type: 1}), nameTagPayload("test", ""))

	rec.set(vdiAnswer)
	if v, err := c.GetVDIInfo(ctx, "test", "snap", 2); err != nil || v.VDIID != 0x7c2b26 {
		t.Fatalf("%+v %v", v, err)
	}
	expect(t, rec.take(), vdiReq(proto.OpGetVDIInfo, 512, proto.VDIArgs{SnapID: 2}), nameTagPayload("test", "snap"))

	if err := c.ReleaseVDI(ctx, "test", 0x7c2b26); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), vdiReq(proto.OpReleaseVDI, 5, proto.VDIArgs{BaseVDIID: 0x7c2b26}), []byte("test\x00"))
	if err := c.ReleaseVDI(ctx, "", 0x7c2b26); err != nil {
		t.Fatal(err)
	}
	r := vdiReq(proto.OpReleaseVDI, 0, proto.VDIArgs{BaseVDIID: 0x7c2b26})
	r.Flags = 0
	expect(t, rec.take(), r, nil)

	if err := c.DelVDI(ctx, "test", "", 0); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), vdiReq(proto.OpDelVDI, 256, proto.VDIArgs{}), nameTagPayload("test", "")[:256])
	if err := c.DelVDI(ctx, "test", "", 3); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), vdiReq(proto.OpDelVDI, 512, proto.VDIArgs{SnapID: 3}), nameTagPayload("test", ""))

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		m := proto.NewVDIBitmap()
		m.Set(0x7c2b25)
		return proto.Response{}, m
	})
	m, err := c.ReadVDIs(ctx)
	if err != nil || !m.Test(0x7c2b25) || m.Test(0x7c2b26) {
		t.Fatal(err)
	}
	r = vdiReq(proto.OpReadVDIs, proto.VDIBitmapSize, proto.VDIArgs{})
	r.Flags = 0
	expect(t, rec.take(), r, nil)

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, make([]byte, 100) // not a bitmap
	})
	if _, err := c.ReadVDIs(ctx); !errors.Is(err, proto.ResInvalidParms) {
		t.Fatalf("short bitmap: %v", err)
	}
	rec.take()

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		var rsp proto.Response
		rsp.SetClusterDefault(proto.ClusterDefault{Copies: 3, CopyPolicy: 0x22, BlockSizeShift: 23})
		return rsp, nil
	})
	if d, err := c.GetClusterDefault(ctx); err != nil || d != (proto.ClusterDefault{Copies: 3, CopyPolicy: 0x22, BlockSizeShift: 23}) {
		t.Fatalf("%+v %v", d, err)
	}
	expect(t, rec.take(), proto.Request{ProtoVer: proto.ProtoVer, Opcode: proto.OpGetClusterDefault}, nil)
}

func TestClusterOpsWire(t *testing.T) {
	rec, c := startRecorder(t)
	ctx := testCtx(t)
	internal := func(op proto.Opcode) proto.Request {
		return proto.Request{ProtoVer: proto.SheepProtoVer, Opcode: op}
	}

	nodes := []proto.Node{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 7000, Vnodes: 128, Zone: 1},
		{Addr: netip.MustParseAddr("127.0.0.2"), Port: 7000, Vnodes: 128, Zone: 2},
	}
	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, proto.MarshalNodes(nodes)
	})
	ns, err := c.GetNodeList(ctx)
	if err != nil || len(ns) != 2 || ns[1] != nodes[1] {
		t.Fatalf("%v %v", ns, err)
	}
	r := internal(proto.OpGetNodeList)
	r.DataLength = 256 * proto.NodeSize
	expect(t, rec.take(), r, nil)

	ca := proto.ClusterArgs{Copies: 3, Ctime: 0x5b34d9a51dcd6500, Flags: proto.ClusterFlagAutoVnodes, BlockSizeShift: 22}
	if err := c.MakeFS(ctx, ca, "plain"); err != nil {
		t.Fatal(err)
	}
	r = internal(proto.OpMakeFS)
	r.Flags, r.DataLength = proto.FlagWrite, 6
	r.SetCluster(ca)
	expect(t, rec.take(), r, []byte("plain\x00"))

	for _, op := range []struct {
		code proto.Opcode
		call func(context.Context) error
	}{
		{proto.OpShutdown, c.Shutdown}, {proto.OpKillNode, c.KillNode},
		{proto.OpEnableRecover, c.EnableRecover}, {proto.OpDisableRecover, c.DisableRecover},
	} {
		if err := op.call(ctx); err != nil {
			t.Fatal(err)
		}
		expect(t, rec.take(), internal(op.code), nil)
	}

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		var rsp proto.Response
		rsp.SetNode(proto.NodeRsp{NrNodes: 1, StoreSize: 100 << 30, StoreFree: 60 << 30})
		return rsp, nil
	})
	if st, err := c.StatSheep(ctx); err != nil || st.StoreSize != 100<<30 || st.StoreFree != 60<<30 {
		t.Fatalf("%+v %v", st, err)
	}
	expect(t, rec.take(), internal(proto.OpStatSheep), nil)

	var digest [20]byte
	copy(digest[:], "0123456789abcdefghij")
	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		var rsp proto.Response
		rsp.SetHash(digest)
		return rsp, nil
	})
	oid := proto.DataOID(5, 6)
	if h, err := c.GetHash(ctx, oid, 9); err != nil || h != digest {
		t.Fatalf("%x %v", h, err)
	}
	r = internal(proto.OpGetHash)
	r.SetObj(proto.ObjArgs{OID: uint64(oid), TgtEpoch: 9})
	expect(t, rec.take(), r, nil)

	if ok, err := c.Exist(ctx, oid, 1); err != nil || !ok {
		t.Fatalf("%v %v", ok, err)
	}
	r = internal(proto.OpExist)
	r.SetObj(proto.ObjArgs{OID: uint64(oid), ECIndex: 1})
	expect(t, rec.take(), r, nil)
	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return req.Reply(proto.ResNoObj), nil
	})
	if ok, err := c.Exist(ctx, oid, 0); err != nil || ok {
		t.Fatalf("%v %v", ok, err)
	}
	rec.take()
	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return req.Reply(proto.ResEIO), nil
	})
	if _, err := c.Exist(ctx, oid, 0); !errors.Is(err, proto.ResEIO) {
		t.Fatal(err)
	}
	rec.take()

	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, []byte{1, 0, 0, 0, 0, 0, 0, 0x80, 2, 0, 0, 0, 5, 0, 0, 0}
	})
	oids, err := c.GetObjList(ctx, 4)
	if err != nil || len(oids) != 2 || oids[0] != 0x8000000000000001 || oids[1] != 0x0000000500000002 {
		t.Fatalf("%v %v", oids, err)
	}
	r = internal(proto.OpGetObjList)
	r.Epoch, r.DataLength = 4, 1<<20
	expect(t, rec.take(), r, nil)
	rec.set(func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		return proto.Response{}, make([]byte, 12)
	})
	if _, err := c.GetObjList(ctx, 4); !errors.Is(err, ErrProtocol) {
		t.Fatalf("ragged list: %v", err)
	}
	rec.take()
}

// bufferSmallUntil answers ResBufferSmall while the client's buffer is
// below need, then payload.
func bufferSmallUntil(need uint32, payload []byte) func(context.Context, *proto.Request, []byte) (proto.Response, []byte) {
	return func(_ context.Context, req *proto.Request, _ []byte) (proto.Response, []byte) {
		if req.ReplyLimit() < need {
			return req.Reply(proto.ResBufferSmall), nil
		}
		return proto.Response{}, payload
	}
}

func TestBufferSmallRetries(t *testing.T) {
	rec, c := startRecorder(t)
	ctx := testCtx(t)

	nodes := make([]proto.Node, 300)
	for i := range nodes {
		nodes[i] = proto.Node{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), Port: 7000}
	}
	rec.set(bufferSmallUntil(300*proto.NodeSize, proto.MarshalNodes(nodes)))
	if ns, err := c.GetNodeList(ctx); err != nil || len(ns) != 300 {
		t.Fatalf("%d nodes, %v", len(ns), err)
	}
	if got := rec.take(); len(got) != 2 || got[1].req.DataLength != 1024*proto.NodeSize {
		t.Fatalf("%d attempts", len(got))
	}

	list := make([]byte, 3<<20) // 3 MiB of oids: 1 MiB, 2 MiB, 4 MiB buffers
	rec.set(bufferSmallUntil(3<<20, list))
	if oids, err := c.GetObjList(ctx, 1); err != nil || len(oids) != len(list)/8 {
		t.Fatalf("%d oids, %v", len(oids), err)
	}
	if got := rec.take(); len(got) != 3 || got[2].req.DataLength != 4<<20 {
		t.Fatalf("%d attempts", len(got))
	}
}

func TestMeta(t *testing.T) {
	type doc struct {
		Names []string `json:"names"`
	}
	big := doc{Names: make([]string, 10000)} // ~120 KiB of JSON: more than the first buffer
	for i := range big.Names {
		big.Names[i] = strings.Repeat("n", 10)
	}
	var attempts []captured
	var mu sync.Mutex
	_, addr := startNative(t, func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		mu.Lock()
		attempts = append(attempts, captured{*req, bytes.Clone(data)})
		mu.Unlock()
		if req.Opcode != proto.OpClusterState {
			return req.Reply(proto.ResInvalidParms), nil
		}
		var in struct{ Want int }
		if len(data) > 0 {
			if err := native.DecodeJSON(data, &in); err != nil {
				return req.Reply(proto.ResultOf(err)), nil
			}
		}
		if in.Want == 1 {
			return native.ReplyJSON(ctx, req, doc{Names: []string{"one"}})
		}
		return native.ReplyJSON(ctx, req, big)
	})
	c := dial(t, addr)
	ctx := testCtx(t)
	taken := func() []captured {
		mu.Lock()
		defer mu.Unlock()
		a := attempts
		attempts = nil
		return a
	}

	var out doc
	if err := c.Meta(ctx, proto.OpClusterState, nil, &out); err != nil || len(out.Names) != 10000 {
		t.Fatalf("%d names, %v", len(out.Names), err)
	}
	got := taken()
	if len(got) != 2 || got[0].req.Meta().ReplyLength != 64<<10 || got[1].req.Meta().ReplyLength != 256<<10 {
		t.Fatalf("attempts %+v", got)
	}
	if a := got[0].req; a.Flags&proto.FlagWrite != 0 || a.ProtoVer != proto.SheepProtoVer || a.DataLength != 0 {
		t.Fatalf("request without input: %+v", a)
	}

	if err := c.Meta(ctx, proto.OpClusterState, map[string]int{"Want": 1}, &out); err != nil || len(out.Names) != 1 {
		t.Fatalf("%v %v", out, err)
	}
	if a := taken()[0]; a.req.Flags&proto.FlagWrite == 0 || string(a.data) != `{"Want":1}` || a.req.DataLength != 10 {
		t.Fatalf("request with input: %+v %q", a.req, a.data)
	}
	if err := c.Meta(ctx, proto.OpReadObj, nil, nil); !errors.Is(err, proto.ResInvalidParms) {
		t.Fatalf("non-extension opcode: %v", err)
	}
	if err := c.Meta(ctx, proto.OpNodeInfo, nil, nil); !errors.Is(err, proto.ResInvalidParms) {
		t.Fatalf("server error: %v", err)
	}
}
