package proto

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// Offsets in every golden below come from sheepdog-protocol.md §1.2/§1.3.

func TestRequestHeaderObjGolden(t *testing.T) {
	golden := unhex(t, `
		02 | 03 | 0500 | 44332211 | efbeadde | 00100000
		0100000025 2b7c00 | 07000000ccbbaa00 | 03 | 22 | 05 | 00 | 04030201 | 00003000 | 00000000`)
	if len(golden) != HeaderSize {
		t.Fatalf("golden is %d bytes", len(golden))
	}
	req := Request{ProtoVer: 0x02, Opcode: OpWriteObj, Flags: FlagWrite | FlagCache,
		Epoch: 0x11223344, ID: 0xdeadbeef, DataLength: 4096}
	obj := ObjArgs{OID: 0x007c2b2500000001, CowOID: 0x00aabbcc00000007, Copies: 3,
		CopyPolicy: 0x22, ECIndex: 5, TgtEpoch: 0x01020304, Offset: 0x300000}
	req.SetObj(obj)
	diffBytes(t, "marshal", req.Marshal(), golden)

	var got Request
	if err := got.Unmarshal(golden); err != nil {
		t.Fatal(err)
	}
	if got != req {
		t.Fatalf("unmarshal: got %+v, want %+v", got, req)
	}
	if o := got.Obj(); o != obj {
		t.Fatalf("obj: got %+v, want %+v", o, obj)
	}
	if got.OffsetHigh() != 0 {
		t.Fatalf("offset high %#x", got.OffsetHigh())
	}

	// The reserved byte 35 carries nothing.
	dirty := bytes.Clone(golden)
	dirty[35] = 0xff
	if err := got.Unmarshal(dirty); err != nil {
		t.Fatal(err)
	}
	if o := got.Obj(); o != obj {
		t.Fatalf("reserved byte leaked into obj: %+v", o)
	}
}

// QEMU declares the offset as a u64 at 40; its low half must land in sheep's
// u32 offset and the zero high half at 44.
func TestRequestObjQEMUOffset(t *testing.T) {
	b := make([]byte, HeaderSize)
	b[1] = byte(OpReadObj)
	put64(b, 16, 0x807c2b2500000000)
	b[32] = 2                        // copies
	put64(b, 40, 0x00000000003ff000) // QEMU's u64 offset
	var r Request
	if err := r.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	o := r.Obj()
	if o.Offset != 0x3ff000 || r.OffsetHigh() != 0 || o.OID != 0x807c2b2500000000 || o.Copies != 2 {
		t.Fatalf("QEMU obj decoded as %+v high=%#x", o, r.OffsetHigh())
	}

	put64(b, 40, 0x0000000100000010) // an offset >= 4 GiB: high half visible
	if err := r.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if r.Obj().Offset != 0x10 || r.OffsetHigh() != 1 {
		t.Fatalf("offset %#x high %#x", r.Obj().Offset, r.OffsetHigh())
	}

	// SetObj must write 0 at 44 whatever Args held before.
	for i := range r.Args {
		r.Args[i] = 0xee
	}
	r.SetObj(ObjArgs{OID: 1, Offset: 0x3ff000})
	out := r.Marshal()
	diffBytes(t, "offset u64 as QEMU sees it", out[40:48], unhex(t, "00f03f00 00000000"))
	diffBytes(t, "reserved 34..35", out[34:36], []byte{0, 0})
}

func TestRequestHeaderVDIGolden(t *testing.T) {
	golden := unhex(t, `
		00 | 11 | 0100 | 00000000 | 2a000000 | 00010000
		0000008002000000 | 252b7c00 | 02 | 22 | 01 | 16 | 01000000 | 01000000 | 0000000000000000`)
	req := Request{Opcode: OpNewVDI, Flags: FlagWrite, ID: 42, DataLength: NameLen}
	v := VDIArgs{VDISize: 10 << 30, BaseVDIID: 0x7c2b25, Copies: 2, CopyPolicy: 0x22,
		StorePolicy: 1, BlockSizeShift: 22, SnapID: 1, Type: 1}
	req.SetVDI(v)
	diffBytes(t, "marshal", req.Marshal(), golden)
	var got Request
	if err := got.Unmarshal(golden); err != nil {
		t.Fatal(err)
	}
	if got.VDI() != v || got != req {
		t.Fatalf("got %+v / %+v", got, got.VDI())
	}
}

