package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/volume"
	"github.com/gosheep/gosheep/volume/voltest"
)

const (
	testObj  = 64 << 10
	testSize = 4 << 20
)

// fixture: export "disk" (rw, 4 MiB), "ro" (read-only).
func fixture(t *testing.T, cfg Config) (string, *Server, *testExports, *voltest.MemDevice) {
	t.Helper()
	exps := newTestExports()
	disk := newMem(testSize)
	exps.add("disk", "the test disk", false, disk)
	exps.add("ro", "", true, newMem(testSize))
	cfg.Exports = exps
	addr, srv := startServer(t, cfg)
	return addr, srv, exps, disk
}

func TestGreetingAndClientFlags(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	c := dialRaw(t, addr)
	if f := c.greet(cflagFixedNewstyle); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	// Not fixed newstyle: refused.
	c = dialRaw(t, addr)
	c.greet(0)
	c.expectClosed()
	// Unknown client flag: the protocol says drop the connection.
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle | 1<<5)
	c.expectClosed()
}

func TestOptionHeaderErrors(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})

	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.write(make([]byte, 16)) // zero magic
	c.expectClosed()

	// Oversized but skippable unknown option: TOO_BIG, then life goes on.
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	if typ := c.simpleOpt(1000, make([]byte, maxOptionLen+1)); typ != repErrTooBig {
		t.Fatalf("oversized option: %#x", typ)
	}
	if typ := c.simpleOpt(1000, []byte("x")); typ != repErrUnsup {
		t.Fatalf("unknown option: %#x", typ)
	}
	if typ := c.simpleOpt(optPeekExportForTest, nil); typ != repErrUnsup {
		t.Fatalf("PEEK_EXPORT: %#x", typ)
	}

	// Absurd length: the server hangs up instead of reading 4 GiB.
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	c.write(b)
	c.expectClosed()

	// EXPORT_NAME longer than the protocol allows.
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.sendOpt(optExportName, bytes.Repeat([]byte("a"), maxStringLen+1))
	c.expectClosed()
}

const optPeekExportForTest = 4

func TestStartTLSAndStructured(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	if typ := c.simpleOpt(optStartTLS, nil); typ != repErrPolicy {
		t.Fatalf("STARTTLS: %#x", typ)
	}
	if typ := c.simpleOpt(optStartTLS, []byte{1}); typ != repErrInvalid {
		t.Fatalf("STARTTLS with data: %#x", typ)
	}
	if typ := c.simpleOpt(optStructuredReply, []byte{1}); typ != repErrInvalid {
		t.Fatalf("STRUCTURED_REPLY with data: %#x", typ)
	}
	c.structuredReply()
	c.sendOpt(optAbort, []byte("ignored"))
	if r := c.mustOpt(optAbort); r.typ != repAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	c.expectClosed()
}

func TestList(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.sendOpt(optList, nil)
	var got []string
	for {
		r := c.mustOpt(optList)
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("LIST reply %#x", r.typ)
		}
		nl := binary.BigEndian.Uint32(r.data)
		got = append(got, fmt.Sprintf("%s|%s", r.data[4:4+nl], r.data[4+nl:]))
	}
	if want := []string{"disk|the test disk", "ro|"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("LIST = %q, want %q", got, want)
	}
	if typ := c.simpleOpt(optList, []byte{0}); typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x", typ)
	}
}

