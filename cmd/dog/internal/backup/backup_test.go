package backup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

func testHeader(incremental bool) Header {
	h := Header{
		VDI: "vol", Size: 10 << 20, BlockSizeShift: 20, Redundancy: "3",
		To:      Ident{Cluster: 0x1234, VID: 0x7c2b26, SnapCtime: 99, Name: "vol", SnapID: 2, Tag: "b"},
		Created: time.Unix(1700000000, 0).UTC(), Objects: 4,
	}
	if incremental {
		h.From = &Ident{Cluster: 0x1234, VID: 0x7c2b25, SnapCtime: 42, Name: "vol", SnapID: 1, Tag: "a"}
	}
	return h
}

type rec struct {
	Record
	data []byte
}

// encode writes recs as a stream.
func encode(t testing.TB, h Header, recs []rec) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		var err error
		if r.Kind == KindZero {
			err = w.Zero(r.Index)
		} else {
			err = w.Data(r.Index, r.Offset, r.data)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decode reads a whole stream, reading data in pieces of size chunk.
func decode(b []byte, chunk int) (Header, []rec, error) {
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		return Header{}, nil, err
	}
	var out []rec
	for {
		x, err := r.Next()
		if err == io.EOF {
			return r.Header(), out, nil
		}
		if err != nil {
			return r.Header(), out, err
		}
		var data []byte
		if x.Kind == KindData {
			p := make([]byte, chunk)
			for {
				n, err := r.Read(p)
				data = append(data, p[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					return r.Header(), out, err
				}
			}
		}
		out = append(out, rec{x, data})
	}
}

func sampleRecords() []rec {
	d1 := bytes.Repeat([]byte{0xab}, 1<<20)
	d2 := []byte("hello, world")
	return []rec{
		{Record{Kind: KindData, Index: 0, Offset: 0, Length: uint32(len(d1))}, d1},
		{Record{Kind: KindZero, Index: 3}, nil},
		{Record{Kind: KindData, Index: 9, Offset: 100, Length: uint32(len(d2))}, d2},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, inc := range []bool{false, true} {
		h := testHeader(inc)
		recs := sampleRecords()
		b := encode(t, h, recs)
		for _, chunk := range []int{1, 7, 4096, 2 << 20} {
			gh, got, err := decode(b, chunk)
			if err != nil {
				t.Fatalf("inc=%v chunk %d: %v", inc, chunk, err)
			}
			if gh.VDI != h.VDI || gh.Size != h.Size || gh.Incremental() != inc || gh.To != h.To || !gh.Created.Equal(h.Created) {
				t.Fatalf("header %+v, want %+v", gh, h)
			}
			if inc && *gh.From != *h.From {
				t.Fatalf("from %+v, want %+v", gh.From, h.From)
			}
			if len(got) != len(recs) {
				t.Fatalf("%d records, want %d", len(got), len(recs))
			}
			for i := range recs {
				if got[i].Record != recs[i].Record || !bytes.Equal(got[i].data, recs[i].data) {
					t.Fatalf("record %d = %+v, want %+v", i, got[i].Record, recs[i].Record)
				}
			}
		}
	}
}

// Records whose data the caller never reads are skipped and still checked.
func TestNextSkipsUnreadData(t *testing.T) {
	b := encode(t, testHeader(false), sampleRecords())
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d records", n)
	}
	// A flipped data byte is found even when the data is skipped.
	b[len(b)-40] ^= 1
	r, err = NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err = r.Next()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("skipped corrupt data: %v", err)
	}
}

