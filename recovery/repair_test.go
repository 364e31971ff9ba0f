package recovery

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// afterRead runs a hook once a remote read has returned its data.
type afterRead struct {
	remoteStores
	hook func()
}

func (a afterRead) Read(ctx context.Context, addr string, e Entry, off uint32, p []byte) error {
	err := a.remoteStores.Read(ctx, addr, e, off, p)
	if a.hook != nil {
		a.hook()
	}
	return err
}

// TestRepairLocalKeepsConcurrentWrite: a scrub's repair reads the other
// copy, then repairs the local one. A write that reaches both copies in
// between must survive on the local copy: only its rotten block is
// replaced.
func TestRepairLocalKeepsConcurrentWrite(t *testing.T) {
	ctx := context.Background()
	var nodes []placement.Node
	var stores []*store.Disk
	var dirs []string
	for i := range 2 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), 7000)
		nodes = append(nodes, placement.Node{ID: fmt.Sprint("n", i), Addr: a, Zone: uint32(i + 1), Weight: 1 << 40})
		dir := filepath.Join(t.TempDir(), fmt.Sprint("n", i))
		d, err := store.Open(dir, store.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		stores, dirs = append(stores, d), append(dirs, dir)
	}
	e := &Epoch{Epoch: 1, Ring: placement.New(nodes, placement.Options{}), Members: nodes}
	const size = 64 << 10
	sh := Shape{Red: proto.Redundancy{Copies: 2}, Size: size}
	k := store.ReplicaKey(proto.DataOID(3, 1))
	data := bytes.Repeat([]byte("gosheep!"), size/8)
	for _, d := range stores {
		if err := d.Create(ctx, k, size, 0, data, store.WriteOpts{Epoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	local := stores[0]

	// Rot in the local copy's block 2 (the data is the file's tail).
	path := filepath.Join(dirs[0], "obj", k.String())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	if _, err := f.WriteAt([]byte{0xff}, fi.Size()-size+8192+7); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := local.Verify(ctx, k); err == nil {
		t.Fatal("no rot to repair")
	}

	newer := bytes.Repeat([]byte{0x42}, 4096)
	remote := afterRead{remoteStores: remoteStores{nodes[1].Addr.String(): stores[1]}}
	var werr error
	remote.hook = func() {
		for _, d := range stores {
			if err := d.Write(ctx, k, 32768, newer, store.WriteOpts{Epoch: 1}); err != nil {
				werr = err
			}
		}
	}
	r := New(Config{
		Self: nodes[0].ID, Local: local, Remote: remote,
		Shape:    func(proto.OID) (Shape, bool, bool) { return sh, true, false },
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
	})
	defer r.Close()
	r.Start(e)
	if err := r.RepairLocal(ctx, k); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	want := append([]byte(nil), data...)
	copy(want[32768:], newer)
	got := make([]byte, size)
	if err := local.Read(ctx, k, 0, got); err != nil {
		t.Fatalf("repaired copy: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the repaired copy lost the write made while the other copy was read")
	}
}
