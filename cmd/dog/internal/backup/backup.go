// Package backup is the stream format of `dog vdi backup` and `dog vdi
// restore`: the objects of a snapshot, or only those that changed since an
// older snapshot, as one self-checking byte stream.
//
// All integers are little-endian. A stream is a header, records, and an end
// record:
//
//	header  magic    [8]byte  "GSBACKUP"
//	        version  u32      1
//	        length   u32      bytes of the JSON document that follows (at most 64 KiB)
//	        document [length] JSON Header: the VDI's name, size, object size,
//	                          redundancy, the snapshot the stream brings the VDI
//	                          to ("to") and, for an incremental stream, the
//	                          snapshot it starts from ("from")
//	        crc      u32      CRC-32C of everything above
//
//	record  kind     u8       'D' data or 'Z' zero (the object becomes a hole)
//	        pad      [3]byte  zero
//	        index    u32      object index in the VDI
//	        offset   u32      byte offset of the data inside the object ('Z': 0)
//	        length   u32      bytes of data that follow ('D': > 0; 'Z': 0)
//	        data     [length]
//	        crc      u32      CRC-32C of the 16 bytes from kind to length, and the data
//
//	end     kind     u8       'E'
//	        pad      [3]byte  zero
//	        count    u32      number of records before it
//	        zero     [8]byte
//	        crc      u32      CRC-32C of the 16 bytes from kind
//
// Records come in increasing (index, offset) order: an object's records are
// optionally one 'Z' first (the object is emptied), then 'D' records whose
// ranges ascend without overlapping. No record reaches past its object
// (offset+length <= object size) or the VDI (index < objects of the
// header's size), and at most the header's "objects" objects have records.
// Where a full stream has no data the VDI reads zeros; an object absent from
// an incremental stream is unchanged since "from".
//
// The Reader checks all of this as it goes and never allocates more than the
// header document (64 KiB) plus a fixed scratch buffer, whatever the stream
// claims: record data is read by the caller in pieces of its own choosing.
package backup

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"strings"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// Format constants.
const (
	Magic     = "GSBACKUP"
	Version   = 1
	MaxHeader = 64 << 10 // largest JSON header document

	KindData = 'D'
	KindZero = 'Z'
	kindEnd  = 'E'

	recHead = 16 // kind, pad, index, offset, length

	maxOrigin = 128 // an Ident.Key is 41 bytes
)

// Errors. Corruption of any kind wraps ErrCorrupt.
var (
	ErrNotBackup = errors.New("not a dog backup stream")
	ErrVersion   = errors.New("unsupported backup stream version")
	ErrCorrupt   = errors.New("corrupt backup stream")
)

// sheepdog's C dog wrote version 1 then this magic, both u32.
const sheepdogMagic = 0x11921192

// castagnoli is the CRC-32C table (read-only).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Ident names a snapshot wherever it is restored: the cluster it was taken
// on (the cluster's format time), its vid there and the time it was frozen.
// Name, tag and snapshot id are for messages.
type Ident struct {
	Cluster   uint64 `json:"cluster"`
	VID       uint32 `json:"vid"`
	SnapCtime uint64 `json:"snap_ctime"`
	Name      string `json:"name"`
	SnapID    uint32 `json:"snap_id"`
	Tag       string `json:"tag,omitempty"`
	// Origin is set when the snapshot was itself restored from a backup:
	// the Key of the snapshot whose content it holds.
	Origin string `json:"origin,omitempty"`
}

// Key is the identity of the snapshot's content, for comparing and for
// storing with a restored snapshot: its Origin, or its own identity.
func (i Ident) Key() string {
	if i.Origin != "" {
		return i.Origin
	}
	return fmt.Sprintf("%016x-%06x-%016x", i.Cluster, i.VID, i.SnapCtime)
}

// String describes the snapshot for people: name@tag or name@id.
func (i Ident) String() string {
	if i.Tag != "" {
		return fmt.Sprintf("%s@%s (id %d)", i.Name, i.Tag, i.SnapID)
	}
	return fmt.Sprintf("%s@%d", i.Name, i.SnapID)
}