func TestRequestHeaderClusterGolden(t *testing.T) {
	golden := unhex(t, `
		0a | 84 | 0100 | 00000000 | 01000000 | 06000000
		0807060504030201 | 0065cd1da5d9345b | 03 | 00 | 0c00 | d4c3b2a1 | 07000000 | 16 | 000000`)
	req := Request{ProtoVer: SheepProtoVer, Opcode: OpMakeFS, Flags: FlagWrite, ID: 1, DataLength: 6}
	c := ClusterArgs{OID: 0x0102030405060708, Ctime: 0x5b34d9a51dcd6500, Copies: 3,
		Flags: ClusterFlagAutoVnodes | ClusterFlagUseLock, Tag: 0xa1b2c3d4, NodesNr: 7, BlockSizeShift: 22}
	req.SetCluster(c)
	diffBytes(t, "marshal", req.Marshal(), golden)
	var got Request
	if err := got.Unmarshal(golden); err != nil {
		t.Fatal(err)
	}
	if got.Cluster() != c || got != req {
		t.Fatalf("got %+v / %+v", got, got.Cluster())
	}
}

func TestResponseHeaderGolden(t *testing.T) {
	// GET_VDI_INFO answer as observed live: vdi_id @24, copies @32, bss @33.
	golden := unhex(t, `
		00 | 14 | 0000 | 09000000 | 42000000 | 00000000 | 00000000
		00000000 | 262b7c00 | 11000000 | 02 | 16 | 0000 0000000000000000 00000000`)
	rsp := Response{Opcode: OpGetVDIInfo, Epoch: 9, ID: 0x42}
	v := VDIRsp{VDIID: 0x7c2b26, AttrID: 0x11, Copies: 2, BlockSizeShift: 0x16}
	rsp.SetVDI(v)
	diffBytes(t, "marshal", rsp.Marshal(), golden)
	var got Response
	if err := got.Unmarshal(golden); err != nil {
		t.Fatal(err)
	}
	if got != rsp || got.VDI() != v {
		t.Fatalf("got %+v / %+v", got, got.VDI())
	}

	// Result lives at 16..19 and data_length at 12..15.
	b := make([]byte, HeaderSize)
	b[1] = byte(OpReadObj)
	put32(b, 12, 512)
	put32(b, 16, uint32(ResVerMismatch))
	if err := got.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if got.Result != ResVerMismatch || got.DataLength != 512 || got.Opcode != OpReadObj {
		t.Fatalf("got %+v", got)
	}
	if !errors.Is(got.Result.Err(), ResVerMismatch) {
		t.Fatal("Result.Err lost the code")
	}
}

func TestResponseVariantsGolden(t *testing.T) {
	args := func(rsp Response) []byte { return rsp.Marshal()[20:] }
	var digest [20]byte
	for i := range digest {
		digest[i] = byte(i + 1)
	}
	cases := []struct {
		name   string
		set    func(*Response)
		golden string // bytes 20..47
		check  func(*Response) bool
	}{
		{"obj", func(r *Response) { r.SetObj(ObjRsp{Copies: 3, CopyPolicy: 0x22, Offset: 0x100000200}) },
			"03 22 0000 | 0002000001000000 | 0000000000000000 0000000000000000",
			func(r *Response) bool { return r.Obj() == ObjRsp{Copies: 3, CopyPolicy: 0x22, Offset: 0x100000200} }},
		{"node", func(r *Response) { r.SetNode(NodeRsp{NrNodes: 3, StoreSize: 64 << 30, StoreFree: 18 << 30}) },
			"03000000 | 0000000000000000 | 0000000010000000 | 0000008004000000",
			func(r *Response) bool {
				return r.Node() == NodeRsp{NrNodes: 3, StoreSize: 64 << 30, StoreFree: 18 << 30}
			}},
		{"hash", func(r *Response) { r.SetHash(digest) },
			"00000000 | 0102030405060708090a0b0c0d0e0f1011121314 | 00000000",
			func(r *Response) bool { return r.Hash() == digest }},
		{"cluster_default", func(r *Response) {
			r.SetClusterDefault(ClusterDefault{Copies: 3, CopyPolicy: 0x42, BlockSizeShift: 22})
		},
			"03 42 16 00 | 0000000000000000 0000000000000000 0000000000000000",
			func(r *Response) bool {
				return r.ClusterDefault() == ClusterDefault{Copies: 3, CopyPolicy: 0x42, BlockSizeShift: 22}
			}},
		{"vdi", func(r *Response) { r.SetVDI(VDIRsp{VDIID: 0xabcdef, AttrID: 7, Copies: 4, BlockSizeShift: 23}) },
			"00000000 | efcdab00 | 07000000 | 04 | 17 | 0000 | 0000000000000000 00000000",
			func(r *Response) bool {
				return r.VDI() == VDIRsp{VDIID: 0xabcdef, AttrID: 7, Copies: 4, BlockSizeShift: 23}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r Response
			// Start dirty: each setter must clear the whole variant.
			for i := range r.Args {
				r.Args[i] = 0xcc
			}
			c.set(&r)
			want := unhex(t, c.golden)
			diffBytes(t, "args", args(r), want)
			full := make([]byte, HeaderSize)
			copy(full[20:], want)
			var got Response
			if err := got.Unmarshal(full); err != nil {
				t.Fatal(err)
			}
			if !c.check(&got) {
				t.Fatalf("decode of golden mismatched: %+v", got)
			}
		})
	}
}

