package store

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Each benchmark has a "raw" sub-benchmark doing the same pread/pwrite on
// a plain file (through os.File) next to the "store" one, so the store's
// overhead shows as the difference. Everything is in the page cache; no
// fsync (NoSync), as for acknowledged-but-not-flushed guest writes.

const benchObj = 4 << 20

// benchOffsets are random align-aligned offsets into a benchObj object.
func benchOffsets(align int) []int64 {
	rng := rand.New(rand.NewPCG(1, 1))
	offs := make([]int64, 1024)
	for i := range offs {
		offs[i] = int64(rng.IntN(benchObj/align)) * int64(align)
	}
	return offs
}

func benchRaw(b *testing.B, size int, read bool) {
	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(pattern(1, benchObj), 0); err != nil {
		b.Fatal(err)
	}
	buf := pattern(2, size)
	offs := benchOffsets(size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := offs[i%len(offs)]
		if read {
			_, err = f.ReadAt(buf, off)
		} else {
			_, err = f.WriteAt(buf, off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func benchStore(b *testing.B, size int, read bool) {
	d := openT(b, b.TempDir(), Options{NoSync: true})
	k := ReplicaKey(1)
	mustCreate(b, d, k, benchObj, 0, pattern(1, benchObj))
	buf := pattern(2, size)
	offs := benchOffsets(size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var err error
	for i := 0; b.Loop(); i++ {
		off := uint32(offs[i%len(offs)])
		if read {
			err = d.Read(bg, k, off, buf)
		} else {
			err = d.Write(bg, k, off, buf, WriteOpts{Epoch: 1})
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite4K(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, 4096, false) })
	b.Run("store", func(b *testing.B) { benchStore(b, 4096, false) })
}

func BenchmarkRead4K(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, 4096, true) })
	b.Run("store", func(b *testing.B) { benchStore(b, 4096, true) })
}

func BenchmarkWrite1M(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, 1<<20, false) })
	b.Run("store", func(b *testing.B) { benchStore(b, 1<<20, false) })
}

func BenchmarkRead1M(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, 1<<20, true) })
	b.Run("store", func(b *testing.B) { benchStore(b, 1<<20, true) })
}

// BenchmarkWrite512 is a sub-block write (read-modify-write of one block).
func BenchmarkWrite512(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, 512, false) })
	b.Run("store", func(b *testing.B) { benchStore(b, 512, false) })
}

// BenchmarkCreate4M replaces a 4 MiB object; raw writes a temp file and
// renames it over the old one, as the store does.
func BenchmarkCreate4M(b *testing.B) {
	data := pattern(3, benchObj)
	b.Run("raw", func(b *testing.B) {
		dir := b.TempDir()
		b.SetBytes(benchObj)
		b.ReportAllocs()
		for b.Loop() {
			f, err := os.OpenFile(filepath.Join(dir, "x.tmp"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.WriteAt(data, 4096); err != nil {
				b.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "x.tmp"), filepath.Join(dir, "x")); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("store", func(b *testing.B) {
		d := openT(b, b.TempDir(), Options{NoSync: true})
		b.SetBytes(benchObj)
		b.ReportAllocs()
		for b.Loop() {
			if err := d.Create(bg, ReplicaKey(1), benchObj, 0, data, WriteOpts{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkWrite4KParallel: 4K writes to 64 objects from all CPUs.
func BenchmarkWrite4KParallel(b *testing.B) {
	d := openT(b, b.TempDir(), Options{NoSync: true})
	for i := range 64 {
		mustCreate(b, d, ReplicaKey(oidN(i)), benchObj, 0, pattern(1, benchObj))
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		buf := pattern(2, 4096)
		for pb.Next() {
			k := ReplicaKey(oidN(rng.IntN(64)))
			if err := d.Write(bg, k, uint32(rng.IntN(benchObj/4096))*4096, buf, WriteOpts{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