func TestInfoAndGo(t *testing.T) {
	addr, _, exps, _ := fixture(t, Config{MaxPayload: 1 << 20})
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle | cflagNoZeroes)

	if er := c.infoGo(optInfo, "nope"); er.final != repErrUnknown || len(er.infos) != 0 {
		t.Fatalf("INFO unknown: %#x %v", er.final, er.infos)
	}
	// Default export with two exports: unknown.
	if er := c.infoGo(optInfo, ""); er.final != repErrUnknown {
		t.Fatalf("INFO default with 2 exports: %#x", er.final)
	}
	er := c.infoGo(optInfo, "disk", infoName, infoDescription, infoBlockSize, 999)
	if er.final != repAck || er.size != testSize {
		t.Fatalf("INFO disk: %+v", er)
	}
	want := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes |
		tflagSendFastZero | tflagCanMultiConn | tflagSendCache)
	if er.flags != want {
		t.Fatalf("flags %#x, want %#x (no DF without structured replies)", er.flags, want)
	}
	if string(er.infos[infoName]) != "disk" || string(er.infos[infoDescription]) != "the test disk" {
		t.Fatalf("name/description %q %q", er.infos[infoName], er.infos[infoDescription])
	}
	bs := er.infos[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 ||
		binary.BigEndian.Uint32(bs[8:]) != 1<<20 {
		t.Fatalf("block size % x", bs)
	}

	er = c.infoGo(optInfo, "ro")
	if er.final != repAck || er.flags&tflagReadOnly == 0 || er.flags&(tflagSendTrim|tflagSendWriteZeroes|tflagSendFUA) != 0 {
		t.Fatalf("INFO ro flags %#x", er.flags)
	}

	// Malformed: name length beyond the option, request count mismatch.
	c.sendOpt(optInfo, []byte{0, 0, 1, 0, 0, 0})
	if r := c.mustOpt(optInfo); r.typ != repErrInvalid {
		t.Fatalf("bad name length: %#x", r.typ)
	}
	bad := infoData("disk", infoName)
	c.sendOpt(optGo, bad[:len(bad)-1])
	if r := c.mustOpt(optGo); r.typ != repErrInvalid {
		t.Fatalf("bad request count: %#x", r.typ)
	}

	c.structuredReply()
	er = c.infoGo(optGo, "disk")
	if er.final != repAck || er.flags&tflagSendDF == 0 {
		t.Fatalf("GO: %+v", er)
	}
	// Transmission works.
	if res := c.do(0, cmdRead, 0, 512, nil); res.errno != 0 || !bytes.Equal(res.data, make([]byte, 512)) {
		t.Fatalf("read after GO: %+v", res)
	}

	// With a single export, "" is that export and NBD_INFO_NAME names it.
	exps.remove("ro")
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	er = c.infoGo(optGo, "")
	if er.final != repAck || string(er.infos[infoName]) != "disk" {
		t.Fatalf("GO default: %#x %q", er.final, er.infos[infoName])
	}
}

