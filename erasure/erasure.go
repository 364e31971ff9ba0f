// Package erasure is gosheep's Reed-Solomon codec over sheepdog's stripe
// layout (ref §4.4). An object is cut into 512-byte stripes; with x data
// strips, stripe k's bytes [j·512/x, (j+1)·512/x) belong to data strip j,
// and parity strips hold Reed-Solomon parity over the x data strips. Strip
// object i is strip i of stripe 0, then of stripe 1, and so on, so an object
// of S bytes becomes x+y strip objects of S/x bytes each.
//
// Because Reed-Solomon works byte position by byte position, the parity of
// each stripe equals the parity of the whole de-interleaved strip objects:
// the codec de-interleaves once and hands whole strips to
// klauspost/reedsolomon. The same holds for any stripe-aligned range
// [off, off+n) of the object, whose bytes in every strip object are the
// contiguous range [off/x, (off+n)/x): partial I/O encodes and decodes just
// that range (EncodeRange, DecodeRange).
//
// The parity is not bit-compatible with sheepdog's zfec/ISA-L strips: a
// gosheep cluster only ever reads strips it wrote itself.
package erasure

import (
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/klauspost/reedsolomon"

	"github.com/gosheep/gosheep/proto"
)

// StripeSize is the bytes of data in one stripe (SD_EC_DATA_STRIPE_SIZE).
const StripeSize = proto.ECStripeSize

// Sentinel errors; each carries the sheepdog result it maps to.
var (
	// ErrTooFewStrips: fewer than x strips are available, the data is lost
	// (for now). Never returned together with data.
	ErrTooFewStrips = proto.NewError(proto.ResEIO, "erasure: too few strips to decode")
	// ErrShape: unsupported data:parity combination.
	ErrShape = proto.NewError(proto.ResInvalidParms, "erasure: unsupported data:parity shape")
	// ErrSize: a range not made of whole stripes, strips of unequal or wrong
	// length, or a wrong number of strips.
	ErrSize = proto.NewError(proto.ResInvalidParms, "erasure: bad strip or range size")
	// ErrSelfTest: the codec computes different parity than it did when the
	// golden values were recorded; the node must not store EC data.
	ErrSelfTest = proto.NewError(proto.ResSystemError, "erasure: self-test failed")
)

// Codec encodes and decodes one data:parity shape. It is safe for
// concurrent use.
type Codec struct {
	data, parity int
	chunk        int // bytes of one strip in one stripe: StripeSize / data
	rs           reedsolomon.Encoder
}

// validShape reports whether x:y is one sheepdog supports.
func validShape(data, parity int) bool {
	switch data {
	case 2, 4, 8, 16:
	default:
		return false
	}
	return parity >= 1 && parity <= proto.MaxParity
}

// New returns a codec for data strips x ∈ {2,4,8,16} and parity strips
// y ∈ 1..15. Codecs are moderately expensive to build; keep them (Codecs).
func New(data, parity int) (*Codec, error) { return newCodec(data, parity) }

// newCodec lets tests force klauspost's portable code paths.
func newCodec(data, parity int, opts ...reedsolomon.Option) (*Codec, error) {
	if !validShape(data, parity) {
		return nil, fmt.Errorf("erasure: %d:%d: %w", data, parity, ErrShape)
	}
	rs, err := reedsolomon.New(data, parity, opts...)
	if err != nil {
		return nil, fmt.Errorf("erasure: %d:%d: %v: %w", data, parity, err, ErrShape)
	}
	return &Codec{data: data, parity: parity, chunk: StripeSize / data, rs: rs}, nil
}

// Data returns x, the number of data strips.
func (c *Codec) Data() int { return c.data }

// Parity returns y, the number of parity strips.
func (c *Codec) Parity() int { return c.parity }

// Strips returns x+y, the number of strip objects per object.
func (c *Codec) Strips() int { return c.data + c.parity }

func (c *Codec) String() string { return fmt.Sprintf("%d:%d", c.data, c.parity) }

// StripSize returns the size of each strip object of an objSize-byte
// object: objSize/x, the object being padded with zeros to whole stripes.
func (c *Codec) StripSize(objSize int) int {
	return (objSize + StripeSize - 1) / StripeSize * c.chunk
}

// Codecs caches one Codec per shape. The zero value is ready; it is safe for
// concurrent use. The daemon owns one (no package-level state).
type Codecs struct {
	// Index [log2(x)-1][y]; y = 0 unused.
	m [4][proto.MaxParity + 1]atomic.Pointer[Codec]
}

