package store

import (
	"bytes"
	"context"
	"crypto/sha1"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// openT opens a store in dir for a test and closes it at cleanup (a Close
// the test already did is harmless).
func openT(t testing.TB, dir string, opts Options) *Disk {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	d, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// testLogger logs through t so junk-file warnings show up with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// logCapture records log lines for tests that check warnings.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed*31+7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustCreate(t testing.TB, d *Disk, k Key, size uint32, off uint32, data []byte) {
	t.Helper()
	if err := d.Create(context.Background(), k, size, off, data, WriteOpts{}); err != nil {
		t.Fatalf("Create(%v, %d, %d, %d bytes): %v", k, size, off, len(data), err)
	}
}

func mustRead(t testing.TB, d *Disk, k Key, off uint32, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := d.Read(context.Background(), k, off, p); err != nil {
		t.Fatalf("Read(%v, %d, %d): %v", k, off, n, err)
	}
	return p
}

// checkContent reads the whole object, in one read and in odd-sized
// pieces, and compares with want.
func checkContent(t testing.TB, d *Disk, k Key, want []byte) {
	t.Helper()
	ctx := context.Background()
	st, err := d.Stat(ctx, k)
	if err != nil {
		t.Fatalf("Stat(%v): %v", k, err)
	}
	if int(st.Size) != len(want) {
		t.Fatalf("%v: size %d, want %d", k, st.Size, len(want))
	}
	got := mustRead(t, d, k, 0, len(want))
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%v: content differs at byte %d (block %d): got %#x want %#x", k, i, i/blockSize, got[i], want[i])
	}
	for off := 0; off < len(want); off += 3001 {
		n := min(1777, len(want)-off)
		got := mustRead(t, d, k, uint32(off), n)
		if i := firstDiff(got, want[off:off+n]); i >= 0 {
			t.Fatalf("%v: read at %d: differs at byte %d", k, off, off+i)
		}
	}
	h, err := d.Hash(ctx, k)
	if err != nil {
		t.Fatalf("Hash(%v): %v", k, err)
	}
	if h != sha1.Sum(want) {
		t.Fatalf("%v: hash mismatch", k)
	}
	if err := d.Verify(ctx, k); err != nil {
		t.Fatalf("Verify(%v): %v", k, err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// flipByte corrupts one byte of a file on disk, behind the store's back.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func objFile(dir string, k Key) string { return filepath.Join(dir, "obj", k.String()) }

func wantErr(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got %v, want %v", what, err, target)
	}
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func allocOf(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return statBlocks(fi) * 512
}

func statBlocks(fi os.FileInfo) int64 { return fi.Sys().(*syscall.Stat_t).Blocks }