func TestExportName(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	for _, nz := range []bool{false, true} {
		c := dialRaw(t, addr)
		cf := uint32(cflagFixedNewstyle)
		if nz {
			cf |= cflagNoZeroes
		}
		c.greet(cf)
		c.sendOpt(optExportName, []byte("disk"))
		want := 10
		if !nz {
			want += 124
		}
		b := make([]byte, want)
		if _, err := io.ReadFull(c.br, b); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint64(b) != testSize || binary.BigEndian.Uint16(b[8:])&tflagHasFlags == 0 {
			t.Fatalf("EXPORT_NAME reply % x", b[:10])
		}
		if !bytes.Equal(b[10:], make([]byte, want-10)) {
			t.Fatal("padding not zero")
		}
		if res := c.do(0, cmdFlush, 0, 0, nil); res.errno != 0 {
			t.Fatalf("flush: %d", res.errno)
		}
	}
	// Unknown export: EXPORT_NAME cannot fail politely, so the server hangs up.
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.sendOpt(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestMetaContextNegotiation(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	if _, typ := c.metaOpt(optSetMetaContext, "disk", contextAllocName); typ != repErrInvalid {
		t.Fatalf("SET before structured: %#x", typ)
	}
	c.structuredReply()
	ids, typ := c.metaOpt(optListMetaContext, "disk")
	if typ != repAck || len(ids) != 1 || ids[0] != contextAllocName {
		t.Fatalf("LIST all: %v %#x", ids, typ)
	}
	ids, typ = c.metaOpt(optListMetaContext, "disk", "base:", "qemu:dirty-bitmap:x")
	if typ != repAck || len(ids) != 1 || ids[0] != contextAllocName {
		t.Fatalf("LIST base:: %v %#x", ids, typ)
	}
	ids, typ = c.metaOpt(optListMetaContext, "disk", "x-foo:bar")
	if typ != repAck || len(ids) != 0 {
		t.Fatalf("LIST unknown namespace: %v %#x", ids, typ)
	}
	// Unknown contexts and "base:" select nothing.
	ids, typ = c.metaOpt(optSetMetaContext, "disk", "base:", "base:nope", "qemu:allocation-depth")
	if typ != repAck || len(ids) != 0 {
		t.Fatalf("SET unknown: %v %#x", ids, typ)
	}
	ids, typ = c.metaOpt(optSetMetaContext, "disk", "qemu:allocation-depth", contextAllocName)
	if typ != repAck || len(ids) != 1 || ids[contextAllocID] != contextAllocName {
		t.Fatalf("SET: %v %#x", ids, typ)
	}
	// A query length running past the option is invalid.
	bad := metaData("disk", contextAllocName)
	c.sendOpt(optSetMetaContext, bad[:len(bad)-1])
	if r := c.mustOpt(optSetMetaContext); r.typ != repErrInvalid {
		t.Fatalf("truncated query: %#x", r.typ)
	}
	// ...and it dropped the selection, so BLOCK_STATUS is refused.
	if er := c.infoGo(optGo, "disk"); er.final != repAck {
		t.Fatal(er.msg)
	}
	if res := c.do(0, cmdBlockStatus, 0, 4096, nil); res.errno != errInval {
		t.Fatalf("BLOCK_STATUS without context: %d", res.errno)
	}

	// Contexts selected for one export do not carry over to another.
	c = dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.structuredReply()
	c.metaOpt(optSetMetaContext, "ro", contextAllocName)
	if er := c.infoGo(optGo, "disk"); er.final != repAck {
		t.Fatal(er.msg)
	}
	if res := c.do(0, cmdBlockStatus, 0, 4096, nil); res.errno != errInval {
		t.Fatalf("BLOCK_STATUS with context of another export: %d", res.errno)
	}
}

func TestReadWriteSimple(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	c := dialRaw(t, addr)
	c.open("disk", false, false)
	data := bytes.Repeat([]byte{0xab, 0xcd, 0xef}, 3000)
	if res := c.do(0, cmdWrite, 1000, uint32(len(data)), data); res.errno != 0 || !res.chunks[0].simple {
		t.Fatalf("write: %+v", res)
	}
	res := c.do(0, cmdRead, 1000, uint32(len(data)), nil)
	if res.errno != 0 || !bytes.Equal(res.data, data) {
		t.Fatal("read back differs")
	}
	got := make([]byte, len(data))
	disk.ReadAt(context.Background(), got, 1000)
	if !bytes.Equal(got, data) {
		t.Fatal("device content differs")
	}
	// Errors, and the connection survives each.
	cases := []struct {
		name       string
		flags, typ uint16
		off        uint64
		n          uint32
		payload    []byte
		want       uint32
	}{
		{"read beyond end", 0, cmdRead, testSize - 512, 1024, nil, errInval},
		{"read offset overflow", 0, cmdRead, ^uint64(0) - 10, 512, nil, errInval},
		{"write beyond end", 0, cmdWrite, testSize, 512, make([]byte, 512), errNoSpc},
		{"trim beyond end", 0, cmdTrim, testSize, 512, nil, errInval},
		{"write zeroes beyond end", 0, cmdWriteZeroes, testSize - 1, 2, nil, errNoSpc},
		{"unknown command", 0, 42, 0, 0, nil, errInval},
		{"unknown flag", 1 << 9, cmdRead, 0, 512, nil, errInval},
		{"DF without structured", cmdFlagDF, cmdRead, 0, 512, nil, errInval},
		{"NO_HOLE on write", cmdFlagNoHole, cmdWrite, 0, 4, []byte{1, 2, 3, 4}, errInval},
		{"REQ_ONE on read", cmdFlagReqOne, cmdRead, 0, 512, nil, errInval},
		{"block status without structured", 0, cmdBlockStatus, 0, 512, nil, errInval},
		{"read too large", 0, cmdRead, 0, 33 << 20, nil, errOverflow},
	}
	for _, tc := range cases {
		if res := c.do(tc.flags, tc.typ, tc.off, tc.n, tc.payload); res.errno != tc.want {
			t.Errorf("%s: errno %d, want %d", tc.name, res.errno, tc.want)
		}
	}
	// The rejected write's payload was consumed: the stream is in sync
	// and nothing was written.
	if res := c.do(0, cmdRead, 0, 4, nil); res.errno != 0 || !bytes.Equal(res.data, make([]byte, 4)) {
		t.Fatalf("after errors: %+v", res)
	}
	if res := c.do(cmdFlagFUA, cmdCache, 0, 4096, nil); res.errno != 0 {
		t.Fatalf("cache: %d", res.errno)
	}
	if res := c.do(0, cmdCache, testSize, 4096, nil); res.errno != errInval {
		t.Fatalf("cache beyond end: %d", res.errno)
	}
	flushes := disk.Flushes()
	if res := c.do(0, cmdFlush, 0, 0, nil); res.errno != 0 || disk.Flushes() != flushes+1 {
		t.Fatalf("flush: %d, flushes %d->%d", res.errno, flushes, disk.Flushes())
	}
	// Zero-length requests are harmless.
	if res := c.do(0, cmdRead, 0, 0, nil); res.errno != 0 {
		t.Fatalf("zero read: %d", res.errno)
	}
	c.send(0, cmdDisc, 1, 0, 0, nil)
	c.expectClosed()
}

func TestReadOnly(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{})
	c := dialRaw(t, addr)
	c.open("ro", true, false)
	for _, tc := range []struct {
		typ     uint16
		n       uint32
		payload []byte
	}{{cmdWrite, 512, make([]byte, 512)}, {cmdTrim, 512, nil}, {cmdWriteZeroes, 512, nil}} {
		if res := c.do(0, tc.typ, 0, tc.n, tc.payload); res.errno != errPerm {
			t.Errorf("%s on read-only: errno %d, want EPERM", cmdName(tc.typ), res.errno)
		}
	}
	if res := c.do(0, cmdRead, 0, 512, nil); res.errno != 0 {
		t.Fatalf("read: %d", res.errno)
	}
	if res := c.do(0, cmdFlush, 0, 0, nil); res.errno != 0 {
		t.Fatalf("flush: %d", res.errno)
	}
}

func TestOversizedWrite(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{MaxPayload: 64 << 10})
	c := dialRaw(t, addr)
	c.open("disk", false, false)
	big := make([]byte, 1<<20)
	if res := c.do(0, cmdWrite, 0, uint32(len(big)), big); res.errno != errOverflow {
		t.Fatalf("write over MaxPayload: %d", res.errno)
	}
	if res := c.do(0, cmdRead, 0, 128<<10, nil); res.errno != errOverflow {
		t.Fatalf("read over MaxPayload: %d", res.errno)
	}
	if res := c.do(0, cmdRead, 0, 64<<10, nil); res.errno != 0 {
		t.Fatalf("read at MaxPayload: %d", res.errno)
	}
	// Beyond what is reasonable to drain: hang up without reading it.
	c.send(0, cmdWrite, 7, 0, drainLimit+1, nil)
	c.expectClosed()

	// Bad magic in transmission: hang up.
	c = dialRaw(t, addr)
	c.open("disk", true, false)
	c.write(make([]byte, requestSize))
	c.expectClosed()
}

