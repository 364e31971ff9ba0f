package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store/errorfs"
	"github.com/gosheep/gosheep/store/vfs"
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

func TestReadPinned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.OID(7))
	const size = 1 << 20
	data := pattern(5, 64<<10)
	mustCreate(t, d, k, size, 8192, data) // blocks before and after are holes
	whole := make([]byte, size)
	copy(whole[8192:], data)
	dataOff := int64(dataOffFor(size, blockSize))

	for _, c := range []struct{ off, n uint32 }{{0, size}, {8192, 4096}, {8192 + 100, 5000}, {512 << 10, 8192}, {4096, 0}} {
		raw, err := d.ReadPinned(ctx, k, c.off, c.n)
		if err != nil {
			t.Fatalf("%d+%d: %v", c.off, c.n, err)
		}
		if _, ok := raw.Src.(syscall.Conn); !ok {
			t.Fatal("an OS file's source has no descriptor for sendfile")
		}
		if raw.N != int(c.n) || raw.Off != dataOff+int64(c.off) {
			t.Fatalf("%d+%d: lent %d bytes at %d", c.off, c.n, raw.N, raw.Off)
		}
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, whole[c.off:c.off+c.n]) {
			t.Fatalf("%d+%d: source holds other bytes (%v)", c.off, c.n, err)
		}
		raw.Release()
	}

	// A torn write's remnant (the block holds what its prev checksum
	// says) is data, as for Read.
	if err := d.Write(ctx, k, 16384, pattern(6, 4096), WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	writeAt(t, objFile(dir, k), dataOff+16384, data[16384-8192:16384-8192+4096])
	if raw, err := d.ReadPinned(ctx, k, 16384, 4096); err != nil {
		t.Fatalf("block matching its prev checksum: %v", err)
	} else {
		raw.Release()
	}

	// Rot anywhere in a touched block fails the read, even when the range
	// covers only part of that block.
	flipByte(t, objFile(dir, k), dataOff+8192+4000)
	for _, c := range []struct{ off, n uint32 }{{8192, 4096}, {0, size}, {8192 + 4090, 10}} {
		raw, err := d.ReadPinned(ctx, k, c.off, c.n)
		if raw != nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%d+%d over a rotten block: %v, want ErrCorrupt", c.off, c.n, err)
		}
	}
	for _, c := range []struct {
		name   string
		k      Key
		off, n uint32
		want   error
	}{
		{"beyond the end", k, size - 4096, 8192, ErrOutOfRange},
		{"missing object", ReplicaKey(proto.OID(8)), 0, 4096, ErrNotFound},
	} {
		if raw, err := d.ReadPinned(ctx, c.k, c.off, c.n); raw != nil || !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}

	// A pinned range holds off writers until Release.
	raw, err := d.ReadPinned(ctx, k, 65536, 4096)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Release) // before the store closes, even on failure
	done := make(chan error, 1)
	go func() { done <- d.Write(ctx, k, 65536, pattern(7, 4096), WriteOpts{Epoch: 1}) }()
	select {
	case err := <-done:
		t.Fatalf("write finished while the range was pinned: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	raw.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReadPinnedTruncated: a file cut short under the store is an error
// (the mapping faults), never a crash.
func TestReadPinnedTruncated(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.OID(9))
	const size = 1 << 20
	mustCreate(t, d, k, size, 0, pattern(8, size))
	if err := os.Truncate(objFile(dir, k), int64(dataOffFor(size, blockSize))+4096); err != nil {
		t.Fatal(err)
	}
	raw, err := d.ReadPinned(ctx, k, 0, 64<<10)
	if raw != nil || !errors.Is(err, errMappedFault) {
		t.Fatalf("read past the end of a truncated file: %v, want a mapping fault", err)
	}
	// Nothing is left pinned.
	if err := d.Remove(ctx, k); err != nil {
		t.Fatal(err)
	}
}

// TestReadPinnedNoDescriptor: a file system without descriptors is
// verified through a buffer, with the same answers.
func TestReadPinnedNoDescriptor(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true, FS: errorfs.Wrap(vfs.Default(), errorfs.InjectorFunc(func(errorfs.Op) error { return nil }))})
	k := ReplicaKey(proto.OID(10))
	const size = 256 << 10
	want := pattern(9, size)
	mustCreate(t, d, k, size, 0, want)
	raw, err := d.ReadPinned(ctx, k, 4096, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := raw.Src.(syscall.Conn); ok {
		t.Fatal("the wrapped file has a descriptor: this test needs one without")
	}
	got := make([]byte, raw.N)
	if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, want[4096:4096+8192]) {
		t.Fatalf("source holds other bytes (%v)", err)
	}
	raw.Release()
	flipByte(t, objFile(dir, k), int64(dataOffFor(size, blockSize))+4096)
	if raw, err := d.ReadPinned(ctx, k, 4096, 8192); raw != nil || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("rotten block: %v, want ErrCorrupt", err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestReadPinnedMappingLifetime: the mapping a lend keeps follows the
// object's file: a replaced object, or one closed by the open-file cache
// and reopened, is verified against its current file.
func TestReadPinnedMappingLifetime(t *testing.T) {
	ctx := context.Background()
	d := openT(t, t.TempDir(), Options{NoSync: true, MaxOpenFiles: 1})
	const size = 256 << 10
	ka, kb := ReplicaKey(proto.OID(11)), ReplicaKey(proto.OID(12))
	check := func(k Key, want []byte) {
		t.Helper()
		raw, err := d.ReadPinned(ctx, k, 0, size)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Release()
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%v: lent other bytes (%v)", k, err)
		}
	}
	a1, b1 := pattern(12, size), pattern(13, size)
	mustCreate(t, d, ka, size, 0, a1)
	check(ka, a1)
	a2 := pattern(14, size)
	mustCreate(t, d, ka, size, 0, a2) // replaces the file
	check(ka, a2)
	for range 3 { // one open file: each lend closes the other object
		mustCreate(t, d, kb, size, 0, b1)
		check(kb, b1)
		check(ka, a2)
	}
	if err := d.Write(ctx, ka, 4096, b1[:8192], WriteOpts{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	copy(a2[4096:], b1[:8192])
	check(ka, a2)
}

// TestReadPinnedMapBudget: mappings kept for lends stay within MapBudget,
// oldest dropped first, except one whose object is in use; a dropped
// mapping is made again by the next lend, and the sheep's resident set
// holds no more than the budget of checked pages.
func TestReadPinnedMapBudget(t *testing.T) {
	ctx := context.Background()
	const size = 256 << 10
	d := openT(t, t.TempDir(), Options{NoSync: true, MapBudget: 3 * size})
	keys := make([]Key, 8)
	data := make([][]byte, len(keys))
	for i := range keys {
		keys[i] = ReplicaKey(proto.OID(100 + i))
		data[i] = pattern(uint64(20+i), size)
		mustCreate(t, d, keys[i], size, 0, data[i])
	}
	lend := func(i int) *Raw {
		t.Helper()
		raw, err := d.ReadPinned(ctx, keys[i], 0, size)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, raw.N)
		if _, err := raw.Src.ReadAt(got, raw.Off); err != nil || !bytes.Equal(got, data[i]) {
			t.Fatalf("object %d: lent other bytes (%v)", i, err)
		}
		return raw
	}
	mapped := func(i int) bool {
		o := d.acquire(keys[i])
		defer d.put(o)
		return o.mapped.Load() != nil
	}
	held := lend(0)         // in use while the others come and go
	t.Cleanup(held.Release) // before the store closes, even on failure
	for round := 0; round < 2; round++ {
		for i := 1; i < len(keys); i++ {
			lend(i).Release()
			d.mapMu.Lock()
			over := d.mappedBytes > 3*size+size // the held one may stay beyond the budget
			d.mapMu.Unlock()
			if over {
				t.Fatalf("round %d, object %d: %d bytes mapped, budget %d", round, i, d.mappedBytes, 3*size)
			}
		}
	}
	if !mapped(0) {
		t.Fatal("the mapping of an object in use was dropped")
	}
	held.Release()
	for i := 1; i < len(keys); i++ {
		lend(i).Release()
	}
	if mapped(0) {
		t.Fatal("a released object kept its mapping past the budget")
	}
	// Resident pages of all the mappings: no more than the budget.
	rss := 0
	d.mapMu.Lock()
	for _, o := range d.maps {
		if p := o.mapped.Load(); p != nil {
			rss += mappingRss(t, uintptr(unsafe.Pointer(&(*p)[0])))
		}
	}
	d.mapMu.Unlock()
	if rss > 3*size/1024 {
		t.Fatalf("%d KiB of checked pages resident, budget %d KiB", rss, 3*size/1024)
	}
}

// mappingRss reads the resident KiB of the mapping starting at addr from
// /proc/self/smaps.
func mappingRss(t *testing.T, addr uintptr) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	want := strconv.FormatUint(uint64(addr), 16) + "-"
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, _, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			if _, err := strconv.ParseUint(lo, 16, 64); err == nil {
				in = strings.HasPrefix(f[0], want)
				continue
			}
		}
		if in && f[0] == "Rss:" && len(f) > 1 {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatalf("mapping at %#x not in smaps", addr)
	return 0
}
