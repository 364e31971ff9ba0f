package store

import (
	"context"
	"crypto/sha1"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

var bg = context.Background()

// Sizes that exercise tiny objects, exact blocks and short last blocks.
var testSizes = []uint32{0, 1, 100, 4095, 4096, 4097, 3*4096 + 17, 64 << 10, 4 << 20}

func TestCreateRead(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	for i, size := range testSizes {
		for j, tc := range []struct{ off, n uint32 }{
			{0, 0}, {0, size}, {0, size / 2}, {size / 3, size - size/3}, {size / 2, min(size-size/2, 5000)},
		} {
			k := ReplicaKey(proto.DataOID(1, uint32(i*10+j)))
			want := make([]byte, size)
			data := pattern(uint64(i*10+j), int(tc.n))
			copy(want[tc.off:], data)
			mustCreate(t, d, k, size, tc.off, data)
			checkContent(t, d, k, want)
		}
	}
}

func TestCreateReplaces(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(99)
	mustCreate(t, d, k, 3*4096, 0, pattern(1, 3*4096))
	// Replace with a smaller object holding less data: nothing of the old
	// one may show through, and the object count is unchanged.
	mustCreate(t, d, k, 5000, 10, []byte("new"))
	want := make([]byte, 5000)
	copy(want[10:], "new")
	checkContent(t, d, k, want)
	u, err := d.Usage()
	if err != nil || u.Objects != 1 {
		t.Fatalf("Usage after replace: %+v, %v", u, err)
	}
	// Also replace an object that is not in the open-file cache, and one
	// whose file is corrupt.
	d.Close()
	d = openT(t, dir, Options{NoSync: true})
	mustCreate(t, d, k, 100, 0, []byte("third"))
	want = make([]byte, 100)
	copy(want, "third")
	checkContent(t, d, k, want)
	d.Close()
	flipByte(t, objFile(dir, k), 3) // the header
	d = openT(t, dir, Options{NoSync: true})
	wantErr(t, d.Read(bg, k, 0, make([]byte, 5)), ErrCorrupt, "read of corrupt header")
	mustCreate(t, d, k, 100, 0, []byte("fourth"))
	copy(want, "fourth")
	checkContent(t, d, k, want)
	if u, _ := d.Usage(); u.Objects != 1 {
		t.Fatalf("objects = %d, want 1", u.Objects)
	}
	if names := dirNames(t, filepath.Join(dir, "obj")); len(names) != 1 {
		t.Fatalf("obj/ holds %v", names)
	}
}

func TestWrite(t *testing.T) {
	const size = 5*4096 + 1000 // short last block
	for _, tc := range []struct {
		name string
		off  uint32
		n    int
	}{
		{"aligned block", 4096, 4096},
		{"aligned multi", 0, 3 * 4096},
		{"sub-block head", 10, 100},
		{"sub-block end of block", 4000, 96},
		{"cross block", 4000, 200},
		{"unaligned multi", 1000, 3*4096 + 5},
		{"short last block whole", 5 * 4096, 1000},
		{"short last block part", 5*4096 + 10, 10},
		{"into short last block", 4*4096 + 7, 4096 + 993},
		{"whole object", 0, size},
		{"last byte", size - 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := openT(t, dir, Options{NoSync: true})
			k := StripKey(proto.DataOID(2, 1), 3)
			want := pattern(1, size)
			mustCreate(t, d, k, size, 0, want)
			data := pattern(2, tc.n)
			if err := d.Write(bg, k, tc.off, data, WriteOpts{Epoch: 4}); err != nil {
				t.Fatal(err)
			}
			copy(want[tc.off:], data)
			checkContent(t, d, k, want)
			// And after a restart (header flags, checksum area on disk).
			d.Close()
			d = openT(t, dir, Options{NoSync: true})
			checkContent(t, d, k, want)
			if st, _ := d.Stat(bg, k); st.Epoch != 4 {
				t.Fatalf("epoch %d, want 4", st.Epoch)
			}
		})
	}
}

