package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

// TestHeal: only rotten blocks take the given bytes; blocks that verify
// (whether old data, a hole, or a write newer than the given bytes) are
// kept, and a healed block reads and verifies again.
func TestHeal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.OID(7))
	const size = 64<<10 + 1000 // a short last block
	old := pattern(1, size)
	mustCreate(t, d, k, size, 0, old[:48<<10]) // blocks from 48 KiB on are holes
	want := append(append([]byte(nil), old[:48<<10]...), make([]byte, size-48<<10)...)

	// A write lands after the "other copy" was read: its block verifies,
	// so Heal keeps it.
	other := append([]byte(nil), want...)
	newer := pattern(2, 4096)
	if err := d.Write(ctx, k, 4096, newer, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	copy(want[4096:], newer)

	dataOff := int64(dataOffFor(size, blockSize))
	for _, at := range []int64{8192 + 17, 8192 + 4095, 40960, 64<<10 + 999} {
		flipByte(t, objFile(dir, k), dataOff+at)
	}
	wantErr(t, d.Read(ctx, k, 8192, make([]byte, 4096)), ErrCorrupt, "read before heal")

	n, err := d.Heal(ctx, k, 0, other, WriteOpts{})
	if err != nil {
		t.Fatal(err)
	}
	// Blocks 2 (two flips), 10 and the short last one.
	if n != 3 {
		t.Fatalf("healed %d blocks, want 3", n)
	}
	checkContent(t, d, k, want)
	if err := d.Verify(ctx, k); err != nil {
		t.Fatalf("verify after heal: %v", err)
	}
	if n, err := d.Heal(ctx, k, 0, other, WriteOpts{}); err != nil || n != 0 {
		t.Fatalf("second heal: %d blocks, %v; want none", n, err)
	}

	// A sub-range heals what rotted inside it and nothing outside.
	flipByte(t, objFile(dir, k), dataOff+12288)
	flipByte(t, objFile(dir, k), dataOff+20480)
	if n, err := d.Heal(ctx, k, 12288, other[12288:16384], WriteOpts{Sync: true}); err != nil || n != 1 {
		t.Fatalf("heal of one block: %d blocks, %v; want 1", n, err)
	}
	wantErr(t, d.Read(ctx, k, 20480, make([]byte, 4096)), ErrCorrupt, "rot outside the healed range")
	got := make([]byte, 4096)
	if err := d.Read(ctx, k, 12288, got); err != nil || !bytes.Equal(got, want[12288:16384]) {
		t.Fatalf("healed block: %v", err)
	}

	for _, c := range []struct {
		name    string
		k       Key
		off     uint32
		n       int
		wantErr error
	}{
		{"unaligned offset", k, 512, 4096, proto.ResInvalidParms},
		{"partial block", k, 0, 1000, proto.ResInvalidParms},
		{"beyond the end", k, size - 1000, 8192, ErrOutOfRange},
		{"missing object", ReplicaKey(proto.OID(8)), 0, 4096, ErrNotFound},
	} {
		if _, err := d.Heal(ctx, c.k, c.off, make([]byte, c.n), WriteOpts{}); !errors.Is(err, c.wantErr) {
			t.Errorf("%s: %v, want %v", c.name, err, c.wantErr)
		}
	}
}

// TestHealUnopenable: a copy whose file cannot be opened (header damaged)
// takes a heal from offset 0 whole; any other range is refused.
func TestHealUnopenable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.OID(7))
	const size = 32 << 10
	data := pattern(3, size)
	mustCreate(t, d, k, size, 0, data)
	d.Close()
	flipByte(t, objFile(dir, k), 3) // the header
	d = openT(t, dir, Options{NoSync: true})
	wantErr(t, d.Read(ctx, k, 0, make([]byte, 4096)), ErrCorrupt, "read of a damaged header")
	wantErr(t, d.Write(ctx, k, 0, make([]byte, 4096), WriteOpts{}), ErrCorrupt, "write into a damaged header")

	if _, err := d.Heal(ctx, k, 4096, data[4096:8192], WriteOpts{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("heal of a part of an unopenable copy: %v, want ErrCorrupt", err)
	}
	n, err := d.Heal(ctx, k, 0, data, WriteOpts{})
	if err != nil || n != size/4096 {
		t.Fatalf("heal of an unopenable copy: %d blocks, %v", n, err)
	}
	checkContent(t, d, k, data)

	// A file cut short under the open copy: the blocks past its end are
	// rot, and heal; those before it verify and stay.
	if err := os.Truncate(objFile(dir, k), int64(dataOffFor(size, blockSize))+8192); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Heal(ctx, k, 0, data, WriteOpts{}); err != nil || n != size/4096-2 {
		t.Fatalf("heal of a truncated copy: %d blocks, %v; want %d", n, err, size/4096-2)
	}
	checkContent(t, d, k, data)
}

// TestReplaceIf: a copy is replaced only while it hashes to what the
// caller saw; after a write it is left alone (ErrChanged).
func TestReplaceIf(t *testing.T) {
	ctx := context.Background()
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(proto.OID(7))
	const size = 32 << 10
	mustCreate(t, d, k, size, 0, pattern(1, size))
	seen, err := d.Hash(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	// A write after the caller hashed the copy.
	newer := pattern(2, 4096)
	if err := d.Write(ctx, k, 8192, newer, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	want := pattern(1, size)
	copy(want[8192:], newer)
	if err := d.ReplaceIf(ctx, k, seen, pattern(3, size), WriteOpts{}); !errors.Is(err, ErrChanged) {
		t.Fatalf("replace of a changed copy: %v, want ErrChanged", err)
	}
	checkContent(t, d, k, want)

	now, err := d.Hash(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ReplaceIf(ctx, k, now, pattern(3, size), WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, k, pattern(3, size))

	wantErr(t, d.ReplaceIf(ctx, ReplicaKey(proto.OID(8)), now, pattern(3, size), WriteOpts{}), ErrNotFound, "replace of a missing object")
	wantErr(t, d.ReplaceIf(ctx, k, now, nil, WriteOpts{}), proto.ResInvalidParms, "replace with nothing")
}
