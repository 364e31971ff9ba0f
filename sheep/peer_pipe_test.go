package sheep

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/internal/sendfile"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// countPinned counts the peer's lent reads.
type countPinned struct {
	localStore
	pr store.PinnedReader
	n  *atomic.Int32
}

func (c countPinned) ReadPinned(ctx context.Context, k store.Key, off, n uint32) (*store.Raw, error) {
	c.n.Add(1)
	return c.pr.ReadPinned(ctx, k, off, n)
}

// TestRemoteReadPiped: a remote read staged in pipes (in parts of
// sendfile.PipeSize, each lent by the peer from its file, verified)
// relays to another socket intact; a rotten copy is an error, never data;
// too few free pipes say ErrNotLocal.
func TestRemoteReadPiped(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	disk, err := store.Open(dir, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	const size = 4 << 20
	k := store.ReplicaKey(proto.OID(0x42))
	want := make([]byte, size)
	rand.NewChaCha8([32]byte{2}).Read(want)
	if err := disk.Create(ctx, k, size, 0, want, store.WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	var lent atomic.Int32
	srv, peer := startPeerReadServer(t, countPinned{disk, disk, &lent})
	peer.pipes = sendfile.NewPipes(4) // a 2 MiB read takes them all
	t.Cleanup(peer.pipes.Close)

	relay := func(off, n uint32) ([]byte, error) {
		raw, err := peer.ReadPiped(ctx, 1, k, off, n)
		if err != nil {
			return nil, err
		}
		defer raw.Release()
		a, b := tcpPair(t)
		got := make(chan []byte, 1)
		go func() {
			buf := make([]byte, n)
			io.ReadFull(b, buf)
			got <- buf
		}()
		if err := sendfile.Send(a, raw.Src, raw.Off, raw.N, nil); err != nil {
			return nil, err
		}
		return <-got, nil
	}
	for _, r := range [][2]uint32{{0, 1 << 20}, {4096, 2 << 20}, {size - 256<<10, 256 << 10}} {
		got, err := relay(r[0], r[1])
		if err != nil {
			t.Fatalf("%d+%d: %v", r[0], r[1], err)
		}
		if !bytes.Equal(got, want[r[0]:r[0]+r[1]]) {
			t.Fatalf("%d+%d: relayed other bytes", r[0], r[1])
		}
	}
	// 1 MiB, 2 MiB and 256 KiB: 2 + 4 + 1 parts.
	if ops := srv.take(); len(ops) != 7 || slices.IndexFunc(ops, func(o proto.Opcode) bool { return o != proto.OpReadPeer }) >= 0 {
		t.Fatalf("peer saw %v, want seven READ_PEER", ops)
	}
	if lent.Load() != 7 {
		t.Fatalf("peer lent %d reads of 7 from its file", lent.Load())
	}

	// Rot in the range: the peer refuses to lend, reads by copying,
	// which reports it.
	corruptAt(t, dir, k, size, 100<<10)
	if raw, err := peer.ReadPiped(ctx, 1, k, 0, 1<<20); raw != nil || !errors.Is(err, proto.ResEIO) {
		t.Fatalf("rotten copy: %v, want EIO", err)
	}
	// The pipe went back (or was replaced): the next relay works.
	if got, err := relay(2<<20, 1<<20); err != nil || !bytes.Equal(got, want[2<<20:3<<20]) {
		t.Fatalf("after an error: %v", err)
	}

	raw, err := peer.ReadPiped(ctx, 1, k, 2<<20, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peer.ReadPiped(ctx, 1, k, 2<<20, 1<<20); !errors.Is(err, gateway.ErrNotLocal) {
		t.Fatalf("with every pipe in use: %v, want ErrNotLocal", err)
	}
	raw.Release() // unread: the pipes are closed, and new ones open
	if got, err := relay(3<<20, 1<<20); err != nil || !bytes.Equal(got, want[3<<20:]) {
		t.Fatalf("after releasing an unread pipe: %v", err)
	}
}

// corruptAt flips a byte of k's data at off in the store under dir
// (objects of size bytes keep their data at the end of the file).
func corruptAt(t *testing.T, dir string, k store.Key, size, off int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "obj", k.String()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	pos := fi.Size() - size + off
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
}

// tcpPair is the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	a.SetDeadline(time.Now().Add(10 * time.Second))
	b.SetDeadline(time.Now().Add(10 * time.Second))
	return a, b
}
