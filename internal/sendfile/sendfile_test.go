package sendfile

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// readerOnly hides a file's descriptor.
type readerOnly struct{ r io.ReaderAt }

func (r readerOnly) ReadAt(p []byte, off int64) (int, error) { return r.r.ReadAt(p, off) }

func testFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	want := make([]byte, n)
	rand.NewChaCha8([32]byte{1}).Read(want)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, want
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); peer.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	return nc, peer
}

// receive reads n bytes from c in the background.
func receive(c net.Conn, n int) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			b = nil
		}
		got <- b
	}()
	return got
}

// TestTryUsesSendfile: a file range to a TCP connection goes by
// sendfile (a copy would deliver the same bytes, so handled is the test).
func TestTryUsesSendfile(t *testing.T) {
	f, want := testFile(t, 1<<20)
	nc, peer := tcpPair(t)
	got := receive(peer, len(want)-100)
	n, err, handled := Try(nc, f, 100, len(want)-100)
	if !handled || err != nil || n != int64(len(want)-100) {
		t.Fatalf("Try: %d bytes, %v, handled %v", n, err, handled)
	}
	if b := <-got; !bytes.Equal(b, want[100:]) {
		t.Fatal("the receiver got other bytes")
	}
	if n, _, handled := Try(nc, readerOnly{f}, 0, 10); handled || n != 0 {
		t.Fatal("Try handled a source without a descriptor")
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 0 {
		t.Fatalf("sendfile moved the file offset to %d", off)
	}
}

// TestSendCopies: without descriptors Send copies through its buffer,
// however small.
func TestSendCopies(t *testing.T) {
	f, want := testFile(t, 300<<10)
	for _, tc := range []struct {
		name string
		src  io.ReaderAt
		buf  []byte
	}{
		{"no descriptor", readerOnly{f}, make([]byte, 7000)},
		{"no buffer", readerOnly{f}, nil},
		{"descriptor", f, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, peer := tcpPair(t)
			got := receive(peer, len(want)-4096)
			if err := Send(nc, tc.src, 4096, len(want)-4096, tc.buf); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, want[4096:]) {
				t.Fatal("the receiver got other bytes")
			}
		})
	}
}

// TestSendShort: a source that ends before n is an error on both paths,
// never a hang or a silent short send.
func TestSendShort(t *testing.T) {
	f, _ := testFile(t, 64<<10)
	for _, src := range []io.ReaderAt{f, readerOnly{f}} {
		nc, peer := tcpPair(t)
		go io.Copy(io.Discard, peer)
		err := Send(nc, src, 0, 128<<10, nil)
		if !errors.Is(err, ErrShort) {
			t.Fatalf("%T: Send past the end: %v, want ErrShort", src, err)
		}
	}
}

// TestSendPipe: a connection without a descriptor (net.Pipe) is copied to.
func TestSendPipe(t *testing.T) {
	f, want := testFile(t, 100<<10)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	got := receive(b, len(want))
	if err := Send(a, f, 0, len(want), make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !bytes.Equal(r, want) {
		t.Fatal("the receiver got other bytes")
	}
}

// TestWithHeader: header buffers written with MSG_MORE, empty ones
// included, then a file range, arrive whole and in order; without a
// descriptor both are written plainly.
func TestWithHeader(t *testing.T) {
	f, data := testFile(t, 200<<10)
	head := [][]byte{[]byte("head"), nil, make([]byte, 100<<10), []byte("er")}
	var want []byte
	for _, b := range head {
		want = append(want, b...)
	}
	want = append(want, data...)
	for _, pipe := range []bool{false, true} {
		var nc, peer net.Conn
		if pipe {
			nc, peer = net.Pipe()
			defer nc.Close()
			defer peer.Close()
		} else {
			nc, peer = tcpPair(t)
		}
		got := receive(peer, len(want))
		if err := WithHeader(nc, f, 0, len(data), head...); err != nil {
			t.Fatal(err)
		}
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("pipe %v: the receiver got other bytes", pipe)
		}
	}
}
