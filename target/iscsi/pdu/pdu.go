// Package pdu is the iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic
// Header Segment with typed accessors, reading a whole PDU (AHS, data
// segment, padding, optional CRC32C digests) from a stream with every wire
// length checked against a caller-supplied limit before anything is
// allocated, and writing PDUs.
package pdu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gosheep/gosheep/internal/crc32c"
)

// Opcodes (RFC 7143 §11.1.1). Initiator opcodes are < 0x20.
const (
	OpNOPOut    = 0x00
	OpSCSICmd   = 0x01
	OpTaskReq   = 0x02
	OpLoginReq  = 0x03
	OpTextReq   = 0x04
	OpDataOut   = 0x05
	OpLogoutReq = 0x06
	OpSNACKReq  = 0x10

	OpNOPIn      = 0x20
	OpSCSIResp   = 0x21
	OpTaskResp   = 0x22
	OpLoginResp  = 0x23
	OpTextResp   = 0x24
	OpDataIn     = 0x25
	OpLogoutResp = 0x26
	OpR2T        = 0x31
	OpAsync      = 0x32
	OpReject     = 0x3f
)

// HeaderLen is the size of the Basic Header Segment.
const HeaderLen = 48

// MaxAHSLen is the largest AHS the format can express (255 words).
const MaxAHSLen = 255 * 4

// ReservedTag is the "no task" Initiator/Target Task Tag.
const ReservedTag = 0xffffffff

// Flag bits of byte 1.
const (
	FlagFinal    = 0x80 // F
	FlagContinue = 0x40 // C (login, text)
	FlagRead     = 0x40 // R (SCSI command)
	FlagWrite    = 0x20 // W (SCSI command)
	FlagAck      = 0x40 // A (Data-In)
	FlagOverflow = 0x04 // o (Data-In, response)
	FlagUnder    = 0x02 // u (Data-In, response)
	FlagStatus   = 0x01 // S (Data-In)
	FlagBiOver   = 0x10 // O (response)
	FlagBiUnder  = 0x08 // U (response)
	FlagTransit  = 0x80 // T (login)
)

// Errors returned by ReadPDU. They are protocol errors: the connection
// cannot continue after them.
var (
	ErrDataTooLong  = errors.New("pdu: data segment longer than negotiated")
	ErrHeaderDigest = errors.New("pdu: header digest mismatch")
	ErrDataDigest   = errors.New("pdu: data digest mismatch")
)

// Header is a Basic Header Segment. The accessors name fields by their
// RFC 7143 meaning; which ones apply depends on the opcode.
type Header [HeaderLen]byte

func (h *Header) Opcode() byte            { return h[0] & 0x3f }
func (h *Header) SetOpcode(op byte)       { h[0] = h[0]&0xc0 | op&0x3f }
func (h *Header) Immediate() bool         { return h[0]&0x40 != 0 }
func (h *Header) Flags() byte             { return h[1] }
func (h *Header) SetFlags(f byte)         { h[1] = f }
func (h *Header) Final() bool             { return h[1]&FlagFinal != 0 }
func (h *Header) AHSLen() int             { return int(h[4]) * 4 }
func (h *Header) DataLen() uint32         { return uint32(h[5])<<16 | uint32(h[6])<<8 | uint32(h[7]) }
func (h *Header) LUN() uint64             { return binary.BigEndian.Uint64(h[8:16]) }
func (h *Header) SetLUN(l uint64)         { binary.BigEndian.PutUint64(h[8:16], l) }
func (h *Header) ITT() uint32             { return binary.BigEndian.Uint32(h[16:20]) }
func (h *Header) SetITT(t uint32)         { binary.BigEndian.PutUint32(h[16:20], t) }
func (h *Header) Field20() uint32         { return binary.BigEndian.Uint32(h[20:24]) }
func (h *Header) SetField20(v uint32)     { binary.BigEndian.PutUint32(h[20:24], v) }
func (h *Header) CmdSN() uint32           { return binary.BigEndian.Uint32(h[24:28]) }
func (h *Header) ExpStatSN() uint32       { return binary.BigEndian.Uint32(h[28:32]) }
func (h *Header) u32(off int) uint32      { return binary.BigEndian.Uint32(h[off : off+4]) }
func (h *Header) put32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:off+4], v) }

