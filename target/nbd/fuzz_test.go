package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

// Fuzz limits: small, so a bug that ignores them stands out.
const (
	fuzzPayload  = 256 << 10
	fuzzInflight = 1 << 20
	// fuzzHeapLimit bounds heap growth during one input: the inflight
	// budget, one unbacked payload, buffers, and garbage awaiting GC.
	fuzzHeapLimit = 96 << 20
)

func fuzzServer() *Server {
	exps := newTestExports()
	exps.add("disk", "fuzz", false, voltest.NewMemDevice(1<<20, 64<<10))
	exps.add("ro", "", true, voltest.NewMemDevice(1<<20, 4096))
	return New(Config{
		Exports:          exps,
		MaxPayload:       fuzzPayload,
		MaxInflight:      8,
		MaxInflightBytes: fuzzInflight,
		HandshakeTimeout: 2 * time.Second,
	})
}

// heapWatch samples heap object bytes until stopped and reports the peak
// growth over the starting value.
func heapWatch() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := read()
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			if v := read(); v > base && v-base > peak.Load() {
				peak.Store(v - base)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return peak.Load() }
}

// fuzzConn runs one server connection over net.Pipe: setup talks to it
// synchronously, then input is written while the output is drained, the
// client end is closed, and the server must finish promptly.
func fuzzConn(t *testing.T, setup func(c *tclient) bool, input []byte) {
	s := fuzzServer()
	stopHeap := heapWatch()
	sc, cc := net.Pipe()
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.serveConn(context.Background(), sc)
	}()
	cc.SetDeadline(time.Now().Add(5 * time.Second))
	c := &tclient{t: t, nc: cc, simpleLen: map[uint64]uint32{}}
	c.br = bufio.NewReader(cc)
	ok := setup == nil || setup(c)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		io.Copy(io.Discard, c.br)
	}()
	if ok {
		cc.Write(input) // may fail once the server hangs up: fine
	}
	cc.Close()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("server connection did not finish after the client closed")
	}
	<-drained
	if grew := stopHeap(); grew > fuzzHeapLimit {
		t.Fatalf("heap grew by %d MiB on one connection", grew>>20)
	}
	if s.Panics() != 0 {
		t.Fatal("recovered a panic")
	}
	s.Close()
}

func opt(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func req(flags, typ uint16, cookie, off uint64, n uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, n)
	return append(b, payload...)
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// FuzzHandshake feeds arbitrary client bytes after the server greeting:
// client flags, then options (and whatever follows a successful GO).
func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, cflagFixedNewstyle|cflagNoZeroes)
	f.Add(flags)
	f.Add([]byte{0, 0, 0, 0})
	f.Add(cat(flags, opt(optList, nil), opt(optAbort, nil)))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("disk", contextAllocName, "base:")),
		opt(optListMetaContext, metaData("")), opt(optInfo, infoData("disk", 0, 1, 2, 3)),
		opt(optGo, infoData("disk", 3)), req(0, cmdRead, 1, 0, 4096, nil), req(0, cmdDisc, 2, 0, 0, nil)))
	f.Add(cat(flags, opt(optExportName, []byte("disk")), req(0, cmdWrite, 1, 0, 4, []byte{1, 2, 3, 4})))
	f.Add(cat(flags, opt(optStartTLS, nil), opt(optGo, infoData("", 1)), opt(optGo, infoData("nope"))))
	f.Add(cat(flags, opt(optListMetaContext, metaData("disk", "base:")), opt(99, []byte("xyz"))))
	f.Add(cat(flags, opt(optGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})))
	f.Add(cat(flags, opt(optSetMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})))
	big := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	big = binary.BigEndian.AppendUint32(big, 77)
	big = binary.BigEndian.AppendUint32(big, maxOptionLen+100)
	f.Add(cat(flags, big, make([]byte, 200)))
	huge := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	huge = binary.BigEndian.AppendUint32(huge, optInfo)
	huge = binary.BigEndian.AppendUint32(huge, 0xfffffff0)
	f.Add(cat(flags, huge))
	f.Fuzz(func(t *testing.T, in []byte) {
		fuzzConn(t, func(c *tclient) bool {
			var g [18]byte
			_, err := io.ReadFull(c.br, g[:])
			return err == nil
		}, in)
	})
}