func TestStructuredRead(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	ctx := context.Background()
	// Objects 1 and 3 hold data; 0, 2 are holes.
	pat := bytes.Repeat([]byte{0x5a}, testObj)
	disk.WriteAt(ctx, pat, 1*testObj, false)
	disk.WriteAt(ctx, pat, 3*testObj, false)

	c := dialRaw(t, addr)
	c.open("disk", true, true)
	res := c.do(0, cmdRead, 0, 4*testObj, nil)
	want := make([]byte, 4*testObj)
	copy(want[testObj:], pat)
	copy(want[3*testObj:], pat)
	if res.errno != 0 || !bytes.Equal(res.data, want) {
		t.Fatalf("structured read: errno %d, equal %v", res.errno, bytes.Equal(res.data, want))
	}
	var kinds []uint16
	for _, m := range res.chunks {
		kinds = append(kinds, m.typ)
	}
	if fmt.Sprint(kinds) != fmt.Sprint([]uint16{replyTypeOffsetHole, replyTypeOffsetData, replyTypeOffsetHole, replyTypeOffsetData}) {
		t.Fatalf("chunk types %v", kinds)
	}
	if last := res.chunks[len(res.chunks)-1]; last.flags&replyFlagDone == 0 {
		t.Fatal("last chunk not DONE")
	}
	// DF: exactly one content chunk, zeros included.
	res = c.do(cmdFlagDF, cmdRead, 0, 4*testObj, nil)
	if res.errno != 0 || len(res.chunks) != 1 || res.chunks[0].typ != replyTypeOffsetData || !bytes.Equal(res.data, want) {
		t.Fatalf("DF read: %d chunks", len(res.chunks))
	}
	// Unaligned read inside a data object, and one spanning hole->data.
	res = c.do(0, cmdRead, testObj-100, 300, nil)
	if res.errno != 0 || !bytes.Equal(res.data, want[testObj-100:testObj+200]) {
		t.Fatal("unaligned read differs")
	}
	// Errors are structured with a message, also for READ.
	res = c.do(0, cmdRead, testSize, 512, nil)
	if res.errno != errInval || res.chunks[0].typ != replyTypeError || len(res.chunks[0].payload) <= 6 {
		t.Fatalf("structured error: %+v", res.chunks)
	}
	// Success of other commands may be a simple reply.
	if res := c.do(0, cmdFlush, 0, 0, nil); res.errno != 0 {
		t.Fatal(res.errno)
	}
}

