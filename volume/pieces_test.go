package volume

import "testing"

// pieces covers the range in order, object by object, each piece within
// one object and bounded by the chunk.
func TestPieces(t *testing.T) {
	const obj = 4 << 20
	for _, tc := range []struct {
		off, n uint64
		max    uint32
		want   int
	}{
		{0, 4096, 512 << 10, 1},
		{0, 1 << 20, 512 << 10, 2},
		{100, 1 << 20, 512 << 10, 2},
		{obj - 4096, 1 << 20, 512 << 10, 3}, // 4 KiB, then 1020 KiB cut in two
		{0, 3 * obj, 1 << 20, 12},
		{7, 5, 1, 5},
		{100, 2 * obj, obj, 3}, // object boundaries only
	} {
		ps := pieces(tc.off, tc.n, obj, tc.max)
		if len(ps) != tc.want {
			t.Errorf("%d+%d max %d: %d pieces, want %d: %+v", tc.off, tc.n, tc.max, len(ps), tc.want, ps)
		}
		var lo uint64
		for _, pc := range ps {
			pos := tc.off + lo
			if pc.lo != lo || pc.n == 0 || pc.n > tc.max ||
				uint64(pc.idx) != pos/obj || uint64(pc.inner) != pos%obj || uint64(pc.inner)+uint64(pc.n) > obj {
				t.Fatalf("%d+%d max %d: bad piece %+v at %d: %+v", tc.off, tc.n, tc.max, pc, lo, ps)
			}
			lo += uint64(pc.n)
		}
		if lo != tc.n {
			t.Errorf("%d+%d: pieces cover %d bytes", tc.off, tc.n, lo)
		}
	}
}