// FuzzTransmission feeds an arbitrary request stream after a successful
// NBD_OPT_GO. The first byte picks the negotiation: bit 0 structured
// replies, bit 1 base:allocation, bit 2 the read-only export.
func FuzzTransmission(f *testing.F) {
	rw := func(mode byte, rest ...[]byte) []byte { return cat(append([][]byte{{mode}}, rest...)...) }
	f.Add(rw(3, req(0, cmdRead, 1, 0, 4096, nil)))
	f.Add(rw(0, req(0, cmdRead, 1, 0, 4096, nil)))
	f.Add(rw(3, req(cmdFlagFUA, cmdWrite, 1, 100, 8, []byte("abcdefgh")), req(cmdFlagDF, cmdRead, 2, 0, 1<<20, nil),
		req(0, cmdFlush, 3, 0, 0, nil), req(0, cmdDisc, 4, 0, 0, nil)))
	f.Add(rw(3, req(0, cmdTrim, 1, 0, 1<<20, nil), req(cmdFlagNoHole, cmdWriteZeroes, 2, 0, 1<<20, nil),
		req(cmdFlagFastZero, cmdWriteZeroes, 3, 1, 100, nil), req(cmdFlagReqOne, cmdBlockStatus, 4, 0, 1<<20, nil),
		req(0, cmdBlockStatus, 5, 0, 0xffffffff, nil), req(0, cmdCache, 6, 0, 4096, nil)))
	f.Add(rw(1, req(0, cmdWrite, 1, 0, fuzzPayload+1, nil)))
	f.Add(rw(1, req(0, cmdWrite, 1, 0, 0xffffffff, nil)))
	f.Add(rw(1, req(0, cmdRead, 1, 0, 0xffffffff, nil), req(0, cmdRead, 2, ^uint64(0), 1, nil)))
	f.Add(rw(5, req(0, cmdWrite, 1, 0, 4, []byte{1, 2, 3, 4}), req(0, cmdWriteZeroes, 2, 0, 4, nil)))
	f.Add(rw(3, req(0xffff, 0xffff, 1, 0, 0, nil), []byte{0x25, 0x60, 0x95}))
	f.Add(rw(3, []byte("garbage that is not a request at all")))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		mode := in[0]
		fuzzConn(t, func(c *tclient) bool {
			var g [18]byte
			if _, err := io.ReadFull(c.br, g[:]); err != nil {
				return false
			}
			c.write(binary.BigEndian.AppendUint32(nil, cflagFixedNewstyle|cflagNoZeroes))
			name := "disk"
			if mode&4 != 0 {
				name = "ro"
			}
			if mode&1 != 0 {
				c.sendOpt(optStructuredReply, nil)
				if r, err := c.readOpt(); err != nil || r.typ != repAck {
					t.Fatalf("STRUCTURED_REPLY: %v %#x", err, r.typ)
				}
				if mode&2 != 0 {
					c.sendOpt(optSetMetaContext, metaData(name, contextAllocName))
					for {
						r, err := c.readOpt()
						if err != nil {
							t.Fatal(err)
						}
						if r.typ == repAck {
							break
						}
					}
				}
			}
			c.sendOpt(optGo, infoData(name))
			for {
				r, err := c.readOpt()
				if err != nil {
					t.Fatal(err)
				}
				if r.typ == repAck {
					return true
				}
				if r.typ != repInfo {
					t.Fatalf("GO: %#x", r.typ)
				}
			}
		}, in[1:])
	})
}