func TestDeviceErrors(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	failWith := func(err error) {
		disk.Fail = func(op string, off, n uint64) error {
			if op == "read" || op == "write" || op == "flush" {
				return err
			}
			return nil
		}
	}
	// Data to read, so structured reads do call ReadAt.
	disk.WriteAt(context.Background(), make([]byte, testObj), 0, false)
	for _, structured := range []bool{false, true} {
		c := dialRaw(t, addr)
		c.open("disk", structured, false)
		for _, tc := range []struct {
			err  error
			want uint32
		}{
			{errors.New("disk on fire"), errIO},
			{fmt.Errorf("alloc: %w", proto.ResNoSpace), errNoSpc},
			{fmt.Errorf("x: %w", proto.NewError(proto.ResNoSpace, "cluster full")), errNoSpc},
			{volume.ErrReadOnly, errPerm},
			{volume.ErrOutOfRange, errInval},
		} {
			failWith(tc.err)
			if res := c.do(0, cmdWrite, 0, 4, []byte{1, 2, 3, 4}); res.errno != tc.want {
				t.Errorf("structured=%v write error %v: errno %d, want %d", structured, tc.err, res.errno, tc.want)
			}
			if res := c.do(0, cmdRead, 0, 4096, nil); res.errno != tc.want || (res.chunks[0].simple && len(res.chunks[0].payload) != 0) {
				t.Errorf("structured=%v read error %v: errno %d, want %d", structured, tc.err, res.errno, tc.want)
			}
			if res := c.do(0, cmdFlush, 0, 0, nil); res.errno != tc.want {
				t.Errorf("flush error: %d", res.errno)
			}
		}
		disk.Fail = nil
		// Still in sync.
		if res := c.do(0, cmdRead, 0, 4096, nil); res.errno != 0 {
			t.Fatalf("after errors: %d", res.errno)
		}
	}
}

// fuaDev records the fua flag of writes and counts flushes.
type fuaDev struct {
	*voltest.MemDevice
	fuaWrites atomic.Int32
}

func (d *fuaDev) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if fua {
		d.fuaWrites.Add(1)
	}
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

func TestFUA(t *testing.T) {
	exps := newTestExports()
	dev := &fuaDev{MemDevice: newMem(testSize)}
	exps.add("d", "", false, dev)
	addr, _ := startServer(t, Config{Exports: exps})
	c := dialRaw(t, addr)
	c.open("d", true, false)
	c.do(0, cmdWrite, 0, 4, []byte{1, 2, 3, 4})
	if dev.fuaWrites.Load() != 0 {
		t.Fatal("write without FUA passed fua=true")
	}
	c.do(cmdFlagFUA, cmdWrite, 0, 4, []byte{1, 2, 3, 4})
	if dev.fuaWrites.Load() != 1 {
		t.Fatal("FUA write did not pass fua=true")
	}
	f := dev.Flushes()
	if res := c.do(cmdFlagFUA, cmdTrim, 0, testObj, nil); res.errno != 0 || dev.Flushes() != f+1 {
		t.Fatalf("FUA trim: %d, flushes %d", res.errno, dev.Flushes()-f)
	}
}