func TestWriteToHoles(t *testing.T) {
	// Sub-block writes into never-written blocks read-modify-write a hole.
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(5)
	mustCreate(t, d, k, 4<<20, 0, nil)
	want := make([]byte, 4<<20)
	for i, w := range []struct{ off, n int }{{512, 512}, {8192 + 4000, 300}, {1 << 20, 4096}, {4<<20 - 10, 10}} {
		data := pattern(uint64(i), w.n)
		if err := d.Write(bg, k, uint32(w.off), data, WriteOpts{}); err != nil {
			t.Fatal(err)
		}
		copy(want[w.off:], data)
	}
	checkContent(t, d, k, want)
}

func TestRangeChecks(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(7)
	mustCreate(t, d, k, 8192, 0, pattern(1, 8192))
	missing := ReplicaKey(8)
	buf := make([]byte, 2)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"read past end", d.Read(bg, k, 8191, buf), ErrOutOfRange},
		{"read off beyond size, empty", d.Read(bg, k, 8193, nil), ErrOutOfRange},
		{"read overflow", d.Read(bg, k, ^uint32(0), buf), ErrOutOfRange},
		{"write past end", d.Write(bg, k, 8191, buf, WriteOpts{}), ErrOutOfRange},
		{"write overflow", d.Write(bg, k, ^uint32(0), buf, WriteOpts{}), ErrOutOfRange},
		{"zero overflow", d.Zero(bg, k, 4096, ^uint32(0), WriteOpts{}), ErrOutOfRange},
		{"zero past end", d.Zero(bg, k, 8000, 193, WriteOpts{}), ErrOutOfRange},
		{"create data beyond size", d.Create(bg, missing, 10, 9, buf, WriteOpts{}), ErrOutOfRange},
		{"create overflow", d.Create(bg, missing, 10, ^uint32(0), buf, WriteOpts{}), ErrOutOfRange},
		{"read missing", d.Read(bg, missing, 0, buf), ErrNotFound},
		{"read missing, empty", d.Read(bg, missing, 0, nil), ErrNotFound},
		{"write missing", d.Write(bg, missing, 0, buf, WriteOpts{}), ErrNotFound},
		{"zero missing", d.Zero(bg, missing, 0, 1, WriteOpts{}), ErrNotFound},
		{"stat missing", func() error { _, err := d.Stat(bg, missing); return err }(), ErrNotFound},
		{"hash missing", func() error { _, err := d.Hash(bg, missing); return err }(), ErrNotFound},
		{"verify missing", d.Verify(bg, missing), ErrNotFound},
		{"read ok at end, empty", d.Read(bg, k, 8192, nil), nil},
		{"write ok empty", d.Write(bg, k, 8192, nil, WriteOpts{Epoch: 9}), nil},
		{"zero ok empty", d.Zero(bg, k, 8192, 0, WriteOpts{}), nil},
	} {
		if !errors.Is(tc.err, tc.want) || (tc.want == nil && tc.err != nil) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if _, err := d.Stat(bg, missing); err == nil {
		t.Fatal("failed creates left an object")
	}
	// Empty writes change nothing, not even the epoch.
	if st, _ := d.Stat(bg, k); st.Epoch != 0 {
		t.Fatalf("empty write set epoch %d", st.Epoch)
	}
	if proto.ResultOf(d.Read(bg, missing, 0, buf)) != proto.ResNoObj {
		t.Fatal("ErrNotFound does not map to ResNoObj")
	}
	// Large lengths beyond 4 GiB on 64-bit must not wrap either.
	if err := checkRange(k, 100, 1, 1<<32-1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("checkRange wrap: %v", err)
	}
}

