package vfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestOSFile(t *testing.T) {
	fs := Default()
	dir := t.TempDir()
	name := filepath.Join(dir, "f")
	f, err := fs.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{7}, 64<<10)
	if n, err := f.WriteAt(data, 4096); n != len(data) || err != nil {
		t.Fatalf("WriteAt: %d %v", n, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil || st.Size != 4096+64<<10 || st.Alloc < 64<<10 || st.Dir {
		t.Fatalf("Stat: %+v %v", st, err)
	}
	// Punching frees space; the range reads as zeros and the size stays.
	if err := f.PunchHole(4096+8192, 32<<10); err != nil {
		t.Fatal(err)
	}
	st2, _ := f.Stat()
	if st2.Size != st.Size || st2.Alloc > st.Alloc-32<<10 {
		t.Fatalf("after punch: %+v (before %+v)", st2, st)
	}
	p := make([]byte, 64<<10)
	if _, err := f.ReadAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[8192 : 8192+32<<10])
	if !bytes.Equal(p, want) {
		t.Fatal("punched range does not read as zeros")
	}
	// ReadAt past the end: io.EOF with the short count.
	n, err := f.ReadAt(make([]byte, 100), st.Size-10)
	if n != 10 || err != io.EOF {
		t.Fatalf("ReadAt at end: %d %v", n, err)
	}
	if err := f.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if st, _ := fs.Stat(name); st.Size != 100 {
		t.Fatalf("size after truncate %d", st.Size)
	}
	if st, err := fs.Stat(dir); err != nil || !st.Dir {
		t.Fatalf("Stat(dir): %+v %v", st, err)
	}
	if _, err := fs.Stat(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Stat(missing): %v", err)
	}
}

func TestOSFS(t *testing.T) {
	fs := Default()
	dir := t.TempDir()
	if err := fs.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, _ := fs.OpenFile(filepath.Join(dir, "a", "x"), os.O_RDWR|os.O_CREATE, 0o644)
	f.Close()
	if err := fs.Rename(filepath.Join(dir, "a", "x"), filepath.Join(dir, "a", "y")); err != nil {
		t.Fatal(err)
	}
	names, err := fs.ReadDir(filepath.Join(dir, "a"))
	if err != nil || len(names) != 2 {
		t.Fatalf("ReadDir: %v %v", names, err)
	}
	if err := fs.SyncDir(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if err := fs.Remove(filepath.Join(dir, "a", "y")); err != nil {
		t.Fatal(err)
	}
	du, err := fs.DiskUsage(dir)
	if err != nil || du.Total == 0 || du.Avail > du.Total {
		t.Fatalf("DiskUsage: %+v %v", du, err)
	}
}

func TestLock(t *testing.T) {
	fs := Default()
	name := filepath.Join(t.TempDir(), "lock")
	l, err := fs.Lock(name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fs.Lock(name)
	var le *LockedError
	if !errors.As(err, &le) || le.Holder != strconv.Itoa(os.Getpid()) {
		t.Fatalf("second Lock: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = fs.Lock(name)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	l.Close()
}