// Header describes a stream.
type Header struct {
	VDI            string    `json:"vdi"`
	Size           uint64    `json:"size"`
	BlockSizeShift uint8     `json:"block_size_shift"`
	Redundancy     string    `json:"redundancy"`
	From           *Ident    `json:"from,omitempty"` // nil: a full backup
	To             Ident     `json:"to"`
	Created        time.Time `json:"created"`
	// Objects bounds the objects with records (for progress and checking).
	Objects uint32 `json:"objects"`
}

// Incremental reports whether the stream holds changes since From.
func (h *Header) Incremental() bool { return h.From != nil }

// ObjectSize is the VDI's data object size.
func (h *Header) ObjectSize() uint32 { return 1 << h.BlockSizeShift }

// Span is the number of object indexes the VDI's size spans.
func (h *Header) Span() uint32 {
	os := uint64(h.ObjectSize())
	return uint32((h.Size + os - 1) / os)
}

// Validate checks the header's fields against sheepdog's limits.
func (h *Header) Validate() error {
	switch {
	case h.VDI == "" || len(h.VDI) >= proto.NameLen || strings.IndexByte(h.VDI, 0) >= 0:
		return fmt.Errorf("%w: bad vdi name %q", ErrCorrupt, h.VDI)
	case h.BlockSizeShift < proto.MinBSS || h.BlockSizeShift > proto.MaxBSS:
		return fmt.Errorf("%w: block size shift %d out of range %d..%d", ErrCorrupt, h.BlockSizeShift, proto.MinBSS, proto.MaxBSS)
	case h.Size == 0 || h.Size > uint64(proto.MaxDataObjs)<<h.BlockSizeShift:
		return fmt.Errorf("%w: vdi size %d out of range for %d-byte objects", ErrCorrupt, h.Size, h.ObjectSize())
	case len(h.To.Tag) >= proto.TagLen || (h.From != nil && len(h.From.Tag) >= proto.TagLen):
		return fmt.Errorf("%w: snapshot tag too long", ErrCorrupt)
	case len(h.To.Origin) > maxOrigin || (h.From != nil && len(h.From.Origin) > maxOrigin):
		return fmt.Errorf("%w: snapshot origin too long", ErrCorrupt)
	case h.Objects > h.Span():
		return fmt.Errorf("%w: %d objects announced in a vdi of %d", ErrCorrupt, h.Objects, h.Span())
	}
	if _, err := proto.ParseRedundancy(h.Redundancy); err != nil {
		return fmt.Errorf("%w: redundancy %q", ErrCorrupt, h.Redundancy)
	}
	return nil
}

// Record is one object's entry.
type Record struct {
	Kind   byte // KindData or KindZero
	Index  uint32
	Offset uint32
	Length uint32
}

func (r Record) head() [recHead]byte {
	var b [recHead]byte
	b[0] = r.Kind
	binary.LittleEndian.PutUint32(b[4:], r.Index)
	binary.LittleEndian.PutUint32(b[8:], r.Offset)
	binary.LittleEndian.PutUint32(b[12:], r.Length)
	return b
}

// position is where the last record ended, for the ordering rules.
type position struct {
	index   int64  // object of the last record, -1 before the first
	end     uint64 // end of its data inside the object
	objects uint32 // distinct objects seen
}

// next validates r against the header and the position, and advances.
func (p *position) next(h *Header, r Record) error {
	if err := r.check(h); err != nil {
		return err
	}
	switch {
	case int64(r.Index) > p.index:
		if p.objects == h.Objects {
			return fmt.Errorf("%w: more than the %d objects the header announced", ErrCorrupt, h.Objects)
		}
		p.objects++
	case int64(r.Index) < p.index:
		return fmt.Errorf("%w: record for object %d after object %d (records must ascend)", ErrCorrupt, r.Index, p.index)
	case r.Kind == KindZero:
		return fmt.Errorf("%w: object %d: a zero record must be the object's first", ErrCorrupt, r.Index)
	case uint64(r.Offset) < p.end:
		return fmt.Errorf("%w: object %d: data at %d overlaps or precedes data ending at %d", ErrCorrupt, r.Index, r.Offset, p.end)
	}
	p.index = int64(r.Index)
	p.end = uint64(r.Offset) + uint64(r.Length)
	return nil
}

