package store

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

func TestReadRaw(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.OID(7))
	const size = 1 << 20
	data := pattern(3, 64<<10)
	mustCreate(t, d, k, size, 8192, data) // blocks before and after are holes
	whole := make([]byte, size)
	copy(whole[8192:], data)

	for _, c := range []struct{ off, n uint32 }{{0, size}, {8192, 4096}, {512 << 10, 8192}, {4096, 0}} {
		raw, sums, err := d.ReadRaw(ctx, k, c.off, c.n, []uint32{42})
		if err != nil {
			t.Fatalf("%d+%d: %v", c.off, c.n, err)
		}
		if want := BlockSums([]uint32{42}, whole[c.off:c.off+c.n]); !slices.Equal(sums, want) {
			t.Fatalf("%d+%d: sums %v, want %v", c.off, c.n, sums, want)
		}
		if _, ok := raw.Src.(syscall.Conn); !ok {
			t.Fatal("an OS file's source has no descriptor for sendfile")
		}
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, whole[c.off:c.off+c.n]) {
			t.Fatalf("%d+%d: source holds other bytes (%v)", c.off, c.n, err)
		}
		raw.Release()
	}

	// Raw reads do not verify: a rotten block's bytes go out with its
	// stored checksum, for the receiver to catch.
	flipByte(t, objFile(dir, k), int64(dataOffFor(size, blockSize))+8192+10)
	raw, sums, err := d.ReadRaw(ctx, k, 8192, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || BlockSums(nil, got)[0] == sums[0] {
		t.Fatalf("rotten block matched its sum (%v)", err)
	}
	raw.Release()
	wantErr(t, d.Read(ctx, k, 8192, got), ErrCorrupt, "Read of the rotten block")

	for _, c := range []struct {
		name   string
		k      Key
		off, n uint32
		want   error
	}{
		{"unaligned offset", k, 512, 4096, proto.ResInvalidParms},
		{"partial block", k, 0, 1000, proto.ResInvalidParms},
		{"beyond the end", k, size - 4096, 8192, ErrOutOfRange},
		{"missing object", ReplicaKey(proto.OID(8)), 0, 4096, ErrNotFound},
	} {
		if raw, _, err := d.ReadRaw(ctx, c.k, c.off, c.n, nil); raw != nil || !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// Failed raw reads left nothing pinned: a write goes through.
	if err := d.Write(ctx, k, 0, data[:4096], WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, _, err := d.ReadRaw(ctx, k, 0, 4096, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed store: %v", err)
	}
}