func TestWriteZeroesAndTrim(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	ctx := context.Background()
	c := dialRaw(t, addr)
	c.open("disk", true, true)
	ones := bytes.Repeat([]byte{1}, 4*testObj)
	fill := func() {
		t.Helper()
		if res := c.do(0, cmdWrite, 0, uint32(len(ones)), ones); res.errno != 0 {
			t.Fatal(res.errno)
		}
	}
	zeroAt := func(off, n uint64) bool {
		b := make([]byte, n)
		disk.ReadAt(ctx, b, off)
		return bytes.Equal(b, make([]byte, n))
	}

	fill()
	// Plain write zeroes of a whole object frees it.
	if res := c.do(0, cmdWriteZeroes, testObj, testObj, nil); res.errno != 0 {
		t.Fatal(res.errno)
	}
	if disk.AllocatedObjects() != 3 || !zeroAt(testObj, testObj) {
		t.Fatalf("write zeroes: %d objects", disk.AllocatedObjects())
	}
	// NO_HOLE keeps it provisioned.
	fill()
	if res := c.do(cmdFlagNoHole|cmdFlagFUA, cmdWriteZeroes, testObj, testObj, nil); res.errno != 0 {
		t.Fatal(res.errno)
	}
	if disk.AllocatedObjects() != 4 || !zeroAt(testObj, testObj) {
		t.Fatalf("NO_HOLE: %d objects, zero %v", disk.AllocatedObjects(), zeroAt(testObj, testObj))
	}
	// FAST_ZERO: refused where a partial allocated object would need
	// writing, and the data is untouched.
	fill()
	if res := c.do(cmdFlagFastZero, cmdWriteZeroes, 100, testObj, nil); res.errno != errNotSup {
		t.Fatalf("FAST_ZERO partial: %d", res.errno)
	}
	if zeroAt(100, 1) {
		t.Fatal("refused FAST_ZERO changed data")
	}
	if res := c.do(cmdFlagFastZero|cmdFlagNoHole, cmdWriteZeroes, 0, testObj, nil); res.errno != errNotSup {
		t.Fatalf("FAST_ZERO|NO_HOLE: %d", res.errno)
	}
	// Aligned, or partial over holes: fast, and done.
	if res := c.do(cmdFlagFastZero, cmdWriteZeroes, 0, 2*testObj, nil); res.errno != 0 || !zeroAt(0, 2*testObj) {
		t.Fatalf("FAST_ZERO aligned: %d", res.errno)
	}
	if res := c.do(cmdFlagFastZero, cmdWriteZeroes, 100, testObj, nil); res.errno != 0 {
		t.Fatalf("FAST_ZERO over holes: %d", res.errno)
	}
	// Trim of a whole object frees it.
	fill()
	if res := c.do(0, cmdTrim, 2*testObj, testObj, nil); res.errno != 0 || disk.AllocatedObjects() != 3 {
		t.Fatalf("trim: %d, %d objects", res.errno, disk.AllocatedObjects())
	}
}

func blockStatus(t *testing.T, res result) [][2]uint32 {
	t.Helper()
	if res.errno != 0 || len(res.chunks) != 1 || res.chunks[0].typ != replyTypeBlockStatus {
		t.Fatalf("block status reply: errno %d, %d chunks", res.errno, len(res.chunks))
	}
	p := res.chunks[0].payload
	if binary.BigEndian.Uint32(p) != contextAllocID || (len(p)-4)%8 != 0 || len(p) < 12 {
		t.Fatalf("bad block status payload % x", p)
	}
	var out [][2]uint32
	for i := 4; i < len(p); i += 8 {
		out = append(out, [2]uint32{binary.BigEndian.Uint32(p[i:]), binary.BigEndian.Uint32(p[i+4:])})
	}
	return out
}