// check validates a record against the header alone.
func (r Record) check(h *Header) error {
	if r.Index >= h.Span() {
		return fmt.Errorf("%w: object %d beyond the vdi's %d objects", ErrCorrupt, r.Index, h.Span())
	}
	switch r.Kind {
	case KindData:
		if r.Length == 0 || uint64(r.Offset)+uint64(r.Length) > uint64(h.ObjectSize()) {
			return fmt.Errorf("%w: object %d: data %d+%d outside a %d-byte object", ErrCorrupt, r.Index, r.Offset, r.Length, h.ObjectSize())
		}
	case KindZero:
		if r.Offset != 0 || r.Length != 0 {
			return fmt.Errorf("%w: object %d: zero record with offset %d length %d", ErrCorrupt, r.Index, r.Offset, r.Length)
		}
	default:
		return fmt.Errorf("%w: unknown record kind %#x", ErrCorrupt, r.Kind)
	}
	return nil
}

// Writer writes a stream.
type Writer struct {
	w     io.Writer
	h     Header
	pos   position
	count uint32
	done  bool
}

// NewWriter validates h and writes the stream header.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	doc, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if len(doc) > MaxHeader {
		return nil, fmt.Errorf("backup header of %d bytes exceeds %d", len(doc), MaxHeader)
	}
	b := make([]byte, 0, 16+len(doc)+4)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint32(b, Version)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(doc)))
	b = append(b, doc...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	return &Writer{w: w, h: h, pos: position{index: -1}}, nil
}

func (w *Writer) record(r Record, data []byte) error {
	if w.done {
		return errors.New("backup: write after Close")
	}
	pos := w.pos
	if err := pos.next(&w.h, r); err != nil {
		return err
	}
	head := r.head()
	crc := crc32.Update(crc32.Checksum(head[:], castagnoli), castagnoli, data)
	if _, err := w.w.Write(head[:]); err != nil {
		return err
	}
	if _, err := w.w.Write(data); err != nil {
		return err
	}
	if _, err := w.w.Write(binary.LittleEndian.AppendUint32(nil, crc)); err != nil {
		return err
	}
	w.pos = pos
	w.count++
	return nil
}

// Data records data at offset off of object idx.
func (w *Writer) Data(idx, off uint32, data []byte) error {
	return w.record(Record{Kind: KindData, Index: idx, Offset: off, Length: uint32(len(data))}, data)
}

// Zero records that object idx is emptied (a hole); it must come before
// any data of idx.
func (w *Writer) Zero(idx uint32) error {
	return w.record(Record{Kind: KindZero, Index: idx}, nil)
}

// Count is the number of records written.
func (w *Writer) Count() uint32 { return w.count }

// Close writes the end record; it does not close the underlying writer.
func (w *Writer) Close() error {
	if w.done {
		return nil
	}
	var b [recHead + 4]byte
	b[0] = kindEnd
	binary.LittleEndian.PutUint32(b[4:], w.count)
	binary.LittleEndian.PutUint32(b[recHead:], crc32.Checksum(b[:recHead], castagnoli))
	w.done = true
	_, err := w.w.Write(b[:])
	return err
}

// Reader reads a stream, checking it as it goes.
type Reader struct {
	r     io.Reader
	h     Header
	pos   position
	count uint32

	cur     Record
	left    uint32 // data bytes of cur not yet read
	crc     hash.Hash32
	pending bool // cur's crc not yet verified
	end     bool
	err     error // sticky
	scratch [32 << 10]byte
}

// NewReader reads and checks the stream header.
func NewReader(r io.Reader) (*Reader, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil, fmt.Errorf("%w: the stream is empty", ErrNotBackup)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: the stream is too short for a header", ErrNotBackup)
		}
		return nil, err
	}
	if string(fixed[:8]) != Magic {
		if binary.LittleEndian.Uint32(fixed[4:]) == sheepdogMagic {
			return nil, fmt.Errorf("%w: this is a backup written by sheepdog's C dog; restore it with that dog", ErrNotBackup)
		}
		return nil, fmt.Errorf("%w (bad magic %q)", ErrNotBackup, fixed[:8])
	}
	if v := binary.LittleEndian.Uint32(fixed[8:]); v != Version {
		return nil, fmt.Errorf("%w %d (this dog reads version %d)", ErrVersion, v, Version)
	}
	n := binary.LittleEndian.Uint32(fixed[12:])
	if n > MaxHeader {
		return nil, fmt.Errorf("%w: header document of %d bytes exceeds %d", ErrCorrupt, n, MaxHeader)
	}
	doc := make([]byte, int(n)+4)
	if _, err := io.ReadFull(r, doc); err != nil {
		return nil, fmt.Errorf("%w: truncated header: %v", ErrCorrupt, err)
	}
	crc := crc32.Update(crc32.Checksum(fixed[:], castagnoli), castagnoli, doc[:n])
	if crc != binary.LittleEndian.Uint32(doc[n:]) {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	var h Header
	dec := json.NewDecoder(bytes.NewReader(doc[:n]))
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: header document: %v", ErrCorrupt, err)
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return &Reader{r: r, h: h, pos: position{index: -1}, crc: crc32.New(castagnoli)}, nil
}

