package proto

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestNodeGolden(t *testing.T) {
	golden := unhex(t, `
		000000000000000000000000 000000000000000000000000
		000000000000000000000000 c0a8010a | 581b
		20010db8000000000000000000000001 | 591b | 00000000 | 8000 | 0000
		c0a8010a | 0000000019000000`)
	if len(golden) != NodeSize {
		t.Fatalf("golden is %d bytes", len(golden))
	}
	n := Node{
		Addr: netip.MustParseAddr("192.168.1.10"), Port: 7000,
		IOAddr: netip.MustParseAddr("2001:db8::1"), IOPort: 7001,
		Vnodes: 128, Zone: 0x0a01a8c0, Space: 100 << 30,
	}
	diffBytes(t, "marshal", n.Marshal(), golden)
	if DefaultZone(n.Addr) != n.Zone {
		t.Fatalf("DefaultZone %#x", DefaultZone(n.Addr))
	}
	diffBytes(t, "IDBytes", n.IDBytes(), golden[24:42])

	// rb_node garbage (0..23) and padding must be ignored on decode.
	dirty := bytes.Clone(golden)
	for _, i := range []int{0, 7, 23, 60, 63, 66, 67} {
		dirty[i] = 0xa5
	}
	var got Node
	if err := got.Unmarshal(dirty); err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("got %+v", got)
	}
	if got.AddrPort().String() != "192.168.1.10:7000" {
		t.Fatal(got.AddrPort())
	}
	if err := got.Unmarshal(golden[:79]); !errors.Is(err, ResInvalidParms) {
		t.Fatalf("short: %v", err)
	}
}

func TestNodeAddresses(t *testing.T) {
	cases := []struct {
		in       netip.Addr
		wire     string // bytes 24..39
		roundTip netip.Addr
	}{
		{netip.MustParseAddr("127.0.0.1"), "000000000000000000000000 7f000001", netip.MustParseAddr("127.0.0.1")},
		// An IPv4-mapped address is still IPv4 to sheep: 12 zero bytes, not ::ffff.
		{netip.MustParseAddr("::ffff:10.0.0.2"), "000000000000000000000000 0a000002", netip.MustParseAddr("10.0.0.2")},
		{netip.MustParseAddr("fe80::1"), "fe800000000000000000000000000001", netip.MustParseAddr("fe80::1")},
		// Unset (sheep's io_addr without -i): all zero, and back to unset.
		{netip.Addr{}, "00000000000000000000000000000000", netip.Addr{}},
	}
	for _, c := range cases {
		n := Node{Addr: c.in, Port: 1, IOAddr: c.in}
		b := n.Marshal()
		diffBytes(t, c.in.String()+" addr", b[24:40], unhex(t, c.wire))
		diffBytes(t, c.in.String()+" io_addr", b[42:58], unhex(t, c.wire))
		var got Node
		if err := got.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		if got.Addr != c.roundTip || got.IOAddr != c.roundTip {
			t.Errorf("%v decoded as %v / %v", c.in, got.Addr, got.IOAddr)
		}
	}
}

func TestNodeList(t *testing.T) {
	ns := []Node{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 7000, Vnodes: 128, Zone: 1, Space: 1 << 30},
		{Addr: netip.MustParseAddr("127.0.0.2"), Port: 7000, Vnodes: 64, Zone: 2, Space: 2 << 30},
	}
	b := MarshalNodes(ns)
	if len(b) != 2*NodeSize || b[NodeSize+39] != 2 || b[NodeSize+64] != 64 {
		t.Fatalf("list layout: %d bytes", len(b))
	}
	got, err := UnmarshalNodes(b)
	if err != nil || len(got) != 2 || got[0] != ns[0] || got[1] != ns[1] {
		t.Fatalf("%+v %v", got, err)
	}
	if got, err := UnmarshalNodes(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %v %v", got, err)
	}
	for _, n := range []int{1, 79, 81, 159} {
		if _, err := UnmarshalNodes(make([]byte, n)); !errors.Is(err, ResInvalidParms) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

func TestNodeDecodesMappedAsIPv4(t *testing.T) {
	b := make([]byte, NodeSize)
	copy(b[24:40], unhex(t, "00000000000000000000ffff 0a000002"))
	var n Node
	if err := n.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if n.Addr != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("decoded %v", n.Addr)
	}
	diffBytes(t, "re-encoded", n.Marshal()[24:40], unhex(t, "000000000000000000000000 0a000002"))
}
