package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the fixed size of request and response headers.
const HeaderSize = 48

// Protocol versions (header byte 0).
const (
	ProtoVer      uint8 = 0x02 // public protocol (QEMU sends 0 or 1)
	SheepProtoVer uint8 = 0x0a // internal protocol, required for opcodes >= 0x80
)

// Flags are the request header flags at bytes 2..3.
type Flags uint16

const (
	FlagWrite     Flags = 0x01
	FlagCOW       Flags = 0x02
	FlagCache     Flags = 0x04
	FlagDirect    Flags = 0x08
	FlagPiggyback Flags = 0x10
	FlagTgt       Flags = 0x20
	FlagFwd       Flags = 0x40
	FlagRecovery  Flags = 0x80
	FlagWildcard  Flags = 0x100
	FlagCreat     Flags = 0x100 // GET_VDI_ATTR: create
	FlagExcl      Flags = 0x200 // GET_VDI_ATTR: exclusive create
	FlagDel       Flags = 0x400 // GET_VDI_ATTR: delete
	// FlagSync is a gosheep extension on peer writes: make this write durable
	// before answering (the FUA of iSCSI/NBD). Sheepdog never set bit 0x800.
	FlagSync Flags = 0x800
	// FlagExclusive is a gosheep extension on CREATE_AND_WRITE_PEER: create
	// only if the object does not exist (else ResOIDExist), so two gateways
	// allocating one object at once never wipe each other's data.
	FlagExclusive Flags = 0x1000
)

var le = binary.LittleEndian

// Request is a decoded 48-byte request header. Args holds bytes 16..47, the
// opcode-specific union; use the typed accessors (Obj, VDI, Cluster...).
type Request struct {
	ProtoVer   uint8
	Opcode     Opcode
	Flags      Flags
	Epoch      uint32
	ID         uint32
	DataLength uint32
	Args       [32]byte
}

// Response is a decoded 48-byte response header; Args holds bytes 20..47.
type Response struct {
	ProtoVer   uint8
	Opcode     Opcode
	Flags      Flags
	Epoch      uint32
	ID         uint32
	DataLength uint32
	Result     Result
	Args       [28]byte
}

// ErrShortHeader means fewer than HeaderSize bytes were given.
var ErrShortHeader = errors.New("proto: short header")

// Marshal encodes the header into a new 48-byte slice.
func (r *Request) Marshal() []byte {
	b := make([]byte, HeaderSize)
	r.MarshalTo(b)
	return b
}

// MarshalTo encodes the header into b, which must hold HeaderSize bytes.
func (r *Request) MarshalTo(b []byte) {
	_ = b[HeaderSize-1]
	b[0] = r.ProtoVer
	b[1] = byte(r.Opcode)
	le.PutUint16(b[2:], uint16(r.Flags))
	le.PutUint32(b[4:], r.Epoch)
	le.PutUint32(b[8:], r.ID)
	le.PutUint32(b[12:], r.DataLength)
	copy(b[16:48], r.Args[:])
}

// Unmarshal decodes a request header from b.
func (r *Request) Unmarshal(b []byte) error {
	if len(b) < HeaderSize {
		return ErrShortHeader
	}
	r.ProtoVer = b[0]
	r.Opcode = Opcode(b[1])
	r.Flags = Flags(le.Uint16(b[2:]))
	r.Epoch = le.Uint32(b[4:])
	r.ID = le.Uint32(b[8:])
	r.DataLength = le.Uint32(b[12:])
	copy(r.Args[:], b[16:48])
	return nil
}

// Marshal encodes the response header into a new 48-byte slice.
func (r *Response) Marshal() []byte {
	b := make([]byte, HeaderSize)
	r.MarshalTo(b)
	return b
}