func TestBlockStatus(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	disk.WriteAt(context.Background(), []byte{1}, 2*testObj+5, false)
	c := dialRaw(t, addr)
	c.open("disk", true, true)
	got := blockStatus(t, c.do(0, cmdBlockStatus, 0, testSize, nil))
	want := [][2]uint32{{2 * testObj, stateHole | stateZero}, {testObj, 0}, {testSize - 3*testObj, stateHole | stateZero}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("block status %v, want %v", got, want)
	}
	got = blockStatus(t, c.do(cmdFlagReqOne, cmdBlockStatus, testObj, testSize-testObj, nil))
	if fmt.Sprint(got) != fmt.Sprint([][2]uint32{{testObj, stateHole | stateZero}}) {
		t.Fatalf("REQ_ONE: %v", got)
	}
	got = blockStatus(t, c.do(0, cmdBlockStatus, 2*testObj+10, 100, nil))
	if fmt.Sprint(got) != fmt.Sprint([][2]uint32{{100, 0}}) {
		t.Fatalf("unaligned: %v", got)
	}
	if res := c.do(0, cmdBlockStatus, testSize-512, 1024, nil); res.errno != errInval {
		t.Fatalf("beyond end: %d", res.errno)
	}
}

// gate blocks device reads at chosen offsets until released.
type gate struct {
	mu      sync.Mutex
	blocked map[uint64]chan struct{}
	started chan uint64
	running atomic.Int32
	peak    atomic.Int32
}

func newGate(offs ...uint64) *gate {
	g := &gate{blocked: map[uint64]chan struct{}{}, started: make(chan uint64, 100)}
	for _, o := range offs {
		g.blocked[o] = make(chan struct{})
	}
	return g
}

func (g *gate) hook(op string, off, n uint64) error {
	if op != "read" && op != "write" {
		return nil
	}
	r := g.running.Add(1)
	defer g.running.Add(-1)
	for {
		p := g.peak.Load()
		if r <= p || g.peak.CompareAndSwap(p, r) {
			break
		}
	}
	g.started <- off
	g.mu.Lock()
	ch := g.blocked[off]
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return nil
}

func (g *gate) release(off uint64) { close(g.blocked[off]) }

func TestOutOfOrderReplies(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	g := newGate(0)
	disk.Fail = g.hook
	c := dialRaw(t, addr)
	c.open("disk", true, false)
	c.send(cmdFlagDF, cmdRead, 1, 0, 4096, nil)
	if off := <-g.started; off != 0 {
		t.Fatalf("started %d", off)
	}
	c.send(cmdFlagDF, cmdRead, 2, 8192, 4096, nil)
	// Request 2 completes while 1 is still blocked.
	if m := c.mustMsg(); m.cookie != 2 {
		t.Fatalf("first reply for cookie %d, want 2", m.cookie)
	}
	g.release(0)
	if m := c.mustMsg(); m.cookie != 1 || m.errno != 0 {
		t.Fatalf("second reply %+v", m)
	}
}

func TestMaxInflight(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{MaxInflight: 2})
	g := newGate(0, 4096)
	disk.Fail = g.hook
	c := dialRaw(t, addr)
	c.open("disk", false, false)
	for i := range 3 {
		c.send(0, cmdRead, uint64(i), uint64(i)*4096, 512, nil)
	}
	<-g.started
	<-g.started
	select {
	case off := <-g.started:
		t.Fatalf("third request (off %d) started beyond MaxInflight=2", off)
	case <-time.After(200 * time.Millisecond):
	}
	g.release(0)
	if off := <-g.started; off != 8192 {
		t.Fatalf("third request started at %d", off)
	}
	g.release(4096)
	pending := map[uint64][]msg{}
	for i := range 3 {
		if res := c.collect(uint64(i), uint64(i)*4096, 512, pending); res.errno != 0 {
			t.Fatal(res.errno)
		}
	}
	if p := g.peak.Load(); p != 2 {
		t.Fatalf("peak concurrency %d, want 2", p)
	}
}

func TestDiscWaitsForInflight(t *testing.T) {
	addr, _, _, disk := fixture(t, Config{})
	g := newGate(0)
	disk.Fail = g.hook
	c := dialRaw(t, addr)
	c.open("disk", true, false)
	c.send(0, cmdWrite, 9, 0, 4, []byte{9, 9, 9, 9})
	<-g.started
	c.send(0, cmdDisc, 10, 0, 0, nil)
	time.Sleep(50 * time.Millisecond) // let the server see DISC first
	g.release(0)
	if m := c.mustMsg(); m.cookie != 9 || m.errno != 0 {
		t.Fatalf("reply to write before DISC: %+v", m)
	}
	c.expectClosed()
	b := make([]byte, 4)
	disk.Fail = nil
	disk.ReadAt(context.Background(), b, 0)
	if !bytes.Equal(b, []byte{9, 9, 9, 9}) {
		t.Fatal("write before DISC lost")
	}
}

