package nbd

// A minimal NBD client written for the tests, to produce the edge cases
// real clients never send. It follows doc/proto.md independently of the
// server code (its own constants would be identical, so it reuses them).

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume"
	"github.com/gosheep/gosheep/volume/voltest"
)

// testExports is an in-memory catalog.
type testExports struct {
	mu    sync.Mutex
	m     map[string]testExport
	order []string
	opens int
}

type testExport struct {
	dev  volume.Device
	info ExportInfo
}

func newTestExports() *testExports { return &testExports{m: map[string]testExport{}} }

func (e *testExports) add(name, desc string, ro bool, dev volume.Device) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m[name]; !ok {
		e.order = append(e.order, name)
	}
	e.m[name] = testExport{dev: dev, info: ExportInfo{Name: name, Description: desc, ReadOnly: ro}}
}

func (e *testExports) remove(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.m, name)
	for i, n := range e.order {
		if n == name {
			e.order = append(e.order[:i], e.order[i+1:]...)
			break
		}
	}
}

func (e *testExports) List(ctx context.Context) ([]ExportInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []ExportInfo
	for _, n := range e.order {
		out = append(out, e.m[n].info)
	}
	return out, nil
}

func (e *testExports) Open(ctx context.Context, name string) (volume.Device, ExportInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x, ok := e.m[name]
	if !ok {
		return nil, ExportInfo{}, fmt.Errorf("open %q: %w", name, volume.ErrNoVolume)
	}
	e.opens++
	return x.dev, x.info, nil
}

func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln, ln.Addr().String()
}

// startServer serves exps on 127.0.0.1 and returns the address.
func startServer(t testing.TB, cfg Config) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), s
}

type tclient struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	mu         sync.Mutex
	simpleLen  map[uint64]uint32 // cookie -> READ length, for simple replies
}

func dialRaw(t testing.TB, addr string) *tclient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &tclient{t: t, nc: nc, br: bufio.NewReader(nc), simpleLen: map[uint64]uint32{}}
}

// greet reads the server greeting and answers with client flags.
func (c *tclient) greet(cflags uint32) uint16 {
	c.t.Helper()
	var b [18]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		c.t.Fatalf("greeting: %v", err)
	}
	if binary.BigEndian.Uint64(b[0:]) != magicNBD || binary.BigEndian.Uint64(b[8:]) != magicIHaveOpt {
		c.t.Fatalf("bad greeting % x", b)
	}
	c.write(binary.BigEndian.AppendUint32(nil, cflags))
	return binary.BigEndian.Uint16(b[16:])
}

func (c *tclient) write(b []byte) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *tclient) sendOpt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *tclient) readOpt() (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != magicOptReply {
		return optReply{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		return optReply{}, fmt.Errorf("option reply of %d bytes", n)
	}
	r.data = make([]byte, n)
	_, err := io.ReadFull(c.br, r.data)
	return r, err
}

func (c *tclient) mustOpt(opt uint32) optReply {
	c.t.Helper()
	r, err := c.readOpt()
	if err != nil {
		c.t.Fatalf("option reply: %v", err)
	}
	if r.opt != opt {
		c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
	}
	return r
}

// simpleOpt sends an option and returns the single reply type.
func (c *tclient) simpleOpt(opt uint32, data []byte) uint32 {
	c.t.Helper()
	c.sendOpt(opt, data)
	return c.mustOpt(opt).typ
}

func (c *tclient) structuredReply() {
	c.t.Helper()
	if typ := c.simpleOpt(optStructuredReply, nil); typ != repAck {
		c.t.Fatalf("STRUCTURED_REPLY: %#x", typ)
	}
	c.structured = true
}

func metaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaOpt sends LIST/SET_META_CONTEXT and returns id->name and the final type.
func (c *tclient) metaOpt(opt uint32, export string, queries ...string) (map[uint32]string, uint32) {
	c.t.Helper()
	c.sendOpt(opt, metaData(export, queries...))
	got := map[uint32]string{}
	for {
		r := c.mustOpt(opt)
		if r.typ != repMetaContext {
			return got, r.typ
		}
		if len(r.data) < 4 {
			c.t.Fatalf("short META_CONTEXT reply")
		}
		got[binary.BigEndian.Uint32(r.data)] = string(r.data[4:])
	}
}

func infoData(name string, reqs ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint16(b, r)
	}
	return b
}

