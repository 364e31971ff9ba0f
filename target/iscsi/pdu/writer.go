package pdu

import (
	"encoding/binary"
	"io"
	"net"
)

// Writer buffers outgoing PDUs for one connection. Headers and small data
// segments are copied into the buffer; a large data segment goes out in one
// vectored write together with whatever is buffered before it, without being
// copied: a 256 KiB Data-In costs one writev instead of a 64 KiB memmove and
// two writes through a bufio.Writer.
//
// Not safe for concurrent use; the connection serialises its writers.
type Writer struct {
	w       io.Writer
	buf     []byte
	flushAt int
	bufs    [3][]byte // scratch for net.Buffers, so a writev does not allocate
}

// largeData is the smallest data segment sent without copying.
const largeData = 16 << 10

// NewWriter returns a Writer that flushes to w once size bytes are buffered.
func NewWriter(w io.Writer, size int) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, size+largeData+HeaderLen+12), flushAt: size}
}

// Buffered is the number of bytes written but not yet flushed.
func (w *Writer) Buffered() int { return len(w.buf) }

// WritePDU is WritePDU (the function) into the buffer: h's data length is
// set from len(data), then h, data, padding and the digests asked for are
// queued. Data of 16 KiB or more is written out at once, with the buffer.
func (w *Writer) WritePDU(h *Header, data []byte, headerDigest, dataDigest bool) error {
	h.SetDataLen(uint32(len(data)))
	h[4] = 0 // we never send AHS
	w.buf = append(w.buf, h[:]...)
	if headerDigest {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, CRC32C(h[:]))
	}
	if len(data) == 0 {
		return w.maybeFlush()
	}
	pad := zeros[:pad4(uint32(len(data)))]
	var tail [8]byte
	t := append(tail[:0], pad...)
	if dataDigest {
		t = binary.LittleEndian.AppendUint32(t, CRC32C(data, pad))
	}
	if len(data) < largeData {
		w.buf = append(w.buf, data...)
		w.buf = append(w.buf, t...)
		return w.maybeFlush()
	}
	w.bufs = [3][]byte{w.buf, data, t}
	nb := net.Buffers(w.bufs[:])
	if len(t) == 0 {
		nb = nb[:2]
	}
	_, err := nb.WriteTo(w.w)
	w.bufs = [3][]byte{}
	w.buf = w.buf[:0]
	return err
}

// WritePDUFrom writes h with a data segment of n bytes that the caller
// sends straight to the connection (sendfile): send gets everything
// buffered up to and including h and its digest, and must write it and
// then the data. The padding is queued after. There is no data digest:
// the bytes never pass through here.
func (w *Writer) WritePDUFrom(h *Header, n uint32, headerDigest bool, send func(head []byte) error) error {
	h.SetDataLen(n)
	h[4] = 0 // we never send AHS
	w.buf = append(w.buf, h[:]...)
	if headerDigest {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, CRC32C(h[:]))
	}
	err := send(w.buf)
	w.buf = w.buf[:0]
	if err != nil {
		return err
	}
	w.buf = append(w.buf, zeros[:pad4(n)]...)
	return nil
}

func (w *Writer) maybeFlush() error {
	if len(w.buf) >= w.flushAt {
		return w.Flush()
	}
	return nil
}

// Flush writes out everything buffered.
func (w *Writer) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}
