package store

import (
	"bytes"
	"crypto/sha1"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

func TestStale(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir, Options{NoSync: true})
	k := ReplicaKey(proto.DataOID(4, 4))
	strip := StripKey(proto.DataOID(4, 4), 2)
	const size = 3*4096 + 10
	v1 := pattern(1, size)
	mustCreate(t, d, k, size, 0, v1)
	if err := d.Write(bg, k, 0, v1[:10], WriteOpts{Epoch: 6}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, d, strip, 100, 0, []byte("strip"))

	// Stash moves the live object aside.
	if err := d.Stash(bg, k, 7); err != nil {
		t.Fatal(err)
	}
	_, err := d.Stat(bg, k)
	wantErr(t, err, ErrNotFound, "stat after stash")
	wantErr(t, d.Stash(bg, k, 7), ErrNotFound, "stash of missing object")
	if err := d.Stash(bg, strip, 7); err != nil {
		t.Fatal(err)
	}
	if u, _ := d.Usage(); u.Objects != 0 || u.Used == 0 {
		t.Fatalf("usage after stashing everything: %+v", u)
	}

	// A new live copy of k, stashed again at a later epoch.
	v2 := pattern(2, 5000)
	mustCreate(t, d, k, 5000, 0, v2)
	if err := d.Stash(bg, k, 9); err != nil {
		t.Fatal(err)
	}

	l, err := d.ListStale(bg)
	if err != nil {
		t.Fatal(err)
	}
	want := []StaleInfo{
		{Key: k, Epoch: 7, Size: size, ObjEpoch: 6},
		{Key: k, Epoch: 9, Size: 5000, ObjEpoch: 0},
		{Key: strip, Epoch: 7, Size: 100, ObjEpoch: 0},
	}
	if !slices.Equal(l, want) {
		t.Fatalf("ListStale = %+v\nwant %+v", l, want)
	}
	if l, _ := d.List(bg); len(l) != 0 {
		t.Fatalf("List shows stale objects: %v", l)
	}

	// Read and hash stale copies, with range checks.
	p := make([]byte, size)
	if err := d.ReadStale(bg, k, 7, 0, p); err != nil || firstDiff(p, v1) >= 0 {
		t.Fatalf("ReadStale: %v", err)
	}
	p = make([]byte, 100)
	if err := d.ReadStale(bg, k, 9, 4000, p); err != nil || firstDiff(p, v2[4000:4100]) >= 0 {
		t.Fatalf("ReadStale partial: %v", err)
	}
	wantErr(t, d.ReadStale(bg, k, 9, 4950, p), ErrOutOfRange, "stale read past end")
	wantErr(t, d.ReadStale(bg, k, 8, 0, p), ErrNotFound, "stale read of missing epoch")
	if h, err := d.HashStale(bg, k, 7); err != nil || h != sha1.Sum(v1) {
		t.Fatalf("HashStale: %x %v", h, err)
	}

	// Corruption in a stale copy is detected and named as stale.
	flipByte(t, filepath.Join(dir, "stale", staleName(k, 9)), int64(newHeader(k, 5000, 0).dataOff)+4096)
	err = d.ReadStale(bg, k, 9, 4000, p)
	var ce *CorruptError
	if !errors.As(err, &ce) || !ce.Stale || ce.StaleEpoch != 9 || ce.Offsets[0] != 4096 {
		t.Fatalf("corrupt stale read: %v", err)
	}
	_, err = d.HashStale(bg, k, 9)
	wantErr(t, err, ErrCorrupt, "hash of corrupt stale copy")

	// Unstash refuses to clobber a live copy, then restores.
	mustCreate(t, d, k, 10, 0, nil)
	wantErr(t, d.Unstash(bg, k, 7), ErrExists, "unstash over live object")
	if proto.ResultOf(d.Unstash(bg, k, 7)) != proto.ResOIDExist {
		t.Fatal("ErrExists does not map to ResOIDExist")
	}
	if err := d.Remove(bg, k); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d = openT(t, dir, Options{NoSync: true}) // live copy not cached: the check must stat
	mustCreate(t, d, k, 10, 0, nil)
	d.Close()
	d = openT(t, dir, Options{NoSync: true})
	wantErr(t, d.Unstash(bg, k, 7), ErrExists, "unstash over uncached live object")
	d.Remove(bg, k)
	if err := d.Unstash(bg, k, 7); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.Unstash(bg, k, 7), ErrExists, "second unstash")
	d.Remove(bg, k)
	wantErr(t, d.Unstash(bg, k, 7), ErrNotFound, "unstash of purged epoch")
	mustCreate(t, d, k, 10, 0, nil)
	d.Remove(bg, k)
	if err := d.Unstash(bg, strip, 7); err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, strip, append([]byte("strip"), make([]byte, 95)...))
	// Writable after unstash.
	if err := d.Write(bg, strip, 0, []byte("STRIP"), WriteOpts{}); err != nil {
		t.Fatal(err)
	}

	// Purge is idempotent and frees the space.
	u0, _ := d.Usage()
	for i := 0; i < 2; i++ {
		if err := d.PurgeStale(bg, k, 9); err != nil {
			t.Fatal(err)
		}
	}
	u1, _ := d.Usage()
	if u1.Used >= u0.Used {
		t.Fatalf("purge freed nothing: %d -> %d", u0.Used, u1.Used)
	}
	if l, _ := d.ListStale(bg); len(l) != 0 {
		t.Fatalf("stale left: %v", l)
	}
	if names := dirNames(t, filepath.Join(dir, "stale")); len(names) != 0 {
		t.Fatalf("stale/ holds %v", names)
	}
	// Junk in stale/ is ignored.
	os.WriteFile(filepath.Join(dir, "stale", "junk.1"), nil, 0o644)
	if l, err := d.ListStale(bg); err != nil || len(l) != 0 {
		t.Fatalf("ListStale with junk: %v %v", l, err)
	}
}