// MarshalTo encodes the header into b, which must hold HeaderSize bytes.
func (r *Response) MarshalTo(b []byte) {
	_ = b[HeaderSize-1]
	b[0] = r.ProtoVer
	b[1] = byte(r.Opcode)
	le.PutUint16(b[2:], uint16(r.Flags))
	le.PutUint32(b[4:], r.Epoch)
	le.PutUint32(b[8:], r.ID)
	le.PutUint32(b[12:], r.DataLength)
	le.PutUint32(b[16:], uint32(r.Result))
	copy(b[20:48], r.Args[:])
}

// Unmarshal decodes a response header from b.
func (r *Response) Unmarshal(b []byte) error {
	if len(b) < HeaderSize {
		return ErrShortHeader
	}
	r.ProtoVer = b[0]
	r.Opcode = Opcode(b[1])
	r.Flags = Flags(le.Uint16(b[2:]))
	r.Epoch = le.Uint32(b[4:])
	r.ID = le.Uint32(b[8:])
	r.DataLength = le.Uint32(b[12:])
	r.Result = Result(le.Uint32(b[16:]))
	copy(r.Args[:], b[20:48])
	return nil
}

// ReadRequest reads one request header from rd.
func ReadRequest(rd io.Reader) (Request, error) {
	var b [HeaderSize]byte
	var r Request
	if _, err := io.ReadFull(rd, b[:]); err != nil {
		return r, err
	}
	return r, r.Unmarshal(b[:])
}

// ReadResponse reads one response header from rd.
func ReadResponse(rd io.Reader) (Response, error) {
	var b [HeaderSize]byte
	var r Response
	if _, err := io.ReadFull(rd, b[:]); err != nil {
		return r, err
	}
	return r, r.Unmarshal(b[:])
}

// CheckVersion applies sheep's proto_ver rule: internal opcodes need exactly
// SheepProtoVer; public ones accept 0 and anything up to ProtoVer.
func (r *Request) CheckVersion() error {
	if r.Opcode.Internal() {
		if r.ProtoVer != SheepProtoVer {
			return ResVerMismatch
		}
		return nil
	}
	if r.ProtoVer > ProtoVer {
		return ResVerMismatch
	}
	return nil
}

// Reply builds the response header skeleton for r.
func (r *Request) Reply(res Result) Response {
	return Response{Opcode: r.Opcode, ID: r.ID, Result: res}
}

func (r Request) String() string {
	return fmt.Sprintf("%s id=%d flags=%#x epoch=%d len=%d", r.Opcode, r.ID, uint16(r.Flags), r.Epoch, r.DataLength)
}

// ObjArgs is the "obj" union variant: object I/O and peer ops.
type ObjArgs struct {
	OID        uint64
	CowOID     uint64
	Copies     uint8
	CopyPolicy uint8
	ECIndex    uint8
	TgtEpoch   uint32
	Offset     uint32
}

// Obj decodes the obj variant.
func (r *Request) Obj() ObjArgs {
	a := r.Args[:]
	return ObjArgs{
		OID: le.Uint64(a[0:]), CowOID: le.Uint64(a[8:]),
		Copies: a[16], CopyPolicy: a[17], ECIndex: a[18],
		TgtEpoch: le.Uint32(a[20:]), Offset: le.Uint32(a[24:]),
	}
}

// OffsetHigh returns the u32 at header byte 44: the high half of QEMU's u64 offset.
func (r *Request) OffsetHigh() uint32 { return le.Uint32(r.Args[28:]) }

// PeerSize and SetPeerSize carry a gosheep extension in the same u32 at
// byte 44 of peer requests (which QEMU never sends): the object size of a
// CREATE_AND_WRITE_PEER, or the range length of a ZERO_PEER.
func (r *Request) PeerSize() uint32 { return le.Uint32(r.Args[28:]) }

// SetPeerSize sets the u32 at header byte 44 (see PeerSize).
func (r *Request) SetPeerSize(n uint32) { le.PutUint32(r.Args[28:], n) }

// SetObj encodes the obj variant.
func (r *Request) SetObj(o ObjArgs) {
	r.Args = [32]byte{}
	a := r.Args[:]
	le.PutUint64(a[0:], o.OID)
	le.PutUint64(a[8:], o.CowOID)
	a[16], a[17], a[18] = o.Copies, o.CopyPolicy, o.ECIndex
	le.PutUint32(a[20:], o.TgtEpoch)
	le.PutUint32(a[24:], o.Offset)
}

