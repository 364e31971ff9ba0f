package sendfile

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// staged sends head and then n bytes of want from a file (sendfile, as a
// peer answers) on one end of a TCP pair, and returns the other end with
// a reader that has consumed head, as a client's read loop has.
func staged(t *testing.T, head, n int) (net.Conn, *bufio.Reader, []byte) {
	t.Helper()
	f, want := testFile(t, n)
	src, dst := tcpPair(t)
	go func() {
		WithHeader(src, f, 0, n, make([]byte, head))
	}()
	br := bufio.NewReaderSize(dst, 64<<10)
	if _, err := io.ReadFull(br, make([]byte, head)); err != nil {
		t.Fatal(err)
	}
	return dst, br, want
}

// TestPipeRelay: a payload larger than the pipe is staged (the pipe
// first, the rest in memory) and relayed in order to another socket in
// parts, as Data-In segments are, arriving intact.
func TestPipeRelay(t *testing.T) {
	ps := NewPipes(2)
	p := ps.Get()
	if p == nil {
		t.Fatal("no pipe")
	}
	n := PipeSize + 300<<10
	nc, br, want := staged(t, 48, n)
	if err := p.Fill(nc, br, n); err != nil {
		t.Fatal(err)
	}
	if p.Len() != n || len(p.tail) == 0 || len(p.tail) > n/2 {
		t.Fatalf("staged %d bytes, %d of them in memory: want most in the pipe and the overflow in memory", p.Len(), len(p.tail))
	}
	out, peer := tcpPair(t)
	got := receive(peer, n)
	seg := 256 << 10
	for off := 0; off < n; off += seg {
		if err := Send(out, p, int64(off), min(seg, n-off), nil); err != nil {
			t.Fatalf("send at %d: %v", off, err)
		}
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatal("relayed bytes differ")
	}
	p.Release()
	if q := ps.Get(); q != p {
		t.Fatal("a drained pipe did not go back to the pool")
	}
}

// TestPipeSplices: a staged payload that fits goes out by splice, none
// of it through ReadAt's copy (Try handles all of it).
func TestPipeSplices(t *testing.T) {
	p := NewPipes(1).Get()
	n := 256 << 10
	nc, br, want := staged(t, 48, n)
	if err := p.Fill(nc, br, n); err != nil {
		t.Fatal(err)
	}
	if len(p.tail) != 0 {
		t.Fatalf("%d bytes of %d staged in memory", len(p.tail), n)
	}
	out, peer := tcpPair(t)
	got := receive(peer, n)
	sent, err, handled := Try(out, p, 0, n)
	if !handled || err != nil || sent != int64(n) {
		t.Fatalf("Try: %d bytes, %v, handled %v", sent, err, handled)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatal("relayed bytes differ")
	}
	p.Release()
}

// TestPipeOrder: a Pipe is a stream; reading at any other offset than
// the next is an error, not wrong data.
func TestPipeOrder(t *testing.T) {
	p := NewPipes(1).Get()
	n := 64 << 10
	nc, br, want := staged(t, 10, n)
	if err := p.Fill(nc, br, n); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1000)
	if _, err := p.ReadAt(b, 5); !errors.Is(err, ErrPipeOrder) {
		t.Fatalf("read at 5 of a fresh pipe: %v", err)
	}
	out, _ := tcpPair(t)
	if _, err, handled := Try(out, p, 7, 10); !handled || !errors.Is(err, ErrPipeOrder) {
		t.Fatalf("Try at 7 of a fresh pipe: %v, handled %v", err, handled)
	}
	if k, err := p.ReadAt(b, 0); err != nil || k != len(b) || !bytes.Equal(b, want[:len(b)]) {
		t.Fatalf("read at 0: %d, %v", k, err)
	}
	// Left with bytes in it, the pipe is closed, not pooled.
	ps := p.pool
	p.Release()
	if ps.open != 0 || len(ps.free) != 0 {
		t.Fatalf("after releasing a pipe holding bytes: %d open, %d free", ps.open, len(ps.free))
	}
}