func TestZero(t *testing.T) {
	const size = 8*4096 + 300
	for _, tc := range []struct {
		name string
		off  uint32
		n    uint32
	}{
		{"one block", 4096, 4096},
		{"many blocks", 4096, 5 * 4096},
		{"partial", 100, 200},
		{"cross partial", 4000, 4096},
		{"partial+whole+partial", 2000, 3*4096 + 100},
		{"to end with short block", 3 * 4096, size - 3*4096},
		{"everything", 0, size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := openT(t, dir, Options{NoSync: true})
			k := ReplicaKey(11)
			want := pattern(3, size)
			mustCreate(t, d, k, size, 0, want)
			before := allocOf(t, objFile(dir, k))
			u0, _ := d.Usage()
			if err := d.Zero(bg, k, tc.off, tc.n, WriteOpts{Epoch: 2}); err != nil {
				t.Fatal(err)
			}
			clear(want[tc.off : tc.off+tc.n])
			checkContent(t, d, k, want)
			after := allocOf(t, objFile(dir, k))
			end := int(tc.off + tc.n)
			whole := end/4096 - (int(tc.off)+4095)/4096
			if end == size && size%4096 != 0 {
				whole++
			}
			if whole > 0 && after > before-int64(whole-1)*4096 || whole <= 0 && after != before {
				t.Fatalf("%d whole blocks zeroed but allocation went %d -> %d", whole, before, after)
			}
			u1, _ := d.Usage()
			if int64(u1.Used)-int64(u0.Used) != after-before {
				t.Fatalf("Used changed by %d, file allocation by %d", int64(u1.Used)-int64(u0.Used), after-before)
			}
			d.Close()
			d = openT(t, dir, Options{NoSync: true})
			checkContent(t, d, k, want)
		})
	}
}