type exportReply struct {
	size  uint64
	flags uint16
	infos map[uint16][]byte
	final uint32 // repAck or an error type
	msg   string
}

// infoGo sends NBD_OPT_INFO or NBD_OPT_GO.
func (c *tclient) infoGo(opt uint32, name string, reqs ...uint16) exportReply {
	c.t.Helper()
	c.sendOpt(opt, infoData(name, reqs...))
	er := exportReply{infos: map[uint16][]byte{}}
	for {
		r := c.mustOpt(opt)
		if r.typ != repInfo {
			er.final = r.typ
			er.msg = string(r.data)
			return er
		}
		if len(r.data) < 2 {
			c.t.Fatalf("short NBD_REP_INFO")
		}
		it := binary.BigEndian.Uint16(r.data)
		if _, dup := er.infos[it]; dup {
			c.t.Errorf("info %d sent twice", it)
		}
		er.infos[it] = r.data[2:]
		if it == infoExport {
			if len(r.data) != 12 {
				c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			er.size = binary.BigEndian.Uint64(r.data[2:])
			er.flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
}

// open runs a typical modern negotiation and enters transmission.
func (c *tclient) open(name string, structured, meta bool) exportReply {
	c.t.Helper()
	c.greet(cflagFixedNewstyle | cflagNoZeroes)
	if structured {
		c.structuredReply()
		if meta {
			ids, typ := c.metaOpt(optSetMetaContext, name, contextAllocName)
			if typ != repAck || len(ids) != 1 {
				c.t.Fatalf("SET_META_CONTEXT: %v %#x", ids, typ)
			}
		}
	}
	er := c.infoGo(optGo, name, infoBlockSize)
	if er.final != repAck {
		c.t.Fatalf("GO %q: %#x %s", name, er.final, er.msg)
	}
	return er
}

func (c *tclient) send(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if typ == cmdRead && !c.structured {
		c.mu.Lock()
		c.simpleLen[cookie] = length
		c.mu.Unlock()
	}
	c.write(append(b, payload...))
}

// msg is one reply message: a simple reply or one structured chunk.
type msg struct {
	simple  bool
	errno   uint32
	cookie  uint64
	flags   uint16
	typ     uint16
	payload []byte // structured payload, or simple READ data
}

func (c *tclient) readMsg() (msg, error) {
	var m4 [4]byte
	if _, err := io.ReadFull(c.br, m4[:]); err != nil {
		return msg{}, err
	}
	switch binary.BigEndian.Uint32(m4[:]) {
	case magicSimple:
		var h [12]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return msg{}, err
		}
		m := msg{simple: true, errno: binary.BigEndian.Uint32(h[:]), cookie: binary.BigEndian.Uint64(h[4:])}
		c.mu.Lock()
		n, isRead := c.simpleLen[m.cookie]
		delete(c.simpleLen, m.cookie)
		c.mu.Unlock()
		if isRead && m.errno == 0 {
			m.payload = make([]byte, n)
			if _, err := io.ReadFull(c.br, m.payload); err != nil {
				return msg{}, err
			}
		}
		return m, nil
	case magicStructred:
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return msg{}, err
		}
		m := msg{flags: binary.BigEndian.Uint16(h[:]), typ: binary.BigEndian.Uint16(h[2:]), cookie: binary.BigEndian.Uint64(h[4:])}
		n := binary.BigEndian.Uint32(h[12:])
		if n > 64<<20 {
			return msg{}, fmt.Errorf("chunk of %d bytes", n)
		}
		m.payload = make([]byte, n)
		if _, err := io.ReadFull(c.br, m.payload); err != nil {
			return msg{}, err
		}
		if m.typ&(1<<15) != 0 {
			if len(m.payload) < 6 {
				return msg{}, errors.New("short error chunk")
			}
			m.errno = binary.BigEndian.Uint32(m.payload)
		}
		return m, nil
	default:
		return msg{}, fmt.Errorf("bad reply magic % x", m4)
	}
}

func (c *tclient) mustMsg() msg {
	c.t.Helper()
	m, err := c.readMsg()
	if err != nil {
		c.t.Fatalf("reply: %v", err)
	}
	return m
}

// result is a whole reply: all chunks up to DONE.
type result struct {
	errno  uint32
	data   []byte // assembled READ data
	chunks []msg
}

// collect reads messages until reply cookie is complete; replies to other
// cookies met on the way are stored in pending.
func (c *tclient) collect(cookie uint64, off uint64, n uint32, pending map[uint64][]msg) result {
	c.t.Helper()
	var res result
	var covered []bool
	if n <= 64<<20 {
		res.data = make([]byte, n)
		covered = make([]bool, n)
	}
	handle := func(m msg) bool {
		res.chunks = append(res.chunks, m)
		if m.simple {
			res.errno = m.errno
			if m.errno == 0 && m.payload != nil {
				copy(res.data, m.payload)
				for i := range covered {
					covered[i] = true
				}
			}
			return true
		}
		switch m.typ {
		case replyTypeOffsetData, replyTypeOffsetHole:
			o := binary.BigEndian.Uint64(m.payload)
			var l uint64
			if m.typ == replyTypeOffsetData {
				l = uint64(len(m.payload) - 8)
			} else {
				l = uint64(binary.BigEndian.Uint32(m.payload[8:]))
				if l == 0 || len(m.payload) != 12 {
					c.t.Errorf("bad hole chunk")
				}
			}
			if o < off || o+l > off+uint64(n) {
				c.t.Fatalf("chunk [%d,+%d) outside request [%d,+%d)", o, l, off, n)
			}
			for i := o - off; i < o-off+l; i++ {
				if covered[i] {
					c.t.Fatalf("overlapping chunk at %d", off+i)
				}
				covered[i] = true
			}
			if m.typ == replyTypeOffsetData {
				copy(res.data[o-off:], m.payload[8:])
			}
		default:
			if m.errno != 0 && res.errno == 0 {
				res.errno = m.errno
			}
		}
		return m.flags&replyFlagDone != 0
	}
	for _, m := range pending[cookie] {
		if handle(m) {
			delete(pending, cookie)
			return res
		}
	}
	delete(pending, cookie)
	for {
		m := c.mustMsg()
		if m.cookie != cookie {
			pending[m.cookie] = append(pending[m.cookie], m)
			continue
		}
		if handle(m) {
			break
		}
	}
	if res.errno == 0 && covered != nil {
		for i, ok := range covered {
			if !ok {
				c.t.Fatalf("read byte %d not covered by any chunk", off+uint64(i))
			}
		}
	}
	return res
}

// do sends one request and waits for its whole reply.
func (c *tclient) do(flags, typ uint16, off uint64, length uint32, payload []byte) result {
	c.t.Helper()
	cookie := uint64(time.Now().UnixNano())
	c.send(flags, typ, cookie, off, length, payload)
	n := uint32(0)
	if typ == cmdRead {
		n = length
	}
	return c.collect(cookie, off, n, map[uint64][]msg{})
}

// expectClosed asserts the server hangs up.
func (c *tclient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("server did not close the connection")
	}
}

func newMem(size uint64) *voltest.MemDevice { return voltest.NewMemDevice(size, 64<<10) }
