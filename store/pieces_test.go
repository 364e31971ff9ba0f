package store

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/gosheep/gosheep/store/vfs"
)

// recordFile keeps what was written and where; the rest of vfs.File is
// not used by writePieces.
type recordFile struct {
	vfs.File
	buf    []byte
	writes [][2]int64
}

func (r *recordFile) WriteAt(p []byte, off int64) (int, error) {
	r.writes = append(r.writes, [2]int64{off, int64(len(p))})
	if end := int(off) + len(p); end > len(r.buf) {
		r.buf = append(r.buf, make([]byte, end-len(r.buf))...)
	}
	return copy(r.buf[off:], p), nil
}

func TestWritePiecesStayInsideFolioBounds(t *testing.T) {
	for _, tc := range []struct {
		off  int64
		n    int
		want int // writes
	}{
		{0, 4096, 1},
		{12288, 4 << 20, 4<<20/pieceSize + 1},     // a whole object after its header
		{0, pieceSize, 1},                         // exactly one piece
		{pieceSize - 1, 2, 2},                     // straddles one boundary
		{pieceSize, 1 << 20, 1 << 20 / pieceSize}, // aligned 1 MiB
		{12288, 0, 0},
	} {
		data := make([]byte, tc.n)
		for i := range data {
			data[i] = byte(i*7 + 3)
		}
		f := &recordFile{}
		if err := writePieces(f, data, tc.off); err != nil {
			t.Fatal(err)
		}
		if len(f.writes) != tc.want {
			t.Errorf("off %d n %d: %d writes, want %d", tc.off, tc.n, len(f.writes), tc.want)
		}
		for _, w := range f.writes {
			if w[0]/pieceSize != (w[0]+w[1]-1)/pieceSize {
				t.Errorf("off %d n %d: write [%d, +%d) crosses a %d boundary", tc.off, tc.n, w[0], w[1], pieceSize)
			}
		}
		if tc.n > 0 && !bytes.Equal(f.buf[tc.off:], data) {
			t.Errorf("off %d n %d: data differs", tc.off, tc.n)
		}
	}
}

// countFile passes writes through to a real file and counts them.
type countFile struct {
	vfs.File
	writes int
}

func (c *countFile) WriteAt(p []byte, off int64) (int, error) {
	c.writes++
	return c.File.WriteAt(p, off)
}

func (c *countFile) SyscallConn() (syscall.RawConn, error) {
	return c.File.(syscall.Conn).SyscallConn()
}

// A range already in the page cache is written whole (no folio is made);
// anything else, in pieces.
func TestWriteDataWholeWhenCached(t *testing.T) {
	f, err := vfs.Default().OpenFile(filepath.Join(t.TempDir(), "obj"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	d := &Disk{}
	data := bytes.Repeat([]byte{0xa5}, 1<<20)
	const off = 12288 // an object's data area starts after its header
	for _, step := range []struct {
		name string
		want int
	}{
		{"hole, never read", 1<<20/pieceSize + 1}, // off is not piece-aligned
		{"just written", 1},
	} {
		cf := &countFile{File: f}
		if err := d.writeData(cf, data, off); err != nil {
			t.Fatal(err)
		}
		if d.noCachestat.Load() {
			t.Fatal("cachestat(2) failed on this kernel")
		}
		if cf.writes != step.want {
			t.Errorf("%s: %d writes, want %d", step.name, cf.writes, step.want)
		}
		got := make([]byte, len(data))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs (%v)", step.name, err)
		}
	}
	// Without a descriptor the check cannot be made: pieces.
	rf := &recordFile{}
	if err := d.writeData(rf, data, off); err != nil {
		t.Fatal(err)
	}
	if len(rf.writes) != 1<<20/pieceSize+1 {
		t.Errorf("no descriptor: %d writes, want %d", len(rf.writes), 1<<20/pieceSize+1)
	}
}
