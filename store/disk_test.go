package store

import (
	"bytes"
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store/errorfs"
	"github.com/gosheep/gosheep/store/vfs"
)

var ctx = context.Background()

func open(t testing.TB, dir string, o Options) *Disk {
	t.Helper()
	d, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func rnd(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var key = ReplicaKey(proto.DataOID(0x7c2b25, 1))

func TestCreateWriteReadTable(t *testing.T) {
	const size = 4 << 20
	d := open(t, t.TempDir(), Options{})
	model := make([]byte, size)
	if err := d.Create(ctx, key, size, 1000, rnd(1, 5000), WriteOpts{Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	copy(model[1000:], rnd(1, 5000))
	for i, c := range []struct {
		off  uint32
		n    int
		want error
	}{
		{0, 4096, nil}, {100, 1, nil}, {4095, 2, nil}, {size - 1, 1, nil}, {8191, 9000, nil},
		{0, size, nil}, {size, 0, nil}, {size - 10, 11, ErrOutOfRange}, {0xffffffff, 2, ErrOutOfRange},
	} {
		data := rnd(uint64(i+10), c.n)
		err := d.Write(ctx, key, c.off, data, WriteOpts{Epoch: 4})
		if !errors.Is(err, c.want) {
			t.Fatalf("write %d+%d: %v, want %v", c.off, c.n, err, c.want)
		}
		if err == nil {
			copy(model[c.off:], data)
		}
		got := make([]byte, size)
		if err := d.Read(ctx, key, 0, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("after write %d+%d contents differ", c.off, c.n)
		}
	}
	// Unaligned reads.
	for _, r := range [][2]uint32{{1, 10}, {4090, 20}, {size - 3, 3}} {
		got := make([]byte, r[1])
		if err := d.Read(ctx, key, r[0], got); err != nil || !bytes.Equal(got, model[r[0]:r[0]+r[1]]) {
			t.Fatalf("read %v: %v", r, err)
		}
	}
	info, err := d.Stat(ctx, key)
	if err != nil || info.Size != size || info.Epoch != 4 {
		t.Fatalf("stat %+v %v", info, err)
	}
	if h, err := d.Hash(ctx, key); err != nil || h != sha1.Sum(model) {
		t.Fatalf("hash %x %v", h, err)
	}
	// Missing objects.
	other := ReplicaKey(proto.DataOID(1, 2))
	if err := d.Read(ctx, other, 0, make([]byte, 1)); !errors.Is(err, ErrNotFound) || !errors.Is(err, proto.ResNoObj) {
		t.Fatalf("read missing: %v", err)
	}
	if err := d.Write(ctx, other, 0, []byte{1}, WriteOpts{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("write missing: %v", err)
	}
	if err := d.Remove(ctx, other); err != nil {
		t.Fatalf("remove missing: %v", err)
	}
	if err := d.Create(ctx, other, 0, 0, nil, WriteOpts{}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("zero size create: %v", err)
	}
}

func TestTinyObjectsAndStrips(t *testing.T) {
	d := open(t, t.TempDir(), Options{})
	for _, size := range []uint32{1, 100, 4095, 4097, 12345} {
		k := StripKey(proto.DataOID(9, size), uint8(size%7))
		data := rnd(uint64(size), int(size))
		if err := d.Create(ctx, k, size, 0, data, WriteOpts{}); err != nil {
			t.Fatal(size, err)
		}
		if err := d.Write(ctx, k, size-1, []byte{0xaa}, WriteOpts{}); err != nil {
			t.Fatal(size, err)
		}
		data[size-1] = 0xaa
		got := make([]byte, size)
		if err := d.Read(ctx, k, 0, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: %v", size, err)
		}
	}
	objs, _ := d.List(ctx)
	if len(objs) != 5 || !objs[0].Key.EC {
		t.Fatalf("list %+v", objs)
	}
}

func TestZeroAndHoles(t *testing.T) {
	d := open(t, t.TempDir(), Options{})
	const size = 1 << 20
	data := rnd(3, size)
	d.Create(ctx, key, size, 0, data, WriteOpts{})
	if err := d.Zero(ctx, key, 100, 3*4096, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	clear(data[100 : 100+3*4096])
	got := make([]byte, size)
	if err := d.Read(ctx, key, 0, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after zero: %v", err)
	}
	// Sparse create: a fresh object allocates little.
	k := ReplicaKey(proto.DataOID(5, 5))
	before, _ := d.Usage()
	d.Create(ctx, k, 4<<20, 0, []byte("x"), WriteOpts{})
	after, _ := d.Usage()
	if after.Used-before.Used > 64<<10 {
		t.Fatalf("sparse create allocated %d bytes", after.Used-before.Used)
	}
}

func TestBitRotDetected(t *testing.T) {
	dir := t.TempDir()
	d := open(t, dir, Options{})
	data := rnd(4, 64<<10)
	d.Create(ctx, key, 64<<10, 0, data, WriteOpts{})
	d.Close()
	// Flip one byte of block 3 on disk.
	p := filepath.Join(dir, "obj", fileName(key))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	hdr := header{size: 64 << 10, blockSize: 4096}
	b := make([]byte, 1)
	off := hdr.dataOff() + 3*4096 + 17
	f.ReadAt(b, off)
	b[0] ^= 0x40
	f.WriteAt(b, off)
	f.Close()
	d2 := open(t, dir, Options{})
	err = d2.Read(ctx, key, 0, make([]byte, 64<<10))
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, proto.ResEIO) {
		t.Fatalf("bit rot not detected: %v", err)
	}
	if err := d2.Read(ctx, key, 0, make([]byte, 4096)); err != nil {
		t.Fatalf("good block unreadable: %v", err)
	}
	if err := d2.Verify(ctx, key); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify: %v", err)
	}
	// Rewriting the bad block heals it.
	if err := d2.Write(ctx, key, 3*4096, make([]byte, 4096), WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := d2.Verify(ctx, key); err != nil {
		t.Fatalf("after rewrite: %v", err)
	}
}

// TestCrashAtEveryWrite "crashes" the store after every k-th file-system
// mutation of a sequence of overlapping writes, reopens the directory and
// checks every block reads as some version it was given — never an error.
func TestCrashAtEveryWrite(t *testing.T) {
	const size = 32 << 10
	writes := []struct {
		off uint32
		n   int
	}{{0, size}, {100, 5000}, {4096, 4096}, {4000, 200}, {0, 8192}, {10000, 12000}, {3, 1}}
	for k := int64(0); ; k++ {
		dir := t.TempDir()
		crash := &errorfs.Crash{}
		d, err := Open(dir, Options{FS: errorfs.Wrap(vfs.OS{}, crash)})
		if err != nil {
			t.Fatal(err)
		}
		// versions[i] = every content block i may legitimately hold.
		versions := make([]map[string]bool, size/4096)
		cur := make([]byte, size)
		note := func() {
			for i := range versions {
				if versions[i] == nil {
					versions[i] = map[string]bool{}
				}
				versions[i][string(cur[i*4096:(i+1)*4096])] = true
			}
		}
		note()
		if err := d.Create(ctx, key, size, 0, nil, WriteOpts{}); err != nil {
			t.Fatal(err)
		}
		crash.Arm(k)
		for i, w := range writes {
			data := rnd(uint64(i+1), w.n)
			err := d.Write(ctx, key, w.off, data, WriteOpts{})
			copy(cur[w.off:], data)
			note()
			if err != nil {
				break
			}
		}
		done := !crash.Crashed()
		d.Close()
		d2, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if err := d2.Read(ctx, key, 0, got); err != nil {
			t.Fatalf("crash after %d mutations: read error %v", k, err)
		}
		for i := range versions {
			if !versions[i][string(got[i*4096:(i+1)*4096])] {
				t.Fatalf("crash after %d mutations: block %d holds data never written", k, i)
			}
		}
		// And the object is writable again after the crash.
		if err := d2.Write(ctx, key, 0, make([]byte, size), WriteOpts{}); err != nil {
			t.Fatalf("crash after %d: write after reopen: %v", k, err)
		}
		d2.Close()
		if done {
			if k < 5 {
				t.Fatalf("sequence finished after only %d mutations", k)
			}
			return
		}
	}
}

func TestFaults(t *testing.T) {
	for _, c := range []struct {
		name string
		in   errorfs.Injector
		op   func(d *Disk) error
		want error
	}{
		{"enospc on create", errorfs.OnPath("tmp", errorfs.On(errorfs.OpWrite, errorfs.ENOSPC)),
			func(d *Disk) error { return d.Create(ctx, key, 4096, 0, []byte("a"), WriteOpts{}) }, ErrNoSpace},
		{"enospc on write", errorfs.OnPath("obj", errorfs.After(0, errorfs.On(errorfs.OpWrite, errorfs.ENOSPC))),
			func(d *Disk) error { return d.Write(ctx, key, 0, []byte("b"), WriteOpts{}) }, ErrNoSpace},
		{"eio on read", errorfs.On(errorfs.OpRead, errorfs.EIO),
			func(d *Disk) error { return d.Read(ctx, key, 0, make([]byte, 10)) }, errorfs.EIO},
		{"failed fsync reported", errorfs.On(errorfs.OpSync, errorfs.EIO),
			func(d *Disk) error { return d.Write(ctx, key, 0, []byte("c"), WriteOpts{Sync: true}) }, errorfs.EIO},
		{"failed rename", errorfs.On(errorfs.OpRename, errorfs.EIO),
			func(d *Disk) error { return d.Create(ctx, key, 4096, 0, []byte("d"), WriteOpts{}) }, errorfs.EIO},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var armed bool
			var mu sync.Mutex
			in := errorfs.InjectorFunc(func(op errorfs.Op, p string) error {
				mu.Lock()
				defer mu.Unlock()
				if !armed {
					return nil
				}
				return c.in.Inject(op, p)
			})
			d := open(t, dir, Options{FS: errorfs.Wrap(vfs.OS{}, in)})
			if err := d.Create(ctx, key, 4096, 0, []byte("orig"), WriteOpts{}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			armed = true
			mu.Unlock()
			err := c.op(d)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			mu.Lock()
			armed = false
			mu.Unlock()
			// The object is still readable: old or new, never torn into an error.
			got := make([]byte, 4)
			if err := d.Read(ctx, key, 0, got); err != nil {
				t.Fatalf("object unreadable after fault: %v", err)
			}
			tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
			if len(tmps) != 0 {
				t.Fatalf("temp files left: %v", tmps)
			}
		})
	}
}

func TestCapacityAndNoSpace(t *testing.T) {
	d := open(t, t.TempDir(), Options{Capacity: 8 << 20, Reserve: 1})
	var err error
	i := 0
	for ; i < 100 && err == nil; i++ {
		err = d.Create(ctx, ReplicaKey(proto.DataOID(1, uint32(i))), 1<<20, 0, rnd(uint64(i), 1<<20), WriteOpts{})
	}
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, proto.ResNoSpace) {
		t.Fatalf("filled %d objects, last error %v", i, err)
	}
	if i < 5 || i > 9 {
		t.Fatalf("%d 1 MiB objects fit in 8 MiB", i-1)
	}
	u, _ := d.Usage()
	if u.Objects != uint64(i-1) || u.Used > 8<<20 {
		t.Fatalf("usage %+v", u)
	}
	// Removing frees space again.
	d.Remove(ctx, ReplicaKey(proto.DataOID(1, 0)))
	if err := d.Create(ctx, ReplicaKey(proto.DataOID(2, 0)), 1<<20, 0, rnd(9, 1<<20), WriteOpts{}); err != nil {
		t.Fatalf("after remove: %v", err)
	}
}

func TestStashAndStale(t *testing.T) {
	d := open(t, t.TempDir(), Options{})
	data := rnd(5, 10000)
	d.Create(ctx, key, 10000, 0, data, WriteOpts{Epoch: 7})
	if err := d.Stash(ctx, key, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Stat(ctx, key); !errors.Is(err, ErrNotFound) {
		t.Fatal("stashed object still live")
	}
	st, err := d.ListStale(ctx)
	if err != nil || len(st) != 1 || st[0].Epoch != 9 || st[0].ObjEpoch != 7 || st[0].Size != 10000 {
		t.Fatalf("stale list %+v %v", st, err)
	}
	got := make([]byte, 100)
	if err := d.ReadStale(ctx, key, 9, 5000, got); err != nil || !bytes.Equal(got, data[5000:5100]) {
		t.Fatalf("read stale: %v", err)
	}
	d.Create(ctx, key, 10, 0, []byte("live"), WriteOpts{})
	if err := d.Unstash(ctx, key, 9); !errors.Is(err, ErrExists) {
		t.Fatalf("unstash over live copy: %v", err)
	}
	d.Remove(ctx, key)
	if err := d.Unstash(ctx, key, 9); err != nil {
		t.Fatal(err)
	}
	if info, _ := d.Stat(ctx, key); info.Epoch != 7 {
		t.Fatalf("unstashed epoch %d", info.Epoch)
	}
	d.Stash(ctx, key, 10)
	if err := d.PurgeStale(ctx, key, 10); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.ListStale(ctx); len(st) != 0 {
		t.Fatalf("purged copy still listed: %v", st)
	}
}

func TestReopenKeepsIndexAndLock(t *testing.T) {
	dir := t.TempDir()
	d := open(t, dir, Options{})
	for i := 0; i < 10; i++ {
		d.Create(ctx, ReplicaKey(proto.DataOID(3, uint32(i))), 4096, 0, []byte{byte(i)}, WriteOpts{Epoch: uint32(i)})
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("second Open of a locked directory succeeded")
	}
	os.WriteFile(filepath.Join(dir, "obj", "junk"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "tmp", "leftover.1"), []byte("x"), 0o644)
	d.Close()
	d2 := open(t, dir, Options{})
	objs, _ := d2.List(ctx)
	if len(objs) != 10 || objs[9].Epoch != 9 {
		t.Fatalf("index after reopen: %+v", objs)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmps) != 0 {
		t.Fatal("temp files survive reopen")
	}
}

func TestConcurrentStress(t *testing.T) {
	d := open(t, t.TempDir(), Options{MaxOpenFiles: 4})
	const objs, size = 16, 64 << 10
	for i := 0; i < objs; i++ {
		d.Create(ctx, ReplicaKey(proto.DataOID(4, uint32(i))), size, 0, nil, WriteOpts{})
	}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < 300; i++ {
				k := ReplicaKey(proto.DataOID(4, uint32(r.IntN(objs))))
				off := uint32(r.IntN(size - 9000))
				switch r.IntN(4) {
				case 0:
					if err := d.Write(ctx, k, off, rnd(uint64(i), 1+r.IntN(9000)), WriteOpts{}); err != nil {
						t.Error(err)
					}
				case 1:
					if err := d.Zero(ctx, k, off, uint32(1+r.IntN(9000)), WriteOpts{}); err != nil {
						t.Error(err)
					}
				case 2:
					if err := d.Sync(ctx); err != nil {
						t.Error(err)
					}
				default:
					if err := d.Read(ctx, k, off, make([]byte, 1+r.IntN(9000))); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	for i := 0; i < objs; i++ {
		if err := d.Verify(ctx, ReplicaKey(proto.DataOID(4, uint32(i)))); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add((&header{size: 4 << 20, blockSize: 4096, epoch: 3, key: key}).marshal())
	f.Add([]byte("GSHPOBJ1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err == nil && (h.blockSize == 0 || h.blockSize > maxBlockSize) {
			t.Fatalf("accepted block size %d", h.blockSize)
		}
	})
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"807c2b2500000000", "007c2b2500000001_3", "x", "007c2b2500000001_03", "007c2b2500000001.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if k, ok := parseName(s); ok && fileName(k) != s {
			t.Fatalf("%q parsed to %v which names %q", s, k, fileName(k))
		}
		if k, e, ok := parseStaleName(s); ok && staleName(k, e) != s {
			t.Fatalf("stale %q round trip", s)
		}
	})
}

func BenchmarkWrite4K(b *testing.B) {
	d := open(b, b.TempDir(), Options{})
	d.Create(ctx, key, 4<<20, 0, nil, WriteOpts{})
	data := rnd(1, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		d.Write(ctx, key, uint32(i%1024)*4096, data, WriteOpts{})
		i += 7
	}
}

func BenchmarkRead4K(b *testing.B) {
	d := open(b, b.TempDir(), Options{})
	d.Create(ctx, key, 4<<20, 0, rnd(1, 4<<20), WriteOpts{})
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		d.Read(ctx, key, uint32(i%1024)*4096, p)
		i += 7
	}
}

func BenchmarkWrite1M(b *testing.B) {
	d := open(b, b.TempDir(), Options{})
	d.Create(ctx, key, 4<<20, 0, nil, WriteOpts{})
	data := rnd(1, 1<<20)
	b.SetBytes(1 << 20)
	i := 0
	for b.Loop() {
		d.Write(ctx, key, uint32(i%4)<<20, data, WriteOpts{})
		i++
	}
}

// BenchmarkRawFile is the baseline: the same pwrite/pread on a plain file.
func BenchmarkRawFile(b *testing.B) {
	f, _ := os.Create(filepath.Join(b.TempDir(), "raw"))
	defer f.Close()
	f.Truncate(4 << 20)
	for _, n := range []int{4096, 1 << 20} {
		data := rnd(1, n)
		b.Run(fmt.Sprintf("write%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			i := 0
			for b.Loop() {
				f.WriteAt(data, int64(i%((4<<20)/n))*int64(n))
				i += 7
			}
		})
		b.Run(fmt.Sprintf("read%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			i := 0
			for b.Loop() {
				f.ReadAt(data, int64(i%((4<<20)/n))*int64(n))
				i += 7
			}
		})
	}
}

func TestCreateOfMostlyZeroDataStaysSparse(t *testing.T) {
	d := open(t, t.TempDir(), Options{})
	data := make([]byte, 4<<20)
	copy(data[5000:], rnd(1, 3000))
	copy(data[3<<20+17:], rnd(2, 10))
	if err := d.Create(ctx, key, 4<<20, 0, data, WriteOpts{}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4<<20)
	if err := d.Read(ctx, key, 0, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content differs: %v", err)
	}
	if u, _ := d.Usage(); u.Used > 64<<10 {
		t.Fatalf("4 MiB object with 3 KiB of data allocates %d bytes", u.Used)
	}
}
