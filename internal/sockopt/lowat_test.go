package sockopt

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A payload read with the mark raised arrives whole, also when it is far
// larger than the socket's buffer and the sender trickles it; after Reset
// a small message is read at once.
func TestLowatPayloadsArriveAndResetWakesSmallReads(t *testing.T) {
	cl, srv := tcpPair(t)
	l := NewLowat(srv)
	if l.rc == nil {
		t.Fatal("no raw conn for a TCP connection")
	}
	br := bufio.NewReaderSize(srv, 64<<10)
	for _, n := range []int{MinLowat, 1 << 20, 32 << 20} {
		want := bytes.Repeat([]byte{byte(n >> 10)}, n)
		go func() {
			for off := 0; off < n; {
				k := min(n-off, 100<<10)
				if _, err := cl.Write(want[off : off+k]); err != nil {
					return
				}
				off += k
				if off < 1<<20 {
					time.Sleep(time.Millisecond) // trickle the start
				}
			}
		}()
		got := make([]byte, n)
		srv.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := l.ReadFull(br, got)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: payload differs", n)
		}
	}
	go cl.Write([]byte("hi"))
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [2]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		t.Fatalf("small read after Reset: %v", err)
	}
}

// On a pipe (no socket) ReadFull is plain io.ReadFull, and a stream that
// ends early is io.ErrUnexpectedEOF.
func TestLowatNotASocket(t *testing.T) {
	a, b := net.Pipe()
	want := bytes.Repeat([]byte{7}, 1<<20)
	go func() { b.Write(want); b.Write(want[:10]); b.Close() }()
	l := NewLowat(a)
	br := bufio.NewReader(a)
	got := make([]byte, 1<<20)
	if _, err := l.ReadFull(br, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pipe read: %v", err)
	}
	if _, err := l.ReadFull(br, got); err != io.ErrUnexpectedEOF {
		t.Fatalf("short stream: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestLowatShortStreamOnSocket(t *testing.T) {
	cl, srv := tcpPair(t)
	go func() { cl.Write(make([]byte, 300<<10)); cl.Close() }()
	l := NewLowat(srv)
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := l.ReadFull(bufio.NewReader(srv), make([]byte, 1<<20))
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestHeaderFrom(t *testing.T) {
	src := strings.NewReader(strings.Repeat("x", 64))
	br := bufio.NewReaderSize(src, 16)
	if HeaderFrom(br, src, 15) != io.Reader(br) {
		t.Error("after a small payload: not the buffered reader")
	}
	if HeaderFrom(br, src, 16) != io.Reader(src) {
		t.Error("after a payload the buffer's size, nothing buffered: not the connection")
	}
	br.ReadByte() // buffers 15 more bytes
	if HeaderFrom(br, src, 1<<20) != io.Reader(br) {
		t.Error("with bytes buffered: not the buffered reader")
	}
}
