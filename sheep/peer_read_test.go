package sheep

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/target/native"
)

// badSums is a store whose raw reads lend one wrong checksum, as if the
// block had rotted or been torn on the peer.
type badSums struct {
	localStore
	raw store.RawReader
}

func (b badSums) ReadRaw(ctx context.Context, k store.Key, off, n uint32, sums []uint32) (*store.Raw, []uint32, error) {
	r, sums, err := b.raw.ReadRaw(ctx, k, off, n, sums)
	if err == nil && len(sums) > 0 {
		sums[len(sums)-1] ^= 1
	}
	return r, sums, err
}

// noRaw is a store without raw reads (a node that cannot serve
// READ_PEER_SUMS answers ResInvalidParms, as one from before it does).
type noRaw struct{ localStore }

// peerReadServer serves READ_PEER_SUMS and READ_PEER through the real
// handler code, over TCP, recording the opcodes it was sent.
type peerReadServer struct {
	h   *handler
	mu  sync.Mutex
	ops []proto.Opcode
}

func (s *peerReadServer) Handle(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
	s.mu.Lock()
	s.ops = append(s.ops, req.Opcode)
	s.mu.Unlock()
	k := peerKeyOf(req.Obj())
	switch req.Opcode {
	case proto.OpReadPeerSums:
		return s.h.readPeerSums(ctx, req, k)
	case proto.OpReadPeer:
		return s.h.readPeer(ctx, req, k)
	}
	return rsp(req, proto.ResInvalidParms), nil
}

func (s *peerReadServer) take() []proto.Opcode {
	s.mu.Lock()
	defer s.mu.Unlock()
	ops := s.ops
	s.ops = nil
	return ops
}

func startPeerReadServer(t *testing.T, st localStore) (*peerReadServer, *remotePeer) {
	t.Helper()
	s := &peerReadServer{h: &handler{store: st, log: slog.New(slog.DiscardHandler)}}
	srv := native.NewServer(native.Config{Handler: s})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	pool := client.NewPool(2)
	t.Cleanup(func() { pool.Close(); srv.Close() })
	return s, &remotePeer{pool: pool, addr: ln.Addr().String()}
}

func TestRemoteReadWithSums(t *testing.T) {
	ctx := context.Background()
	disk, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	const size = 4 << 20
	k := store.ReplicaKey(proto.OID(0x42))
	data := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	// The object has data in [64 KiB, 64 KiB + 1 MiB) and holes around it.
	if err := disk.Create(ctx, k, size, 64<<10, data, store.WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want[64<<10:], data)

	for _, tc := range []struct {
		name    string
		st      localStore
		off, n  uint32
		wantOps []proto.Opcode
	}{
		{"whole blocks go by sendfile", disk, 0, 2 << 20, []proto.Opcode{proto.OpReadPeerSums}},
		{"one block", disk, 64 << 10, 4096, []proto.Opcode{proto.OpReadPeerSums}},
		{"a hole", disk, 3 << 20, 8192, []proto.Opcode{proto.OpReadPeerSums}},
		{"unaligned goes plain", disk, 512, 4096, []proto.Opcode{proto.OpReadPeer}},
		{"partial block goes plain", disk, 4096, 1000, []proto.Opcode{proto.OpReadPeer}},
		{"a failed check is read again plain", badSums{disk, disk}, 0, 1 << 20, []proto.Opcode{proto.OpReadPeerSums, proto.OpReadPeer}},
		{"a node without it is read plain", noRaw{disk}, 0, 1 << 20, []proto.Opcode{proto.OpReadPeerSums, proto.OpReadPeer}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, peer := startPeerReadServer(t, tc.st)
			p := make([]byte, tc.n)
			if err := peer.Read(ctx, 1, k, tc.off, p); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, want[tc.off:tc.off+tc.n]) {
				t.Fatal("read returned other data")
			}
			if ops := srv.take(); !slices.Equal(ops, tc.wantOps) {
				t.Fatalf("peer saw %v, want %v", ops, tc.wantOps)
			}
		})
	}

	t.Run("errors are not retried", func(t *testing.T) {
		srv, peer := startPeerReadServer(t, disk)
		err := peer.Read(ctx, 1, store.ReplicaKey(proto.OID(0x43)), 0, make([]byte, 4096))
		if !errors.Is(err, proto.ResNoObj) {
			t.Fatalf("missing object: %v, want ResNoObj", err)
		}
		err = peer.Read(ctx, 1, k, size-4096, make([]byte, 8192))
		if proto.ResultOf(err) != proto.ResInvalidParms {
			t.Fatalf("beyond the end: %v, want ResInvalidParms", err)
		}
		want := []proto.Opcode{proto.OpReadPeerSums, proto.OpReadPeerSums, proto.OpReadPeer}
		if ops := srv.take(); !slices.Equal(ops, want) {
			t.Fatalf("peer saw %v, want %v", ops, want)
		}
	})

	t.Run("a write waits for the data to be sent", func(t *testing.T) {
		raw, _, err := disk.ReadRaw(ctx, k, 0, 4096, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- disk.Write(ctx, k, 0, make([]byte, 4096), store.WriteOpts{Epoch: 1}) }()
		select {
		case err := <-done:
			t.Fatalf("write finished while the range was pinned: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		raw.Release()
		raw.Release() // idempotent
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
