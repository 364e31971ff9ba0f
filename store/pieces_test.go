package store

import (
	"bytes"
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