// Get returns the codec for data:parity, building it on first use.
func (cs *Codecs) Get(data, parity int) (*Codec, error) {
	if !validShape(data, parity) {
		return nil, fmt.Errorf("erasure: %d:%d: %w", data, parity, ErrShape)
	}
	slot := &cs.m[bits.TrailingZeros(uint(data))-1][parity]
	if c := slot.Load(); c != nil {
		return c, nil
	}
	c, err := New(data, parity)
	if err != nil {
		return nil, err
	}
	// A racing builder may win; either codec is equivalent.
	if !slot.CompareAndSwap(nil, c) {
		c = slot.Load()
	}
	return c, nil
}

// For returns the codec of an erasure-coded redundancy policy.
func (cs *Codecs) For(r proto.Redundancy) (*Codec, error) {
	if !r.IsEC() {
		return nil, fmt.Errorf("erasure: redundancy %v is not erasure coded: %w", r, ErrShape)
	}
	return cs.Get(int(r.Data), int(r.Parity))
}

// EncodeObject splits obj into x+y strip objects of StripSize(len(obj))
// bytes each. An object that is not a whole number of stripes is encoded as
// if padded with zeros.
func (c *Codec) EncodeObject(obj []byte) ([][]byte, error) {
	if r := len(obj) % StripeSize; r != 0 {
		padded := make([]byte, len(obj)+StripeSize-r)
		copy(padded, obj)
		obj = padded
	}
	return c.EncodeRange(obj)
}

// DecodeObject rebuilds an objSize-byte object from its strip objects; a
// nil (or empty) strip is missing. Any x strips suffice; with fewer it
// returns an error wrapping ErrTooFewStrips. Missing data strips are
// rebuilt in place in strips (see DecodeRangeInto).
func (c *Codec) DecodeObject(strips [][]byte, objSize int) ([]byte, error) {
	if objSize < 0 {
		return nil, fmt.Errorf("erasure: object size %d: %w", objSize, ErrSize)
	}
	n := c.StripSize(objSize) * c.data
	out := make([]byte, n)
	if err := c.DecodeRangeInto(out, strips); err != nil {
		return nil, err
	}
	return out[:objSize], nil
}

// EncodeRange encodes a stripe-aligned piece of an object (len(data) a
// multiple of 512) into the x+y strip chunks for that range, each
// len(data)/x bytes. It allocates one buffer for all chunks.
func (c *Codec) EncodeRange(data []byte) ([][]byte, error) {
	if len(data)%StripeSize != 0 {
		return nil, fmt.Errorf("erasure: range of %d bytes is not whole %d-byte stripes: %w", len(data), StripeSize, ErrSize)
	}
	n := len(data) / c.data
	buf := make([]byte, n*c.Strips())
	dst := make([][]byte, c.Strips())
	for i := range dst {
		dst[i] = buf[i*n : (i+1)*n : (i+1)*n]
	}
	if err := c.EncodeRangeInto(dst, data); err != nil {
		return nil, err
	}
	return dst, nil
}

// EncodeRangeInto is EncodeRange into caller-owned buffers: dst has x+y
// entries, each with capacity for len(data)/x bytes; on return each is
// resliced to exactly that length. It does not allocate.
func (c *Codec) EncodeRangeInto(dst [][]byte, data []byte) error {
	if len(data)%StripeSize != 0 {
		return fmt.Errorf("erasure: range of %d bytes is not whole %d-byte stripes: %w", len(data), StripeSize, ErrSize)
	}
	if len(dst) != c.Strips() {
		return fmt.Errorf("erasure: %d strip buffers for %v: %w", len(dst), c, ErrSize)
	}
	n := len(data) / c.data
	for i := range dst {
		if cap(dst[i]) < n {
			return fmt.Errorf("erasure: strip buffer %d holds %d bytes, need %d: %w", i, cap(dst[i]), n, ErrSize)
		}
		dst[i] = dst[i][:n]
	}
	if n == 0 {
		return nil
	}
	deinterleave(dst[:c.data], data, c.chunk)
	if err := c.rs.Encode(dst); err != nil {
		return fmt.Errorf("erasure: encode %v: %w", c, err)
	}
	return nil
}