// Every truncation and every single-bit flip is detected.
func TestDamageDetected(t *testing.T) {
	recs := sampleRecords()
	recs[0].data = recs[0].data[:3000]
	recs[0].Length = 3000
	b := encode(t, testHeader(true), recs)
	for n := 0; n < len(b); n++ {
		if _, _, err := decode(b[:n], 512); err == nil {
			t.Fatalf("truncation to %d of %d bytes not detected", n, len(b))
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(b); i++ {
		c := bytes.Clone(b)
		c[i] ^= 1 << rng.IntN(8)
		if _, _, err := decode(c, 512); err == nil {
			t.Fatalf("bit flip at byte %d of %d not detected", i, len(b))
		}
	}
}

func TestWriterRejects(t *testing.T) {
	h := testHeader(false)
	w, err := NewWriter(io.Discard, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		err  error
	}{
		{"beyond object", w.Data(1, (1<<20)-1, []byte{1, 2})},
		{"beyond vdi", w.Data(10, 0, []byte{1})},
		{"empty data", w.Data(1, 0, nil)},
	} {
		if !errors.Is(c.err, ErrCorrupt) {
			t.Errorf("%s: %v", c.name, c.err)
		}
	}
	if err := w.Zero(5); err != nil {
		t.Fatal(err)
	}
	if err := w.Data(5, 10, []byte{1, 2, 3}); err != nil {
		t.Fatalf("data after zero of the same object: %v", err)
	}
	for _, c := range []struct {
		name string
		err  error
	}{
		{"zero after data", w.Zero(5)},
		{"overlapping data", w.Data(5, 12, []byte{1})},
		{"descending index", w.Zero(4)},
	} {
		if !errors.Is(c.err, ErrCorrupt) {
			t.Errorf("%s accepted: %v", c.name, c.err)
		}
	}
	if err := w.Data(5, 13, []byte{1}); err != nil {
		t.Fatalf("adjacent data: %v", err)
	}
	// The header announced 4 objects: 3 more fit, a fourth does not.
	for _, i := range []uint32{6, 7, 8} {
		if err := w.Zero(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Zero(9); !errors.Is(err, ErrCorrupt) {
		t.Errorf("object beyond the announced count accepted: %v", err)
	}
	for _, bad := range []Header{
		{VDI: "", Size: 1, BlockSizeShift: 22, Redundancy: "1"},
		{VDI: "v", Size: 0, BlockSizeShift: 22, Redundancy: "1"},
		{VDI: "v", Size: 1, BlockSizeShift: 19, Redundancy: "1"},
		{VDI: "v", Size: 5 << 40, BlockSizeShift: 22, Redundancy: "1"},
		{VDI: "v", Size: 1, BlockSizeShift: 22, Redundancy: "3:1"},
		{VDI: "v", Size: 1, BlockSizeShift: 22, Redundancy: "1", Objects: 2},
	} {
		if _, err := NewWriter(io.Discard, bad); err == nil {
			t.Errorf("header %+v accepted", bad)
		}
	}
}

func TestNotABackup(t *testing.T) {
	var sd [16]byte
	binary.LittleEndian.PutUint32(sd[0:], 1)
	binary.LittleEndian.PutUint32(sd[4:], sheepdogMagic)
	for name, b := range map[string][]byte{
		"empty": nil, "short": []byte("GSBACK"), "garbage": bytes.Repeat([]byte{'x'}, 64), "sheepdog": sd[:],
	} {
		if _, err := NewReader(bytes.NewReader(b)); !errors.Is(err, ErrNotBackup) {
			t.Errorf("%s: %v", name, err)
		}
	}
	b := encode(t, testHeader(false), nil)
	binary.LittleEndian.PutUint32(b[8:], 2)
	if _, err := NewReader(bytes.NewReader(b)); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
	binary.LittleEndian.PutUint32(b[8:], Version)
	binary.LittleEndian.PutUint32(b[12:], MaxHeader+1)
	if _, err := NewReader(bytes.NewReader(b)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("huge header: %v", err)
	}
}

// FuzzReader feeds arbitrary bytes to the reader: it must return errors,
// never panic, hang, or allocate beyond its bounds.
func FuzzReader(f *testing.F) {
	f.Add(encode(f, testHeader(false), sampleRecords()[1:]))
	f.Add(encode(f, testHeader(true), nil))
	small := sampleRecords()
	small[0].data, small[0].Length = small[0].data[:64], 64
	f.Add(encode(f, testHeader(true), small))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		h := r.Header()
		if err := h.Validate(); err != nil {
			t.Fatalf("reader returned an invalid header: %v", err)
		}
		p := make([]byte, 1000)
		for i := 0; ; i++ {
			rec, err := r.Next()
			if err != nil {
				return
			}
			if rec.check(&h) != nil {
				t.Fatalf("reader returned invalid record %+v", rec)
			}
			var got uint32
			for {
				n, err := r.Read(p)
				got += uint32(n)
				if err != nil {
					break
				}
			}
			if got > rec.Length {
				t.Fatalf("read %d bytes of a %d-byte record", got, rec.Length)
			}
		}
	})
}

// FuzzRoundTrip writes fuzzer-chosen records and reads them back intact.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint32(0), uint32(0), []byte("x"), uint32(3), true)
	f.Add(uint32(9), uint32(1000), []byte("hello"), uint32(2), false)
	f.Fuzz(func(t *testing.T, idx, off uint32, data []byte, zeroIdx uint32, inc bool) {
		h := testHeader(inc)
		var buf bytes.Buffer
		w, err := NewWriter(&buf, h)
		if err != nil {
			t.Fatal(err)
		}
		var want []rec
		if err := w.Data(idx, off, data); err == nil {
			want = append(want, rec{Record{KindData, idx, off, uint32(len(data))}, bytes.Clone(data)})
		}
		if err := w.Zero(zeroIdx); err == nil {
			want = append(want, rec{Record{Kind: KindZero, Index: zeroIdx}, nil})
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		_, got, err := decode(buf.Bytes(), 333)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d records, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Record != want[i].Record || !bytes.Equal(got[i].data, want[i].data) {
				t.Fatalf("record %d differs", i)
			}
		}
	})
}

// A hostile stream that announces huge objects and records does not make
// the reader allocate in proportion to what it claims.
func TestHostileClaimsBounded(t *testing.T) {
	h := testHeader(false)
	h.BlockSizeShift, h.Size, h.Objects = 31, 1<<40, 512
	var buf bytes.Buffer
	if _, err := NewWriter(&buf, h); err != nil {
		t.Fatal(err)
	}
	head := Record{Kind: KindData, Index: 0, Offset: 0, Length: 1<<31 - 1}.head()
	buf.Write(head[:])
	buf.Write(make([]byte, 1000)) // then the stream ends
	stream := buf.Bytes()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, err := NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := r.Next()
	if err != nil || rec.Length != 1<<31-1 {
		t.Fatalf("Next = %+v, %v", rec, err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a truncated 2 GiB record: %v", err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Fatalf("reading the hostile stream allocated %d bytes", got)
	}
}

// FuzzRecords gets past the checksums: the fuzzer's bytes are cut into
// records (16-byte head, then as much data as the head claims and the input
// has) behind a valid header, and each gets its correct CRC, so that the
// ordering and bounds rules are what is exercised.
func FuzzRecords(f *testing.F) {
	for _, recs := range [][]rec{sampleRecords()[1:], nil} {
		b := encode(f, testHeader(true), recs)
		hdrLen := 16 + int(binary.LittleEndian.Uint32(b[12:])) + 4
		var body []byte
		for p := hdrLen; p+recHead <= len(b); {
			n := int(binary.LittleEndian.Uint32(b[p+12:]))
			body = append(body, b[p:p+recHead+n]...)
			p += recHead + n + 4
		}
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var stream bytes.Buffer
		if _, err := NewWriter(&stream, testHeader(true)); err != nil {
			t.Fatal(err)
		}
		for len(body) >= recHead {
			n := min(int(binary.LittleEndian.Uint32(body[12:])), len(body)-recHead)
			rec := body[:recHead+n]
			body = body[recHead+n:]
			stream.Write(rec)
			stream.Write(binary.LittleEndian.AppendUint32(nil, crc32.Checksum(rec, castagnoli)))
		}
		r, err := NewReader(&stream)
		if err != nil {
			t.Fatal(err)
		}
		h := r.Header()
		pos := position{index: -1}
		p := make([]byte, 100)
		for {
			x, err := r.Next()
			if err != nil {
				return
			}
			if err := pos.next(&h, x); err != nil {
				t.Fatalf("reader accepted a record breaking the rules: %+v: %v", x, err)
			}
			for {
				if _, err := r.Read(p); err != nil {
					break
				}
			}
		}
	})
}