// TestPipeCopies: without descriptors on either side (net.Pipe) the
// payload is staged in memory and sent by copying, intact.
func TestPipeCopies(t *testing.T) {
	p := NewPipes(1).Get()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	want := bytes.Repeat([]byte("gosheep!"), 40<<10)
	go func() { a.Write(append([]byte("head"), want...)) }()
	br := bufio.NewReader(b)
	if _, err := io.ReadFull(br, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := p.Fill(b, br, len(want)); err != nil {
		t.Fatal(err)
	}
	c, d := net.Pipe()
	defer c.Close()
	got := receive(d, len(want))
	if err := Send(c, p, 0, len(want), nil); err != nil {
		t.Fatal(err)
	}
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatal("copied bytes differ")
	}
	p.Release()
}

// TestPipeShortStream: the sender closing mid-payload is an error.
func TestPipeShortStream(t *testing.T) {
	p := NewPipes(1).Get()
	src, dst := tcpPair(t)
	go func() {
		src.Write(make([]byte, 100<<10))
		src.Close()
	}()
	br := bufio.NewReader(dst)
	if err := p.Fill(dst, br, 200<<10); err == nil {
		t.Fatal("a payload cut short filled")
	}
	p.Release()
}

// TestPipesBounded: the pool opens at most max pipes and closes idle
// ones on Close.
func TestPipesBounded(t *testing.T) {
	ps := NewPipes(2)
	a, b := ps.Get(), ps.Get()
	if a == nil || b == nil || ps.Get() != nil {
		t.Fatal("want exactly two pipes")
	}
	a.Release()
	ps.Close()
	b.Release()
	if ps.open != 0 || ps.Get() != nil {
		t.Fatalf("after Close: %d open", ps.open)
	}
}

// TestPipeFillSmallReceiveBuffer: with a receive buffer set small, the
// kernel caps the low-water mark Fill raises below the payload, so Fill
// wakes several times; the mark must come down as the rest shrinks, or
// the last bytes (fewer than the mark) never wake it.
func TestPipeFillSmallReceiveBuffer(t *testing.T) {
	f, want := testFile(t, 900<<10)
	src, dst := tcpPair(t)
	if err := dst.(*net.TCPConn).SetReadBuffer(160 << 10); err != nil {
		t.Fatal(err)
	}
	go WithHeader(src, f, 0, len(want), make([]byte, 48))
	br := bufio.NewReaderSize(dst, 64<<10)
	if _, err := io.ReadFull(br, make([]byte, 48)); err != nil {
		t.Fatal(err)
	}
	p := NewPipes(1).Get()
	defer p.Release()
	if err := p.Fill(dst, br, len(want)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := p.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("staged other bytes (%v)", err)
	}
}

// TestChainRelay: parts staged in pipes of their own relay as one stream
// in segments that cross the parts' boundaries (and their tails), by
// splice to a socket and by copy to a connection without a descriptor.
func TestChainRelay(t *testing.T) {
	for _, toSocket := range []bool{true, false} {
		ps := NewPipes(2)
		var parts []*Pipe
		var want []byte
		for _, n := range []int{PipeSize, 200 << 10} {
			nc, br, w := staged(t, 48, n)
			p := ps.Get()
			if err := p.Fill(nc, br, n); err != nil {
				t.Fatal(err)
			}
			parts = append(parts, p)
			want = append(want, w...)
		}
		c := NewChain(parts...)
		if c.Len() != len(want) {
			t.Fatalf("chain of %d bytes, want %d", c.Len(), len(want))
		}
		var out, peer net.Conn
		if toSocket {
			out, peer = tcpPair(t)
		} else {
			out, peer = net.Pipe()
			defer out.Close()
		}
		got := receive(peer, len(want))
		seg := 300 << 10
		for off := 0; off < len(want); off += seg {
			if err := Send(out, c, int64(off), min(seg, len(want)-off), nil); err != nil {
				t.Fatalf("send at %d: %v", off, err)
			}
		}
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("to a socket %v: relayed bytes differ", toSocket)
		}
		c.Release()
		if ps.open != 2 || len(ps.free) != 2 {
			t.Fatalf("after a whole relay: %d open, %d free", ps.open, len(ps.free))
		}
	}
}
