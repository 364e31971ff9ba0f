package proto

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func FuzzRequestUnmarshal(f *testing.F) {
	for _, r := range []Request{
		{ProtoVer: 2, Opcode: OpReadObj, ID: 1, DataLength: 4096},
		{ProtoVer: 0x0a, Opcode: OpMakeFS, Flags: FlagWrite, DataLength: 6},
		{Opcode: OpNewVDI, Flags: FlagWrite, DataLength: 256},
	} {
		f.Add(r.Marshal())
	}
	f.Add([]byte{})
	f.Add(make([]byte, 47))
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		err := r.Unmarshal(b)
		if len(b) < HeaderSize {
			if !errors.Is(err, ErrShortHeader) {
				t.Fatalf("%d bytes: %v", len(b), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if out := r.Marshal(); !bytes.Equal(out, b[:HeaderSize]) {
			t.Fatalf("round trip:\n% x\n% x", out, b[:HeaderSize])
		}
		_ = r.String()
		_ = r.CheckVersion()
		_ = r.Reply(ResSuccess)
		// Each typed view re-encodes to the same fields.
		o := r.Obj()
		var r2 Request
		r2.SetObj(o)
		if r2.Obj() != o {
			t.Fatal("obj round trip")
		}
		v := r.VDI()
		r2.SetVDI(v)
		if r2.VDI() != v {
			t.Fatal("vdi round trip")
		}
		c := r.Cluster()
		r2.SetCluster(c)
		if r2.Cluster() != c {
			t.Fatal("cluster round trip")
		}
		_ = r.OffsetHigh()
		_ = r.ReplyLimit()
	})
}

func FuzzResponseUnmarshal(f *testing.F) {
	rsp := Response{Opcode: OpGetVDIInfo, ID: 9, Result: ResNoVDI}
	rsp.SetVDI(VDIRsp{VDIID: 0x7c2b25, Copies: 3})
	f.Add(rsp.Marshal())
	f.Add(make([]byte, 48))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Response
		err := r.Unmarshal(b)
		if len(b) < HeaderSize {
			if !errors.Is(err, ErrShortHeader) {
				t.Fatalf("%d bytes: %v", len(b), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if out := r.Marshal(); !bytes.Equal(out, b[:HeaderSize]) {
			t.Fatal("round trip")
		}
		_ = r.Result.Error()
		var r2 Response
		o := r.Obj()
		r2.SetObj(o)
		if r2.Obj() != o {
			t.Fatal("obj")
		}
		v := r.VDI()
		r2.SetVDI(v)
		if r2.VDI() != v {
			t.Fatal("vdi")
		}
		n := r.Node()
		r2.SetNode(n)
		if r2.Node() != n {
			t.Fatal("node")
		}
		h := r.Hash()
		r2.SetHash(h)
		if r2.Hash() != h {
			t.Fatal("hash")
		}
		cd := r.ClusterDefault()
		r2.SetClusterDefault(cd)
		if r2.ClusterDefault() != cd {
			t.Fatal("cluster default")
		}
	})
}

// Run with -fuzzminimizetime=2s or so: minimising a multi-KiB inode input
// takes the default minute and stalls the fuzzer.
func FuzzInodeUnmarshal(f *testing.F) {
	g, _ := goldenInode()
	f.Add(g[:InodeHeaderSize+64])
	f.Add(g[:InodeLookupSize])
	f.Add(make([]byte, 10))
	f.Add(bytes.Repeat([]byte{0xff}, 600))
	f.Fuzz(func(t *testing.T, b []byte) {
		var i Inode
		err := i.UnmarshalHeader(b)
		if len(b) < InodeLookupSize {
			if !errors.Is(err, ResInvalidParms) {
				t.Fatalf("%d bytes: %v", len(b), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		// Decoding normalises (names cut at NUL); after that, encoding is stable.
		var again Inode
		if err := again.UnmarshalHeader(i.MarshalHeader()); err != nil {
			t.Fatal(err)
		}
		if len(b) < InodeLookupSize+4 {
			i.BtreeCounter = 0
		}
		if !reflect.DeepEqual(again, i) {
			t.Fatalf("header round trip:\n%+v\n%+v", again, i)
		}
		// Index entries: Unmarshal's 4 MiB index makes fuzzing crawl, so the
		// fuzzer drives DecodeIndex (what Unmarshal uses) on the tail directly.
		if len(b) > InodeIndexOffset {
			tail := b[InodeIndexOffset:]
			idx := make([]uint32, len(tail)/4+1)
			DecodeIndex(idx, tail)
			if idx[len(idx)-1] != 0 {
				t.Fatal("decoded a partial trailing entry")
			}
			if enc := EncodeIndex(idx[:len(tail)/4]); !bytes.Equal(enc, tail[:len(enc)]) {
				t.Fatal("index round trip")
			}
		}
	})
}

func FuzzNodes(f *testing.F) {
	f.Add(MarshalNodes([]Node{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 7000, Vnodes: 128, Zone: 1, Space: 1 << 30},
		{Addr: netip.MustParseAddr("::1"), Port: 7001, IOAddr: netip.MustParseAddr("10.0.0.1"), IOPort: 7002},
	}))
	f.Add(make([]byte, 79))
	f.Add(bytes.Repeat([]byte{0xff}, 160))
	f.Fuzz(func(t *testing.T, b []byte) {
		ns, err := UnmarshalNodes(b)
		if len(b)%NodeSize != 0 {
			if !errors.Is(err, ResInvalidParms) {
				t.Fatalf("%d bytes: %v", len(b), err)
			}
			return
		}
		if err != nil || len(ns) != len(b)/NodeSize {
			t.Fatalf("%d nodes, %v", len(ns), err)
		}
		for _, n := range ns {
			_ = n.String()
			_ = n.IDBytes()
			_ = DefaultZone(n.Addr)
		}
		// Encoding drops rb_node garbage and padding; after that it is stable.
		enc := MarshalNodes(ns)
		ns2, err := UnmarshalNodes(enc)
		if err != nil || !reflect.DeepEqual(ns, ns2) && len(ns) > 0 {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, ns, ns2)
		}
		if !bytes.Equal(MarshalNodes(ns2), enc) {
			t.Fatal("encoding not stable")
		}
		mapped := func(a []byte) bool { return bytes.Equal(a[:12], []byte{10: 0xff, 11: 0xff}) }
		for i := range ns {
			r, e := b[i*NodeSize:], enc[i*NodeSize:]
			if mapped(r[24:40]) { // canonicalised to sheep's IPv4 form
				copy(r[24:40], e[24:40])
			}
			if mapped(r[42:58]) {
				copy(r[42:58], e[42:58])
			}
			if !bytes.Equal(enc[i*NodeSize+24:i*NodeSize+60], b[i*NodeSize+24:i*NodeSize+60]) ||
				!bytes.Equal(enc[i*NodeSize+64:i*NodeSize+66], b[i*NodeSize+64:i*NodeSize+66]) ||
				!bytes.Equal(enc[i*NodeSize+68:i*NodeSize+80], b[i*NodeSize+68:i*NodeSize+80]) {
				t.Fatalf("node %d fields not preserved", i)
			}
		}
	})
}

func FuzzParseNameTag(f *testing.F) {
	f.Add([]byte(nil), "test", "")
	f.Add(append(PadName("vm"), PadName("snap")...), "vm", "snap")
	f.Add(make([]byte, 300), "a\x00b", string(make([]byte, 300)))
	f.Fuzz(func(t *testing.T, raw []byte, name, tag string) {
		if n, tg, err := ParseNameTag(raw); err != nil {
			if len(raw) == NameLen || len(raw) == NameLen+TagLen || !errors.Is(err, ResInvalidParms) {
				t.Fatalf("%d bytes: %v", len(raw), err)
			}
		} else if len(n) > NameLen || len(tg) > TagLen || bytes.IndexByte([]byte(n), 0) >= 0 {
			t.Fatalf("bad decode %q %q", n, tg)
		}
		// Encoding then decoding yields the name cut at its first NUL and
		// at 255 bytes (the field keeps a terminator).
		want := func(s string) string {
			if i := bytes.IndexByte([]byte(s), 0); i >= 0 {
				s = s[:i]
			}
			return s[:min(len(s), NameLen-1)]
		}
		gn, gt, err := ParseNameTag(append(PadName(name), PadName(tag)...))
		if err != nil || gn != want(name) || gt != want(tag) {
			t.Fatalf("round trip %q %q -> %q %q %v", name, tag, gn, gt, err)
		}
		gn, gt, err = ParseNameTag(PadName(name))
		if err != nil || gn != want(name) || gt != "" {
			t.Fatalf("name only %q -> %q %q %v", name, gn, gt, err)
		}
	})
}

func FuzzParseRedundancy(f *testing.F) {
	for _, s := range []string{"3", "4:2", "16:15", "0", "4:0", " 2 ", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRedundancy(s)
		if err != nil {
			if !errors.Is(err, ResInvalidParms) {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		back, err := FromPolicy(r.NrCopies(), r.Policy())
		if err != nil || back != r {
			t.Fatalf("%q: %+v -> policy %#x -> %+v %v", s, r, r.Policy(), back, err)
		}
		if r2, err := ParseRedundancy(r.String()); err != nil || r2 != r {
			t.Fatalf("%q: String %q reparsed %+v %v", s, r.String(), r2, err)
		}
	})
}
