package store

import (
	"bytes"
	"context"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

// Sums given with a write are what the store keeps: right ones read back,
// a wrong one makes its block read as corrupt (damage on the way to a copy
// is found, not blessed), and an unaligned write computes its own.
func TestWriteWithGivenSums(t *testing.T) {
	ctx := context.Background()
	d := openT(t, t.TempDir(), Options{})
	k := ReplicaKey(proto.DataOID(1, 0))
	mustCreate(t, d, k, 64<<10, 0, nil)

	data := pattern(1, 16<<10)
	sums := BlockSums(nil, data)
	if len(sums) != 4 {
		t.Fatalf("%d sums for 16 KiB", len(sums))
	}
	if got := BlockSums(nil, data[:SumBlock+100]); len(got) != 1 || got[0] != sums[0] {
		t.Fatalf("short tail: %v", got)
	}
	if err := d.Write(ctx, k, 4096, data, WriteOpts{Sums: sums}); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d, k, 4096, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}

	// New data (a block matching its previous sum reads as a write that did
	// not land, which is fine), one sum wrong.
	data2 := pattern(2, len(data))
	bad := BlockSums(nil, data2)
	bad[2] ^= 1
	if err := d.Write(ctx, k, 4096, data2, WriteOpts{Sums: bad}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.Read(ctx, k, 4096+2*SumBlock, make([]byte, SumBlock)), ErrCorrupt, "read of a block written with a wrong sum")
	if got := mustRead(t, d, k, 4096, 2*SumBlock); !bytes.Equal(got, data2[:2*SumBlock]) {
		t.Fatal("blocks with right sums differ")
	}

	// Not on a block boundary: the sums cannot be for these blocks and are
	// not used.
	k2 := ReplicaKey(proto.DataOID(1, 1))
	mustCreate(t, d, k2, 64<<10, 0, nil)
	if err := d.Write(ctx, k2, 100, data2, WriteOpts{Sums: bad}); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, d, k2, 100, len(data2)); !bytes.Equal(got, data2) {
		t.Fatal("unaligned write read back differs")
	}
}