func TestShortHeaders(t *testing.T) {
	var req Request
	var rsp Response
	for n := 0; n < HeaderSize; n++ {
		b := make([]byte, n)
		if err := req.Unmarshal(b); !errors.Is(err, ErrShortHeader) {
			t.Fatalf("request %d bytes: %v", n, err)
		}
		if err := rsp.Unmarshal(b); !errors.Is(err, ErrShortHeader) {
			t.Fatalf("response %d bytes: %v", n, err)
		}
	}
	if _, err := ReadRequest(bytes.NewReader(make([]byte, 47))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadRequest short: %v", err)
	}
	if _, err := ReadResponse(bytes.NewReader(nil)); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadResponse empty: %v", err)
	}
	// Reading consumes exactly one header.
	two := append(unhex(t, "02 02 0000 00000000 07000000 00020000")[:16], make([]byte, 32+48)...)
	rd := bytes.NewReader(two)
	r1, err := ReadRequest(rd)
	if err != nil || r1.ID != 7 || r1.DataLength != 512 || r1.Opcode != OpReadObj || rd.Len() != 48 {
		t.Fatalf("ReadRequest: %+v %v left %d", r1, err, rd.Len())
	}
}

func TestCheckVersion(t *testing.T) {
	cases := []struct {
		op  Opcode
		ver uint8
		ok  bool
	}{
		{OpReadObj, 0, true}, {OpReadObj, 1, true}, {OpReadObj, 2, true},
		{OpReadObj, 3, false}, {OpLockVDI, 0x0a, false}, {OpGetClusterDefault, 1, true},
		{OpGetNodeList, 0x0a, true}, {OpGetNodeList, 0, false}, {OpGetNodeList, 2, false},
		{OpReadPeer, 0x0b, false}, {OpMeta, 0x0a, true}, {Opcode(0x80), 0x0a, true},
		{Opcode(0x7f), 2, true}, {Opcode(0xff), 0x09, false},
	}
	for _, c := range cases {
		r := Request{Opcode: c.op, ProtoVer: c.ver}
		err := r.CheckVersion()
		if c.ok && err != nil || !c.ok && !errors.Is(err, ResVerMismatch) {
			t.Errorf("op %#x ver %#x: %v", uint8(c.op), c.ver, err)
		}
	}
}

func TestReply(t *testing.T) {
	r := Request{ProtoVer: 2, Opcode: OpWriteObj, Flags: FlagWrite, Epoch: 3, ID: 77, DataLength: 9}
	rsp := r.Reply(ResNoObj)
	if rsp.Opcode != OpWriteObj || rsp.ID != 77 || rsp.Result != ResNoObj || rsp.DataLength != 0 || rsp.ProtoVer != 0 {
		t.Fatalf("reply %+v", rsp)
	}
}

func TestMetaArgsAndReplyLimit(t *testing.T) {
	r := Request{ProtoVer: SheepProtoVer, Opcode: OpMeta, Flags: FlagWrite, DataLength: 17}
	r.SetMeta(MetaArgs{ReplyLength: 64 << 10})
	diffBytes(t, "meta union", r.Marshal()[16:24], unhex(t, "00000100 00000000"))
	if r.Meta().ReplyLength != 64<<10 || r.ReplyLimit() != 64<<10 {
		t.Fatalf("meta %+v limit %d", r.Meta(), r.ReplyLimit())
	}
	r.SetMeta(MetaArgs{ReplyLength: 3})
	if r.ReplyLimit() != 17 {
		t.Fatalf("limit below DataLength: %d", r.ReplyLimit())
	}
	// Sheepdog opcodes: DataLength, whatever the union holds.
	s := Request{Opcode: OpReadObj, DataLength: 4096}
	s.SetObj(ObjArgs{OID: 0xffffffff})
	if s.ReplyLimit() != 4096 {
		t.Fatalf("read limit %d", s.ReplyLimit())
	}
	if OpMeta.Extension() != true || OpObjInfo.Extension() != true || OpSetRecovery.Extension() || Opcode(0xdf).Extension() {
		t.Fatal("Extension range")
	}
}