// SetDataLen stores the data segment length (24 bits; callers keep it below
// 16 MiB, which every negotiated limit is).
func (h *Header) SetDataLen(n uint32) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// Fields of initiator PDUs at fixed offsets, by name.

// EDTL is a SCSI Command's Expected Data Transfer Length.
func (h *Header) EDTL() uint32 { return h.Field20() }

// CDB is a SCSI Command's 16-byte CDB field.
func (h *Header) CDB() []byte { return h[32:48] }

// TTT is a Data-Out's, NOP-Out's or Text's Target Transfer Tag.
func (h *Header) TTT() uint32 { return h.Field20() }

// DataSN is a Data-Out's (or Data-In's) DataSN / R2T's R2TSN.
func (h *Header) DataSN() uint32 { return h.u32(36) }

// BufferOffset is a Data-Out's (or Data-In's, R2T's) buffer offset.
func (h *Header) BufferOffset() uint32 { return h.u32(40) }

// RefTaskTag is a Task Management request's Referenced Task Tag.
func (h *Header) RefTaskTag() uint32 { return h.Field20() }

// RefCmdSN is a Task Management request's RefCmdSN.
func (h *Header) RefCmdSN() uint32 { return h.u32(32) }

// ISID is a login request's 6-byte initiator session id.
func (h *Header) ISID() uint64 {
	return uint64(h[8])<<40 | uint64(h[9])<<32 | uint64(binary.BigEndian.Uint32(h[10:14]))
}

// TSIH is a login request's target session identifying handle.
func (h *Header) TSIH() uint16 { return binary.BigEndian.Uint16(h[14:16]) }

// CID is a login or logout request's connection id.
func (h *Header) CID() uint16 { return binary.BigEndian.Uint16(h[20:22]) }

// Target PDU setters.

func (h *Header) SetStatSN(v uint32)   { h.put32(24, v) }
func (h *Header) SetExpCmdSN(v uint32) { h.put32(28, v) }
func (h *Header) SetMaxCmdSN(v uint32) { h.put32(32, v) }
func (h *Header) StatSN() uint32       { return h.u32(24) }
func (h *Header) ExpCmdSN() uint32     { return h.u32(28) }
func (h *Header) MaxCmdSN() uint32     { return h.u32(32) }
func (h *Header) SetDataSN(v uint32)   { h.put32(36, v) }
func (h *Header) SetBufferOffset(v uint32) {
	h.put32(40, v)
}
func (h *Header) SetResidual(v uint32)      { h.put32(44, v) }
func (h *Header) Residual() uint32          { return h.u32(44) }
func (h *Header) SetDesiredLength(v uint32) { h.put32(44, v) }
func (h *Header) DesiredLength() uint32     { return h.u32(44) }

// String describes the header for logs.
func (h *Header) String() string {
	return fmt.Sprintf("op=%#02x flags=%#02x itt=%#x dlen=%d", h.Opcode(), h.Flags(), h.ITT(), h.DataLen())
}

// PDU is a header with its additional header segments and data segment.
type PDU struct {
	Header
	AHS  []byte
	Data []byte
}

// Limits bound what ReadPDU accepts.
type Limits struct {
	MaxData      uint32 // largest data segment accepted (MaxRecvDataSegmentLength)
	HeaderDigest bool   // CRC32C after the header
	DataDigest   bool   // CRC32C after the data segment
}

// CRC32C is the iSCSI digest function (RFC 7143 §13.1).
func CRC32C(parts ...[]byte) uint32 {
	var c uint32
	for _, p := range parts {
		c = crc32c.Update(c, p)
	}
	return c
}

