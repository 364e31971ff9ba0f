package pdu

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// writeCounter records what it is given and how many Write calls made it.
type writeCounter struct {
	bytes.Buffer
	calls int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(p)
}

// A sequence of PDUs through a Writer is byte-for-byte what WritePDU
// produces, whatever mix of sizes (below, at and above the no-copy
// threshold, unaligned for padding) and digests.
func TestWriterMatchesWritePDU(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	sizes := []int{0, 1, 3, 4, 512, largeData - 1, largeData, largeData + 1, 65535, 256 << 10, 256<<10 + 2}
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			var want bytes.Buffer
			var got writeCounter
			w := NewWriter(&got, 64<<10)
			for i := 0; i < 200; i++ {
				n := sizes[rng.IntN(len(sizes))]
				data := make([]byte, n)
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				var h1, h2 Header
				h1.SetOpcode(OpDataIn)
				h1.SetITT(uint32(i))
				h2 = h1
				if err := WritePDU(&want, &h1, data, hd, dd); err != nil {
					t.Fatal(err)
				}
				if err := w.WritePDU(&h2, data, hd, dd); err != nil {
					t.Fatal(err)
				}
				if h1 != h2 {
					t.Fatalf("header %d differs", i)
				}
				if rng.IntN(4) == 0 {
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if w.Buffered() != 0 {
				t.Fatalf("%d bytes left buffered after Flush", w.Buffered())
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("hd=%v dd=%v: %d bytes written, want %d, or contents differ", hd, dd, got.Len(), want.Len())
			}
		}
	}
}

// Small PDUs stay buffered until Flush or the threshold; a large data
// segment takes the buffer with it.
func TestWriterBuffering(t *testing.T) {
	var out writeCounter
	w := NewWriter(&out, 1024)
	var h Header
	for i := 0; i < 3; i++ {
		if err := w.WritePDU(&h, make([]byte, 100), false, false); err != nil {
			t.Fatal(err)
		}
	}
	if out.calls != 0 || w.Buffered() != 3*(HeaderLen+100) {
		t.Fatalf("small PDUs: %d writes, %d buffered", out.calls, w.Buffered())
	}
	if err := w.WritePDU(&h, make([]byte, largeData+3), true, true); err != nil {
		t.Fatal(err)
	}
	if w.Buffered() != 0 {
		t.Fatalf("large PDU left %d bytes buffered", w.Buffered())
	}
	want := 3*(HeaderLen+100) + HeaderLen + 4 + largeData + 3 + 1 + 4
	if out.Len() != want {
		t.Fatalf("wrote %d bytes, want %d", out.Len(), want)
	}
	for i := 0; i < 20; i++ {
		if err := w.WritePDU(&h, make([]byte, 100), false, false); err != nil {
			t.Fatal(err)
		}
	}
	if w.Buffered() >= 1024 {
		t.Fatalf("%d bytes buffered past the 1024-byte threshold", w.Buffered())
	}
}

// Over a real TCP connection (the writev path) the peer reads back what
// ReadHeader/ReadData expect, digests included.
func TestWriterOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sizes := []int{0, 5, largeData + 1, 256 << 10}
	done := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		w := NewWriter(c, 64<<10)
		for i, n := range sizes {
			var h Header
			h.SetOpcode(OpDataIn)
			h.SetITT(uint32(i))
			if err := w.WritePDU(&h, bytes.Repeat([]byte{byte(i + 1)}, n), true, true); err != nil {
				done <- err
				return
			}
		}
		done <- w.Flush()
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lim := Limits{MaxData: 256 << 10, HeaderDigest: true, DataDigest: true}
	for i, n := range sizes {
		var p PDU
		if err := ReadHeader(c, lim, &p); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if p.ITT() != uint32(i) || int(p.DataLen()) != n {
			t.Fatalf("PDU %d: ITT %d, %d bytes; want %d bytes", i, p.ITT(), p.DataLen(), n)
		}
		buf := make([]byte, n)
		if err := ReadData(c, lim, buf); err != nil {
			t.Fatalf("PDU %d data: %v", i, err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{byte(i + 1)}, n)) {
			t.Fatalf("PDU %d: data differs", i)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestWriterError(t *testing.T) {
	w := NewWriter(failWriter{}, 1024)
	var h Header
	if err := w.WritePDU(&h, make([]byte, largeData), false, false); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("large write to a failing writer: %v", err)
	}
	if err := w.WritePDU(&h, nil, false, false); err != nil {
		t.Fatalf("buffered write: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("flush to a failing writer: %v", err)
	}
}