// VDIArgs is the "vdi" union variant: VDI ops 0x11..0x17.
type VDIArgs struct {
	VDISize        uint64
	BaseVDIID      uint32
	Copies         uint8
	CopyPolicy     uint8
	StorePolicy    uint8
	BlockSizeShift uint8
	SnapID         uint32
	Type           uint32
}

// VDI decodes the vdi variant.
func (r *Request) VDI() VDIArgs {
	a := r.Args[:]
	return VDIArgs{
		VDISize: le.Uint64(a[0:]), BaseVDIID: le.Uint32(a[8:]),
		Copies: a[12], CopyPolicy: a[13], StorePolicy: a[14], BlockSizeShift: a[15],
		SnapID: le.Uint32(a[16:]), Type: le.Uint32(a[20:]),
	}
}

// SetVDI encodes the vdi variant.
func (r *Request) SetVDI(v VDIArgs) {
	r.Args = [32]byte{}
	a := r.Args[:]
	le.PutUint64(a[0:], v.VDISize)
	le.PutUint32(a[8:], v.BaseVDIID)
	a[12], a[13], a[14], a[15] = v.Copies, v.CopyPolicy, v.StorePolicy, v.BlockSizeShift
	le.PutUint32(a[16:], v.SnapID)
	le.PutUint32(a[20:], v.Type)
}

// ClusterArgs is the "cluster" union variant (MAKE_FS and friends).
type ClusterArgs struct {
	OID            uint64
	Ctime          uint64
	Copies         uint8
	CopyPolicy     uint8
	Flags          uint16
	Tag            uint32
	NodesNr        uint32
	BlockSizeShift uint8
}

// Cluster decodes the cluster variant.
func (r *Request) Cluster() ClusterArgs {
	a := r.Args[:]
	return ClusterArgs{
		OID: le.Uint64(a[0:]), Ctime: le.Uint64(a[8:]), Copies: a[16], CopyPolicy: a[17],
		Flags: le.Uint16(a[18:]), Tag: le.Uint32(a[20:]), NodesNr: le.Uint32(a[24:]),
		BlockSizeShift: a[28],
	}
}

// SetCluster encodes the cluster variant.
func (r *Request) SetCluster(c ClusterArgs) {
	r.Args = [32]byte{}
	a := r.Args[:]
	le.PutUint64(a[0:], c.OID)
	le.PutUint64(a[8:], c.Ctime)
	a[16], a[17] = c.Copies, c.CopyPolicy
	le.PutUint16(a[18:], c.Flags)
	le.PutUint32(a[20:], c.Tag)
	le.PutUint32(a[24:], c.NodesNr)
	a[28] = c.BlockSizeShift
}

// Cluster format flags (ClusterArgs.Flags).
const (
	ClusterFlagStrict        uint16 = 0x0001
	ClusterFlagDiskMode      uint16 = 0x0002
	ClusterFlagAutoVnodes    uint16 = 0x0004
	ClusterFlagUseLock       uint16 = 0x0008
	ClusterFlagRecycleVID    uint16 = 0x0010
	ClusterFlagAvoidDiskFull uint16 = 0x0020
)

// ObjRsp is the obj response variant.
type ObjRsp struct {
	Copies     uint8
	CopyPolicy uint8
	Offset     uint64
}

// Obj decodes the obj response variant.
func (r *Response) Obj() ObjRsp {
	return ObjRsp{Copies: r.Args[0], CopyPolicy: r.Args[1], Offset: le.Uint64(r.Args[4:])}
}

// SetObj encodes the obj response variant.
func (r *Response) SetObj(o ObjRsp) {
	r.Args = [28]byte{}
	r.Args[0], r.Args[1] = o.Copies, o.CopyPolicy
	le.PutUint64(r.Args[4:], o.Offset)
}