func TestCorruptionDetected(t *testing.T) {
	const size = 6*4096 + 123
	for _, tc := range []struct {
		name   string
		fileAt func(h header) int64 // byte of the file to flip
		badOff uint64               // logical block offset reported; ^0 = header
	}{
		{"data block 0", func(h header) int64 { return int64(h.dataOff) + 5 }, 0},
		{"data block 3", func(h header) int64 { return int64(h.dataOff) + 3*4096 + 4095 }, 3 * 4096},
		{"short last block", func(h header) int64 { return int64(h.dataOff) + 6*4096 + 100 }, 6 * 4096},
		{"checksum prev+cur of block 2", func(h header) int64 { return sumOff + 2*pairLen + 5 }, 2 * 4096},
		{"fixed header", func(h header) int64 { return 20 }, ^uint64(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := openT(t, dir, Options{NoSync: true})
			k := StripKey(proto.DataOID(3, 3), 1)
			want := pattern(4, size)
			mustCreate(t, d, k, size, 0, want)
			d.Close()
			h := newHeader(k, size, 0)
			at := tc.fileAt(h)
			if strings.HasPrefix(tc.name, "checksum") {
				// Flip both slots so neither matches.
				flipByte(t, objFile(dir, k), at-4)
			}
			flipByte(t, objFile(dir, k), at)
			d = openT(t, dir, Options{NoSync: true})

			err := d.Read(bg, k, 0, make([]byte, size))
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("read: %v, want a *CorruptError", err)
			}
			if proto.ResultOf(err) != proto.ResEIO {
				t.Fatalf("corruption maps to %v", proto.ResultOf(err))
			}
			if !strings.Contains(err.Error(), k.String()) {
				t.Fatalf("error %q does not name the object", err)
			}
			if tc.badOff == ^uint64(0) {
				if ce.Reason == "" {
					t.Fatalf("header corruption reported as %v", err)
				}
				// Everything fails cleanly; Remove and re-Create still work.
				_, serr := d.Stat(bg, k)
				wantErr(t, serr, ErrCorrupt, "stat")
				wantErr(t, d.Write(bg, k, 0, []byte{1}, WriteOpts{}), ErrCorrupt, "write")
				if l, _ := d.List(bg); len(l) != 0 {
					t.Fatalf("List shows a corrupt object: %v", l)
				}
				if err := d.Remove(bg, k); err != nil {
					t.Fatal(err)
				}
				return
			}
			if len(ce.Offsets) != 1 || ce.Offsets[0] != tc.badOff {
				t.Fatalf("reported offsets %v, want [%d]", ce.Offsets, tc.badOff)
			}
			if !strings.Contains(err.Error(), "offset "+itoa(tc.badOff)) {
				t.Fatalf("error %q lacks the block offset", err)
			}
			// Other blocks still read; the bad one fails even for one byte.
			for b := uint64(0); b*4096 < size; b++ {
				n := min(4096, size-int(b*4096))
				err := d.Read(bg, k, uint32(b*4096), make([]byte, n))
				if (b*4096 == tc.badOff) != (err != nil) {
					t.Fatalf("block %d: read err %v", b, err)
				}
			}
			wantErr(t, d.Read(bg, k, uint32(tc.badOff)+1, make([]byte, 1)), ErrCorrupt, "one-byte read")
			// A partial write to the rotten block cannot merge with it.
			wantErr(t, d.Write(bg, k, uint32(tc.badOff)+1, []byte{1}, WriteOpts{}), ErrCorrupt, "partial write")
			_, herr := d.Hash(bg, k)
			wantErr(t, herr, ErrCorrupt, "hash")
			verr := d.Verify(bg, k)
			if !errors.As(verr, &ce) || ce.Count != 1 || !slices.Equal(ce.Offsets, []uint64{tc.badOff}) {
				t.Fatalf("Verify: %v", verr)
			}
			// Overwriting the whole block heals it.
			blk := want[tc.badOff:min(tc.badOff+4096, size)]
			if err := d.Write(bg, k, uint32(tc.badOff), blk, WriteOpts{}); err != nil {
				t.Fatal(err)
			}
			checkContent(t, d, k, want)
		})
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func TestVerifyListsManyBadBlocks(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(12)
	mustCreate(t, d, k, 1<<20, 0, pattern(5, 1<<20))
	d.Close()
	h := newHeader(k, 1<<20, 0)
	for b := 0; b < 100; b++ {
		flipByte(t, objFile(dir, k), int64(h.dataOff)+int64(b*2)*4096)
	}
	d = openT(t, dir, Options{NoSync: true})
	var ce *CorruptError
	if err := d.Verify(bg, k); !errors.As(err, &ce) || ce.Count != 100 || len(ce.Offsets) != maxReported {
		t.Fatalf("Verify: %v", err)
	}
	if ce.Offsets[1] != 2*4096 || !strings.Contains(ce.Error(), "100 blocks") {
		t.Fatalf("Verify reported %v", ce)
	}
}

func TestEpochs(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(13)
	ctx := bg
	mustCreate(t, d, k, 8192, 0, nil)
	check := func(want uint32) {
		t.Helper()
		st, err := d.Stat(ctx, k)
		if err != nil || st.Epoch != want {
			t.Fatalf("epoch %d (%v), want %d", st.Epoch, err, want)
		}
	}
	check(0)
	if err := d.Create(ctx, k, 8192, 0, nil, WriteOpts{Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	check(3)
	d.Write(ctx, k, 0, []byte{1}, WriteOpts{Epoch: 2})
	check(3)
	d.Write(ctx, k, 0, []byte{1}, WriteOpts{Epoch: 5})
	check(5)
	d.Zero(ctx, k, 0, 10, WriteOpts{Epoch: 7})
	check(7)
	d.Close()
	d = openT(t, dir, Options{NoSync: true})
	check(7)
	l, err := d.List(ctx)
	if err != nil || len(l) != 1 || l[0] != (ObjInfo{Key: k, Size: 8192, Epoch: 7}) {
		t.Fatalf("List: %v %v", l, err)
	}
}

func TestListAndKeys(t *testing.T) {
	dir := t.TempDir()
	logs := new(logCapture)
	d := openT(t, dir, Options{NoSync: true})
	oid := proto.DataOID(0x7c2b25, 9)
	keys := []Key{ReplicaKey(oid), StripKey(oid, 0), StripKey(oid, 5), ReplicaKey(proto.InodeOID(0x7c2b25))}
	for i, k := range keys {
		mustCreate(t, d, k, uint32(1000+i), 0, pattern(uint64(i), 10))
	}
	for i, k := range keys {
		got := mustRead(t, d, k, 0, 10)
		if firstDiff(got, pattern(uint64(i), 10)) >= 0 {
			t.Fatalf("%v holds another key's data", k)
		}
	}
	names := dirNames(t, filepath.Join(dir, "obj"))
	for _, want := range []string{"007c2b2500000009", "007c2b2500000009_0", "007c2b2500000009_5", "807c2b2500000000"} {
		if !slices.Contains(names, want) {
			t.Fatalf("obj/ = %v, missing %s", names, want)
		}
	}
	d.Close()
	// Junk and a temp file appear while closed: the temp file is removed,
	// the junk ignored (and logged), and both stay out of List.
	for _, junk := range []string{"README", "007C2B2500000009", "007c2b2500000009_x", "007c2b2500000009_1.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, "obj", junk), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d = openT(t, dir, Options{NoSync: true, Logger: slogTo(logs)})
	l, err := d.List(bg)
	if err != nil {
		t.Fatal(err)
	}
	var got []Key
	for _, o := range l {
		got = append(got, o.Key)
	}
	want := []Key{keys[0], keys[1], keys[2], keys[3]}
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "obj", "007c2b2500000009_1.tmp")); !os.IsNotExist(err) {
		t.Fatal("leftover temp file not removed at open")
	}
	if !strings.Contains(logs.String(), "README") {
		t.Fatalf("junk not logged: %s", logs)
	}
	if u, _ := d.Usage(); u.Objects != 4 {
		t.Fatalf("objects %d, want 4", u.Objects)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := StripKey(77, 2)
	mustCreate(t, d, k, 1<<20, 0, pattern(1, 1<<20))
	u0, _ := d.Usage()
	for i := 0; i < 2; i++ { // idempotent
		if err := d.Remove(bg, k); err != nil {
			t.Fatalf("Remove #%d: %v", i, err)
		}
	}
	_, err := d.Stat(bg, k)
	wantErr(t, err, ErrNotFound, "stat after remove")
	u1, _ := d.Usage()
	if u1.Objects != u0.Objects-1 || u0.Used-u1.Used < 1<<20 {
		t.Fatalf("usage %+v -> %+v", u0, u1)
	}
	if _, err := os.Stat(objFile(dir, k)); !os.IsNotExist(err) {
		t.Fatal("file still there")
	}
	// A never-opened object removes too.
	mustCreate(t, d, k, 10, 0, nil)
	d.Close()
	d = openT(t, dir, Options{NoSync: true})
	if err := d.Remove(bg, k); err != nil {
		t.Fatal(err)
	}
	if u, _ := d.Usage(); u.Objects != 0 || u.Used != 0 {
		t.Fatalf("usage after removing everything: %+v", u)
	}
}

func TestHashHolesAsZeros(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(14)
	mustCreate(t, d, k, 1<<20+5, 4096*10+3, []byte("x"))
	want := make([]byte, 1<<20+5)
	want[4096*10+3] = 'x'
	h, err := d.Hash(bg, k)
	if err != nil || h != sha1.Sum(want) {
		t.Fatalf("hash %x, %v", h, err)
	}
	empty := ReplicaKey(15)
	mustCreate(t, d, empty, 0, 0, nil)
	if h, err := d.Hash(bg, empty); err != nil || h != sha1.Sum(nil) {
		t.Fatalf("empty object hash %x, %v", h, err)
	}
}

func TestLockAndClose(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	_, err := Open(dir, Options{})
	wantErr(t, err, ErrLocked, "second Open")
	if !strings.Contains(err.Error(), dir) {
		t.Fatalf("lock error %q does not name the directory", err)
	}
	k := ReplicaKey(1)
	mustCreate(t, d, k, 10, 0, nil)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	wantErr(t, d.Read(bg, k, 0, make([]byte, 1)), ErrClosed, "read after close")
	wantErr(t, d.Create(bg, k, 1, 0, nil, WriteOpts{}), ErrClosed, "create after close")
	_, err = d.Usage()
	wantErr(t, err, ErrClosed, "usage after close")
	wantErr(t, d.Sync(bg), ErrClosed, "sync after close")
	// The lock is released.
	d2 := openT(t, dir, Options{NoSync: true})
	checkContent(t, d2, k, make([]byte, 10))
}

func TestContextCancelled(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	ctx, cancel := context.WithCancel(bg)
	cancel()
	k := ReplicaKey(1)
	wantErr(t, d.Create(ctx, k, 10, 0, nil, WriteOpts{}), context.Canceled, "create")
	wantErr(t, d.Read(ctx, k, 0, nil), context.Canceled, "read")
	_, err := d.List(ctx)
	wantErr(t, err, context.Canceled, "list")
	wantErr(t, d.Sync(ctx), context.Canceled, "sync")
}

func TestUsageAndCapacity(t *testing.T) {
	dir := t.TempDir()
	const capacity = 1 << 20
	d := openT(t, dir, Options{NoSync: true, Capacity: capacity, Reserve: 64 << 10})
	u, err := d.Usage()
	if err != nil || u.Capacity != capacity || u.Used != 0 || u.Free != capacity-64<<10 {
		t.Fatalf("fresh usage %+v %v", u, err)
	}
	// Sparse creates cost only their metadata page.
	k := ReplicaKey(1)
	mustCreate(t, d, k, 4<<20, 0, nil)
	u, _ = d.Usage()
	if u.Used != uint64(allocOf(t, objFile(dir, k))) || u.Used > 16<<10 {
		t.Fatalf("after sparse create: %+v, file %d", u, allocOf(t, objFile(dir, k)))
	}
	// Fill until the capacity minus reserve refuses.
	var err2 error
	written := 0
	for off := 0; off < 4<<20; off += 64 << 10 {
		if err2 = d.Write(bg, k, uint32(off), pattern(1, 64<<10), WriteOpts{}); err2 != nil {
			break
		}
		written += 64 << 10
	}
	wantErr(t, err2, ErrNoSpace, "write beyond capacity")
	if proto.ResultOf(err2) != proto.ResNoSpace {
		t.Fatalf("maps to %v", proto.ResultOf(err2))
	}
	u, _ = d.Usage()
	if u.Used+64<<10 > capacity || written < capacity-3*(64<<10) {
		t.Fatalf("refused with %d written, usage %+v", written, u)
	}
	if u.Used != uint64(allocOf(t, objFile(dir, k))) {
		t.Fatalf("Used %d, file allocation %d", u.Used, allocOf(t, objFile(dir, k)))
	}
	// Overwrites of allocated blocks need no space and still work.
	if err := d.Write(bg, k, 0, pattern(2, 64<<10), WriteOpts{}); err != nil {
		t.Fatalf("overwrite at capacity: %v", err)
	}
	err = d.Create(bg, ReplicaKey(2), 1<<20, 0, pattern(3, 1<<20), WriteOpts{})
	wantErr(t, err, ErrNoSpace, "create beyond capacity")
	if _, err := d.Stat(bg, ReplicaKey(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused create left an object: %v", err)
	}
	// Zero frees space, and writes fit again.
	if err := d.Zero(bg, k, 0, 4<<20, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	u, _ = d.Usage()
	if u.Used > 16<<10 {
		t.Fatalf("after zeroing everything: %+v", u)
	}
	if err := d.Write(bg, k, 0, pattern(1, 512<<10), WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	// Used is recomputed from the files at open and matches.
	before, _ := d.Usage()
	d.Close()
	d = openT(t, dir, Options{NoSync: true, Capacity: capacity})
	after, _ := d.Usage()
	if before.Used != after.Used || after.Objects != 1 {
		t.Fatalf("usage before restart %+v, after %+v", before, after)
	}
}

func TestUsageFileSystem(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	u, err := d.Usage()
	if err != nil || u.Capacity == 0 || u.Free == 0 || u.Capacity < u.Free {
		t.Fatalf("usage %+v, %v", u, err)
	}
	// A reserve larger than the file system refuses every allocation.
	d2 := openT(t, t.TempDir(), Options{NoSync: true, Reserve: 1 << 62})
	err = d2.Create(bg, ReplicaKey(1), 4096, 0, []byte{1}, WriteOpts{})
	wantErr(t, err, ErrNoSpace, "create with huge reserve")
	if u, _ := d2.Usage(); u.Free != 0 {
		t.Fatalf("free %d with huge reserve", u.Free)
	}
}

func TestOpenFileCacheBounded(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true, MaxOpenFiles: 4})
	const n = 40
	for i := range n {
		k := ReplicaKey(proto.OID(i))
		mustCreate(t, d, k, 8192, 0, pattern(uint64(i), 8192))
		d.Write(bg, ReplicaKey(proto.OID(i/2)), 100, []byte{byte(i)}, WriteOpts{Epoch: uint32(i)})
	}
	for round := 0; round < 3; round++ {
		for i := range n {
			k := ReplicaKey(proto.OID(i))
			want := pattern(uint64(i), 8192)
			if j := 2*i + 1; j < n {
				want[100] = byte(j)
			} else if 2*i < n {
				want[100] = byte(2 * i)
			}
			if got := mustRead(t, d, k, 0, 8192); firstDiff(got, want) >= 0 {
				t.Fatalf("object %d wrong after eviction", i)
			}
		}
	}
	d.mu.Lock()
	lru, objs := d.lruLen, len(d.objs)
	d.mu.Unlock()
	if lru > 4 || objs > 4 {
		t.Fatalf("open files %d, tracked objects %d; bound 4", lru, objs)
	}
	// Evicted objects were closed cleanly: reopening trusts them (no
	// dirty flag left behind).
	d.Close()
	for i := range n {
		h, err := readHeaderFile(objFile(dir, ReplicaKey(proto.OID(i))))
		if err != nil || h.rec.flags&recDirty != 0 {
			t.Fatalf("object %d header after close: %+v, %v", i, h.rec, err)
		}
	}
}

func readHeaderFile(path string) (header, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return header{}, err
	}
	return parseHeader(b)
}

func TestRescan(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true, RescanInterval: -1})
	// Fragmenting writes make the file system allocate extent blocks at
	// writeback, after our last look.
	for i := range 3 {
		k := ReplicaKey(oidN(i))
		mustCreate(t, d, k, 4<<20, 0, nil)
		for b := 0; b < 1024; b += 3 {
			d.Write(bg, k, uint32(b*4096), pattern(uint64(b), 4096), WriteOpts{})
		}
	}
	d.Stash(bg, ReplicaKey(oidN(2)), 1)
	os.WriteFile(filepath.Join(dir, "obj", "junk"), make([]byte, 8192), 0o644)
	for _, n := range dirNames(t, filepath.Join(dir, "obj")) {
		f, _ := os.Open(filepath.Join(dir, "obj", n))
		f.Sync() // force writeback behind the store's back
		f.Close()
	}
	actual := func() (used int64) {
		for _, sub := range []string{"obj", "stale"} {
			for _, n := range dirNames(t, filepath.Join(dir, sub)) {
				if n != "junk" {
					used += allocOf(t, filepath.Join(dir, sub, n))
				}
			}
		}
		return used
	}
	u0, _ := d.Usage()
	t.Logf("drift before rescan: %d bytes", actual()-int64(u0.Used))
	if err := d.Rescan(bg); err != nil {
		t.Fatal(err)
	}
	u, _ := d.Usage()
	if int64(u.Used) != actual() || u.Objects != 2 {
		t.Fatalf("after rescan: %+v, files allocate %d", u, actual())
	}
	// Usage starts background rescans when they are due.
	d.Close()
	d = openT(t, dir, Options{NoSync: true, RescanInterval: time.Nanosecond})
	before := d.lastRescan.Load()
	d.Usage()
	d.bg.Wait()
	if d.lastRescan.Load() == before {
		t.Fatal("no background rescan")
	}
}

// SumsHash: copies with the same content agree however they got it (one
// create; a sparse create then writes, a written block of zeros against a
// hole, on two stores as two nodes would), and a one-block difference
// shows, without reading the data.
func TestSumsHash(t *testing.T) {
	a := openT(t, t.TempDir(), Options{NoSync: true})
	b := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(16)
	const size = 4 << 20
	content := pattern(7, size)
	clear(content[1<<20 : 1<<20+8192]) // zeros: written on a, a hole on b
	mustCreate(t, a, k, size, 0, content)
	mustCreate(t, b, k, size, 0, nil)
	for _, r := range [][2]int{{0, 1 << 20}, {1<<20 + 8192, size}} {
		if err := b.Write(bg, k, uint32(r[0]), content[r[0]:r[1]], WriteOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	ha, err := a.SumsHash(bg, k)
	if err != nil {
		t.Fatal(err)
	}
	if hb, err := b.SumsHash(bg, k); err != nil || hb != ha {
		t.Fatalf("same content: %x against %x (%v)", hb, ha, err)
	}
	if err := b.Write(bg, k, 2<<20+100, []byte{content[2<<20+100] ^ 1}, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	if hb, err := b.SumsHash(bg, k); err != nil || hb == ha {
		t.Fatalf("one byte changed: fingerprints still equal (%v)", err)
	}
	if _, err := a.SumsHash(bg, ReplicaKey(17)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing object: %v, want ErrNotFound", err)
	}
}