func pad4(n uint32) uint32 { return (4 - n%4) % 4 }

// ReadPDU reads one PDU. The data segment is allocated only after its
// length has been checked against lim.MaxData.
func ReadPDU(r io.Reader, lim Limits) (*PDU, error) {
	p := &PDU{}
	if err := ReadHeader(r, lim, p); err != nil {
		return nil, err
	}
	n := p.DataLen()
	if n == 0 {
		return p, nil
	}
	buf := make([]byte, n)
	if err := ReadData(r, lim, buf); err != nil {
		return nil, err
	}
	p.Data = buf
	return p, nil
}

// ReadHeader reads a PDU's header, its AHS and header digest into p,
// leaving the data segment (p.DataLen() bytes, already checked against
// lim.MaxData) unread: the caller reads it with ReadData into a buffer of
// its choice, so that Data-Out lands where it belongs without a copy.
func ReadHeader(r io.Reader, lim Limits, p *PDU) error {
	p.AHS, p.Data = nil, nil
	if _, err := io.ReadFull(r, p.Header[:]); err != nil {
		return err
	}
	if ahs := p.AHSLen(); ahs > 0 {
		p.AHS = make([]byte, ahs) // at most 1020 bytes
		if _, err := io.ReadFull(r, p.AHS); err != nil {
			return noEOF(err)
		}
	}
	if lim.HeaderDigest {
		var dig [4]byte
		if _, err := io.ReadFull(r, dig[:]); err != nil {
			return noEOF(err)
		}
		if binary.LittleEndian.Uint32(dig[:]) != CRC32C(p.Header[:], p.AHS) {
			return ErrHeaderDigest
		}
	}
	if n := p.DataLen(); n > lim.MaxData {
		return fmt.Errorf("%w: %d > %d", ErrDataTooLong, n, lim.MaxData)
	}
	return nil
}

// ReadData reads a data segment of len(dst) bytes into dst, then its
// padding and, if negotiated, its digest.
func ReadData(r io.Reader, lim Limits, dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	if _, err := io.ReadFull(r, dst); err != nil {
		return noEOF(err)
	}
	return ReadDataTrailer(r, lim, dst)
}

// ReadDataTrailer reads what follows a data segment already read into
// dst: its padding and, when negotiated, its digest, which it checks.
func ReadDataTrailer(r io.Reader, lim Limits, dst []byte) error {
	if len(dst) == 0 {
		return nil // an empty segment has neither
	}
	var pad [4]byte
	pl := pad[:pad4(uint32(len(dst)))]
	if len(pl) > 0 {
		if _, err := io.ReadFull(r, pl); err != nil {
			return noEOF(err)
		}
	}
	if lim.DataDigest {
		var dig [4]byte
		if _, err := io.ReadFull(r, dig[:]); err != nil {
			return noEOF(err)
		}
		if binary.LittleEndian.Uint32(dig[:]) != CRC32C(dst, pl) {
			return ErrDataDigest
		}
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

var zeros [4]byte

// WritePDU writes h (its data length field set from len(data)) followed by
// data, padding and the digests asked for. w is usually buffered.
func WritePDU(w io.Writer, h *Header, data []byte, headerDigest, dataDigest bool) error {
	h.SetDataLen(uint32(len(data)))
	h[4] = 0 // we never send AHS
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	var dig [4]byte
	if headerDigest {
		binary.LittleEndian.PutUint32(dig[:], CRC32C(h[:]))
		if _, err := w.Write(dig[:]); err != nil {
			return err
		}
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	pad := zeros[:pad4(uint32(len(data)))]
	if len(pad) > 0 {
		if _, err := w.Write(pad); err != nil {
			return err
		}
	}
	if dataDigest {
		binary.LittleEndian.PutUint32(dig[:], CRC32C(data, pad))
		if _, err := w.Write(dig[:]); err != nil {
			return err
		}
	}
	return nil
}