func TestDropAndClose(t *testing.T) {
	exps := newTestExports()
	exps.add("a", "", false, newMem(testSize))
	exps.add("b", "", false, newMem(testSize))
	ln, srvAddr := listen(t)
	s := New(Config{Exports: exps})
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), ln) }()

	ca := dialRaw(t, srvAddr)
	ca.open("a", true, false)
	cb := dialRaw(t, srvAddr)
	cb.open("b", true, false)
	if n := s.Drop("a"); n != 1 {
		t.Fatalf("Drop dropped %d", n)
	}
	ca.expectClosed()
	if res := cb.do(0, cmdRead, 0, 512, nil); res.errno != 0 {
		t.Fatal("other export affected by Drop")
	}
	// Once the export is gone, opening it fails.
	exps.remove("a")
	c := dialRaw(t, srvAddr)
	c.greet(cflagFixedNewstyle)
	if er := c.infoGo(optGo, "a"); er.final != repErrUnknown {
		t.Fatalf("GO deleted export: %#x", er.final)
	}

	s.Close()
	cb.expectClosed()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if err := s.Serve(context.Background(), ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve on closed server: %v", err)
	}
}

func TestServeContextCancel(t *testing.T) {
	exps := newTestExports()
	exps.add("a", "", false, newMem(testSize))
	ln, addr := listen(t)
	s := New(Config{Exports: exps})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	c := dialRaw(t, addr)
	c.open("a", false, false)
	cancel()
	c.expectClosed()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	addr, _, _, _ := fixture(t, Config{HandshakeTimeout: 100 * time.Millisecond})
	c := dialRaw(t, addr)
	c.greet(cflagFixedNewstyle)
	c.expectClosed() // we never send an option
}

func TestPanicRecovery(t *testing.T) {
	addr, srv, _, disk := fixture(t, Config{})
	disk.Fail = func(op string, off, n uint64) error {
		if op == "read" && off == 4096 {
			panic("injected")
		}
		return nil
	}
	c := dialRaw(t, addr)
	c.open("disk", true, false)
	c.send(cmdFlagDF, cmdRead, 1, 4096, 512, nil) // DF: holes are read too
	c.expectClosed()
	if srv.Panics() != 1 {
		t.Fatalf("Panics() = %d", srv.Panics())
	}
	c = dialRaw(t, addr)
	c.open("disk", true, false)
	if res := c.do(0, cmdRead, 0, 512, nil); res.errno != 0 {
		t.Fatal("server unusable after a panic")
	}
}

type countingRecorder struct {
	mu       sync.Mutex
	ops      map[string]int
	bytes    int
	sessions int
	errs     int
}

func (r *countingRecorder) Request(frontend, op string, n int, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if frontend != "nbd" {
		panic(frontend)
	}
	r.ops[op]++
	r.bytes += n
	if err != nil {
		r.errs++
	}
}

func (r *countingRecorder) Sessions(frontend string, d int) {
	r.mu.Lock()
	r.sessions += d
	r.mu.Unlock()
}

func TestMetrics(t *testing.T) {
	rec := &countingRecorder{ops: map[string]int{}}
	addr, _, _, _ := fixture(t, Config{Recorder: rec})
	c := dialRaw(t, addr)
	c.open("disk", true, false)
	c.do(0, cmdWrite, 0, 100, make([]byte, 100))
	c.do(0, cmdRead, 0, 50, nil)
	c.do(0, cmdRead, testSize, 50, nil)
	c.send(0, cmdDisc, 0, 0, 0, nil)
	c.expectClosed()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec.mu.Lock()
		s := rec.sessions
		rec.mu.Unlock()
		if s == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.ops["write"] != 1 || rec.ops["read"] != 2 || rec.ops["disc"] != 1 || rec.bytes != 150 || rec.errs != 1 || rec.sessions != 0 {
		t.Fatalf("recorded %+v", rec)
	}
}