// DecodeRange rebuilds n bytes (whole stripes) of object data from the
// chunks of that range (see DecodeRangeInto).
func (c *Codec) DecodeRange(chunks [][]byte, n int) ([]byte, error) {
	if n < 0 || n%StripeSize != 0 {
		return nil, fmt.Errorf("erasure: range of %d bytes is not whole %d-byte stripes: %w", n, StripeSize, ErrSize)
	}
	out := make([]byte, n)
	if err := c.DecodeRangeInto(out, chunks); err != nil {
		return nil, err
	}
	return out, nil
}

// DecodeRangeInto rebuilds len(dst) bytes (whole stripes) of object data
// from the x+y chunks of that range, each len(dst)/x bytes; a nil or empty
// chunk is missing. With all data chunks present it only interleaves them.
// Otherwise it rebuilds the missing data chunks in place in chunks, reusing
// an empty chunk's capacity when it suffices (so a caller that passes
// buf[:0] for a missing strip decodes without allocating), and then
// interleaves. With fewer than x chunks present it returns an error
// wrapping ErrTooFewStrips and leaves dst alone.
func (c *Codec) DecodeRangeInto(dst []byte, chunks [][]byte) error {
	if len(dst)%StripeSize != 0 {
		return fmt.Errorf("erasure: range of %d bytes is not whole %d-byte stripes: %w", len(dst), StripeSize, ErrSize)
	}
	n := len(dst) / c.data
	if err := c.check(chunks, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	for _, d := range chunks[:c.data] {
		if len(d) == 0 {
			if err := c.rs.ReconstructData(chunks); err != nil {
				return fmt.Errorf("erasure: decode %v: %w", c, err)
			}
			break
		}
	}
	interleave(dst, chunks[:c.data], c.chunk)
	return nil
}

// check validates a chunk set for chunks of n bytes: x+y entries, every
// present one exactly n bytes, at least x present.
func (c *Codec) check(chunks [][]byte, n int) error {
	if len(chunks) != c.Strips() {
		return fmt.Errorf("erasure: %d strips for %v: %w", len(chunks), c, ErrSize)
	}
	have := 0
	for i, ch := range chunks {
		if len(ch) == 0 {
			continue
		}
		if len(ch) != n {
			return fmt.Errorf("erasure: strip %d has %d bytes, want %d: %w", i, len(ch), n, ErrSize)
		}
		have++
	}
	if n > 0 && have < c.data {
		return fmt.Errorf("erasure: %v: %d of %d strips present: %w", c, have, c.Strips(), ErrTooFewStrips)
	}
	return nil
}

// chunkLen returns the length of the present chunks (0 if none).
func chunkLen(chunks [][]byte) int {
	for _, ch := range chunks {
		if len(ch) != 0 {
			return len(ch)
		}
	}
	return 0
}

// Reconstruct rebuilds every missing (nil or empty) strip, data and parity,
// in place; used by recovery to recreate a lost strip object or range. An
// empty chunk's capacity is reused when it suffices.
func (c *Codec) Reconstruct(chunks [][]byte) error {
	return c.ReconstructSome(chunks, nil)
}

// ReconstructSome rebuilds only the missing strips i with want[i] (len(want)
// == x+y), leaving other missing strips empty. want == nil means all.
func (c *Codec) ReconstructSome(chunks [][]byte, want []bool) error {
	if want != nil && len(want) != c.Strips() {
		return fmt.Errorf("erasure: want has %d entries for %v: %w", len(want), c, ErrSize)
	}
	n := chunkLen(chunks)
	if n%c.chunk != 0 {
		return fmt.Errorf("erasure: strips of %d bytes are not whole stripes of %v: %w", n, c, ErrSize)
	}
	if err := c.check(chunks, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	var err error
	if want == nil {
		err = c.rs.Reconstruct(chunks)
	} else {
		err = c.rs.ReconstructSome(chunks, want)
	}
	if err != nil {
		return fmt.Errorf("erasure: reconstruct %v: %w", c, err)
	}
	return nil
}

// Verify reports whether the parity strips are consistent with the data
// strips (dog vdi check). All x+y strips must be present.
func (c *Codec) Verify(chunks [][]byte) (bool, error) {
	n := chunkLen(chunks)
	if err := c.check(chunks, n); err != nil {
		return false, err
	}
	for i, ch := range chunks {
		if len(ch) == 0 {
			return false, fmt.Errorf("erasure: verify %v: strip %d missing: %w", c, i, ErrTooFewStrips)
		}
	}
	ok, err := c.rs.Verify(chunks)
	if err != nil {
		return false, fmt.Errorf("erasure: verify %v: %w", c, err)
	}
	return ok, nil
}