func TestStashReplacesSameEpoch(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(3)
	mustCreate(t, d, k, 1<<20, 0, pattern(1, 1<<20))
	d.Stash(bg, k, 2)
	mustCreate(t, d, k, 10, 0, []byte("x"))
	u0, _ := d.Usage()
	if err := d.Stash(bg, k, 2); err != nil {
		t.Fatal(err)
	}
	u1, _ := d.Usage()
	if u0.Used-u1.Used < 1<<20 {
		t.Fatalf("replaced stale copy still counted: %d -> %d", u0.Used, u1.Used)
	}
	p := make([]byte, 1)
	if err := d.ReadStale(bg, k, 2, 0, p); err != nil || p[0] != 'x' {
		t.Fatalf("stale copy is %q, %v", p, err)
	}
}

func TestExclusiveCreateAndSparseCopies(t *testing.T) {
	d := openT(t, t.TempDir(), Options{NoSync: true})
	k := ReplicaKey(0x77)
	data := make([]byte, 4<<20)
	copy(data[5000:], pattern(3, 3000))
	if err := d.Create(bg, k, 4<<20, 0, data, WriteOpts{Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(bg, k, 4<<20, 0, nil, WriteOpts{Exclusive: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("second exclusive create: %v", err)
	}
	got := make([]byte, 4<<20)
	if err := d.Read(bg, k, 0, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("exclusive create changed the object: %v", err)
	}
	if u, _ := d.Usage(); u.Used > 64<<10 {
		t.Fatalf("a 4 MiB object holding 3 KiB allocates %d bytes", u.Used)
	}
	if n := d.StaleCount(); n != 0 {
		t.Fatalf("stale count %d", n)
	}
	d.Stash(bg, k, 3)
	if n := d.StaleCount(); n != 1 {
		t.Fatalf("stale count %d after a stash", n)
	}
}