// Header returns the stream's header.
func (r *Reader) Header() Header { return r.h }

// Next advances to the next record, skipping unread data of the current
// one. It returns io.EOF after a valid end record.
func (r *Reader) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	if r.end {
		return Record{}, io.EOF
	}
	for r.left > 0 {
		if _, err := r.Read(r.scratch[:]); err != nil && err != io.EOF {
			return Record{}, err
		}
	}
	if r.pending {
		if err := r.verify(r.curDesc()); err != nil {
			return Record{}, err
		}
	}
	var head [recHead]byte
	if _, err := io.ReadFull(r.r, head[:]); err != nil {
		return Record{}, r.fail(fmt.Errorf("%w: stream ends after %d records without an end record", ErrCorrupt, r.count))
	}
	if head[1] != 0 || head[2] != 0 || head[3] != 0 {
		return Record{}, r.fail(fmt.Errorf("%w: record %d: non-zero padding", ErrCorrupt, r.count))
	}
	rec := Record{
		Kind:   head[0],
		Index:  binary.LittleEndian.Uint32(head[4:]),
		Offset: binary.LittleEndian.Uint32(head[8:]),
		Length: binary.LittleEndian.Uint32(head[12:]),
	}
	r.crc.Reset()
	r.crc.Write(head[:])
	if rec.Kind == kindEnd {
		if rec.Offset != 0 || rec.Length != 0 {
			return Record{}, r.fail(fmt.Errorf("%w: malformed end record", ErrCorrupt))
		}
		if err := r.verify("the end record"); err != nil {
			return Record{}, err
		}
		if rec.Index != r.count {
			return Record{}, r.fail(fmt.Errorf("%w: end record counts %d records, stream had %d", ErrCorrupt, rec.Index, r.count))
		}
		r.end = true
		return Record{}, io.EOF
	}
	if err := r.pos.next(&r.h, rec); err != nil {
		return Record{}, r.fail(err)
	}
	r.cur, r.left, r.pending = rec, rec.Length, true
	r.count++
	return rec, nil
}

// Read reads the current record's data. At its end Read returns io.EOF once
// the record's checksum is verified, or an error wrapping ErrCorrupt.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.left == 0 {
		if r.pending {
			if err := r.verify(r.curDesc()); err != nil {
				return 0, err
			}
		}
		return 0, io.EOF
	}
	if uint32(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.crc.Write(p[:n])
	r.left -= uint32(n)
	if err == io.EOF && r.left > 0 {
		return n, r.fail(fmt.Errorf("%w: stream ends inside the data of object %d", ErrCorrupt, r.cur.Index))
	}
	if err != nil && err != io.EOF {
		return n, r.fail(err)
	}
	return n, nil
}

func (r *Reader) curDesc() string { return fmt.Sprintf("the record of object %d", r.cur.Index) }

// verify reads the crc following a record and compares it with the one
// computed over what was read.
func (r *Reader) verify(what string) error {
	var b [4]byte
	if _, err := io.ReadFull(r.r, b[:]); err != nil {
		return r.fail(fmt.Errorf("%w: stream ends before the checksum of %s", ErrCorrupt, what))
	}
	r.pending = false
	if binary.LittleEndian.Uint32(b[:]) != r.crc.Sum32() {
		return r.fail(fmt.Errorf("%w: checksum mismatch in %s", ErrCorrupt, what))
	}
	return nil
}

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}