// VDIRsp is the vdi response variant.
type VDIRsp struct {
	VDIID          uint32
	AttrID         uint32
	Copies         uint8
	BlockSizeShift uint8
}

// VDI decodes the vdi response variant (vdi_id at header byte 24).
func (r *Response) VDI() VDIRsp {
	return VDIRsp{VDIID: le.Uint32(r.Args[4:]), AttrID: le.Uint32(r.Args[8:]), Copies: r.Args[12], BlockSizeShift: r.Args[13]}
}

// SetVDI encodes the vdi response variant.
func (r *Response) SetVDI(v VDIRsp) {
	r.Args = [28]byte{}
	le.PutUint32(r.Args[4:], v.VDIID)
	le.PutUint32(r.Args[8:], v.AttrID)
	r.Args[12], r.Args[13] = v.Copies, v.BlockSizeShift
}

// NodeRsp is the node response variant (STAT_SHEEP, GET_NODE_LIST).
type NodeRsp struct {
	NrNodes   uint32
	StoreSize uint64
	StoreFree uint64
}

// Node decodes the node response variant.
func (r *Response) Node() NodeRsp {
	return NodeRsp{NrNodes: le.Uint32(r.Args[0:]), StoreSize: le.Uint64(r.Args[12:]), StoreFree: le.Uint64(r.Args[20:])}
}

// SetNode encodes the node response variant.
func (r *Response) SetNode(n NodeRsp) {
	r.Args = [28]byte{}
	le.PutUint32(r.Args[0:], n.NrNodes)
	le.PutUint64(r.Args[12:], n.StoreSize)
	le.PutUint64(r.Args[20:], n.StoreFree)
}

// Hash returns the SHA-1 digest of a GET_HASH response (header byte 24).
func (r *Response) Hash() (d [20]byte) { copy(d[:], r.Args[4:24]); return d }

// SetHash encodes a GET_HASH digest.
func (r *Response) SetHash(d [20]byte) { r.Args = [28]byte{}; copy(r.Args[4:24], d[:]) }

// ClusterDefault is the GET_CLUSTER_DEFAULT response variant.
type ClusterDefault struct {
	Copies         uint8
	CopyPolicy     uint8
	BlockSizeShift uint8
}

// ClusterDefault decodes the cluster_default response variant.
func (r *Response) ClusterDefault() ClusterDefault {
	return ClusterDefault{Copies: r.Args[0], CopyPolicy: r.Args[1], BlockSizeShift: r.Args[2]}
}

// SetClusterDefault encodes the cluster_default response variant.
func (r *Response) SetClusterDefault(c ClusterDefault) {
	r.Args = [28]byte{}
	r.Args[0], r.Args[1], r.Args[2] = c.Copies, c.CopyPolicy, c.BlockSizeShift
}

// MetaArgs is the request union of gosheep's extension opcodes (0xe0..0xff),
// whose payloads are JSON. A JSON request travels as a WRITE payload, so
// DataLength counts the bytes sent; ReplyLength (header byte 16) tells the
// server how large a response the client's buffer takes. A server answers
// ResBufferSmall when its response would not fit.
type MetaArgs struct {
	ReplyLength uint32
}

// Meta decodes the extension-opcode variant.
func (r *Request) Meta() MetaArgs { return MetaArgs{ReplyLength: le.Uint32(r.Args[0:])} }

// SetMeta encodes the extension-opcode variant.
func (r *Request) SetMeta(m MetaArgs) {
	r.Args = [32]byte{}
	le.PutUint32(r.Args[0:], m.ReplyLength)
}

// ReplyLimit is the largest response payload the sender of r accepts.
// Sheepdog uses one buffer in both directions, so that is DataLength, for
// reads and writes alike; extension opcodes may raise it with
// MetaArgs.ReplyLength.
func (r *Request) ReplyLimit() uint32 {
	if r.Opcode.Extension() {
		return max(r.DataLength, r.Meta().ReplyLength)
	}
	return r.DataLength
}
