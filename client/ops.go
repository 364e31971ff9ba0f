package client

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gosheep/gosheep/proto"
)

// ObjReq addresses an object operation: the request's obj union plus the
// header fields object I/O uses.
type ObjReq struct {
	OID        proto.OID
	CowOID     proto.OID // CreateAndWrite*: copy-on-write source; non-zero sets FlagCOW
	Offset     uint32    // byte offset inside the object
	Copies     uint8     // redundancy the sender believes the VDI has (0: look it up)
	CopyPolicy uint8
	ECIndex    uint8       // peer ops on erasure-coded strips
	Epoch      uint32      // header epoch: the sender's cluster epoch (peer ops)
	TgtEpoch   uint32      // recovery reads, GET_HASH
	Flags      proto.Flags // extra flags: FlagCache, FlagDirect, FlagSync, FlagRecovery...
}

func (o ObjReq) request(op proto.Opcode) proto.Request {
	r := proto.Request{Opcode: op, Flags: o.Flags, Epoch: o.Epoch}
	if o.CowOID != 0 {
		r.Flags |= proto.FlagCOW
	}
	r.SetObj(proto.ObjArgs{OID: uint64(o.OID), CowOID: uint64(o.CowOID), Copies: o.Copies,
		CopyPolicy: o.CopyPolicy, ECIndex: o.ECIndex, TgtEpoch: o.TgtEpoch, Offset: o.Offset})
	return r
}

func (c *Conn) readOp(ctx context.Context, op proto.Opcode, o ObjReq, buf []byte) ([]byte, error) {
	r := o.request(op)
	r.Flags &^= proto.FlagWrite
	r.DataLength = uint32(len(buf))
	_, data, err := c.Do(ctx, r, nil, buf)
	return data, err
}

func (c *Conn) writeOp(ctx context.Context, op proto.Opcode, o ObjReq, data []byte) error {
	r := o.request(op)
	r.Flags |= proto.FlagWrite
	_, _, err := c.Do(ctx, r, data, nil)
	return err
}

func (c *Conn) simple(ctx context.Context, r proto.Request) (proto.Response, error) {
	rsp, _, err := c.Do(ctx, r, nil, nil)
	return rsp, err
}

// ReadObj reads len(buf) bytes at o.Offset of o.OID (READ_OBJ) into buf and
// returns the bytes the sheep sent.
func (c *Conn) ReadObj(ctx context.Context, o ObjReq, buf []byte) ([]byte, error) {
	return c.readOp(ctx, proto.OpReadObj, o, buf)
}

// WriteObj writes data at o.Offset of the existing object o.OID (WRITE_OBJ).
func (c *Conn) WriteObj(ctx context.Context, o ObjReq, data []byte) error {
	return c.writeOp(ctx, proto.OpWriteObj, o, data)
}

// CreateAndWriteObj creates o.OID (zero-filled, or a copy of o.CowOID) and
// writes data at o.Offset (CREATE_AND_WRITE_OBJ).
func (c *Conn) CreateAndWriteObj(ctx context.Context, o ObjReq, data []byte) error {
	return c.writeOp(ctx, proto.OpCreateAndWriteObj, o, data)
}

// RemoveObj removes o.OID (REMOVE_OBJ).
func (c *Conn) RemoveObj(ctx context.Context, o ObjReq) error {
	_, err := c.simple(ctx, o.request(proto.OpRemoveObj))
	return err
}

// DiscardObj is old QEMU's discard of data object o.OID (DISCARD_OBJ).
func (c *Conn) DiscardObj(ctx context.Context, o ObjReq) error {
	_, err := c.simple(ctx, o.request(proto.OpDiscardObj))
	return err
}

// ReadPeer reads from a replica or EC strip held by the peer (READ_PEER).
func (c *Conn) ReadPeer(ctx context.Context, o ObjReq, buf []byte) ([]byte, error) {
	return c.readOp(ctx, proto.OpReadPeer, o, buf)
}

// WritePeer writes to a replica or EC strip held by the peer (WRITE_PEER).
func (c *Conn) WritePeer(ctx context.Context, o ObjReq, data []byte) error {
	return c.writeOp(ctx, proto.OpWritePeer, o, data)
}

// CreateAndWritePeer creates a replica or EC strip on the peer (CREATE_AND_WRITE_PEER).
func (c *Conn) CreateAndWritePeer(ctx context.Context, o ObjReq, data []byte) error {
	return c.writeOp(ctx, proto.OpCreateAndWritePeer, o, data)
}

// RemovePeer removes a replica or EC strip from the peer (REMOVE_PEER).
func (c *Conn) RemovePeer(ctx context.Context, o ObjReq) error {
	_, err := c.simple(ctx, o.request(proto.OpRemovePeer))
	return err
}

// nameTag is the 512-byte name+tag payload of VDI lookups.
func nameTag(name, tag string) []byte { return append(proto.PadName(name), proto.PadName(tag)...) }

// NewVDI creates a VDI, snapshot (a.SnapID != 0) or clone (a.BaseVDIID of a
// snapshot) named name (NEW_VDI).
func (c *Conn) NewVDI(ctx context.Context, name string, a proto.VDIArgs) (proto.VDIRsp, error) {
	r := proto.Request{Opcode: proto.OpNewVDI}
	r.SetVDI(a)
	rsp, _, err := c.Do(ctx, r, proto.PadName(name), nil)
	return rsp.VDI(), err
}

// LockVDI looks a VDI up and locks it for this client (LOCK_VDI), as QEMU
// does on open. tag or snapID select a snapshot; lockType is 0 (normal) or
// 1 (shared).
func (c *Conn) LockVDI(ctx context.Context, name, tag string, snapID, lockType uint32) (proto.VDIRsp, error) {
	r := proto.Request{Opcode: proto.OpLockVDI}
	r.SetVDI(proto.VDIArgs{SnapID: snapID, Type: lockType})
	rsp, _, err := c.Do(ctx, r, nameTag(name, tag), nil)
	return rsp.VDI(), err
}

// GetVDIInfo looks a VDI up without locking it (GET_VDI_INFO).
func (c *Conn) GetVDIInfo(ctx context.Context, name, tag string, snapID uint32) (proto.VDIRsp, error) {
	r := proto.Request{Opcode: proto.OpGetVDIInfo}
	r.SetVDI(proto.VDIArgs{SnapID: snapID})
	rsp, _, err := c.Do(ctx, r, nameTag(name, tag), nil)
	return rsp.VDI(), err
}

// ReleaseVDI releases the lock on vid (RELEASE_VDI). Like QEMU it sends the
// name with its NUL; with an empty name, like dog, no payload.
func (c *Conn) ReleaseVDI(ctx context.Context, name string, vid uint32) error {
	r := proto.Request{Opcode: proto.OpReleaseVDI}
	r.SetVDI(proto.VDIArgs{BaseVDIID: vid})
	var data []byte
	if name != "" {
		data = append([]byte(name), 0)
	}
	_, _, err := c.Do(ctx, r, data, nil)
	return err
}

// DelVDI deletes the working VDI name (name payload only) or, with a tag or
// snapID, one of its snapshots (name+tag payload) (DEL_VDI).
func (c *Conn) DelVDI(ctx context.Context, name, tag string, snapID uint32) error {
	r := proto.Request{Opcode: proto.OpDelVDI}
	r.SetVDI(proto.VDIArgs{SnapID: snapID})
	data := proto.PadName(name)
	if tag != "" || snapID != 0 {
		data = nameTag(name, tag)
	}
	_, _, err := c.Do(ctx, r, data, nil)
	return err
}

// ReadVDIs fetches the 2 MiB VDI in-use bitmap (READ_VDIS).
func (c *Conn) ReadVDIs(ctx context.Context) (proto.VDIBitmap, error) {
	r := proto.Request{Opcode: proto.OpReadVDIs, DataLength: proto.VDIBitmapSize}
	_, data, err := c.Do(ctx, r, nil, nil)
	if err != nil {
		return nil, err
	}
	m, err := proto.ParseVDIBitmap(data)
	if err != nil {
		return nil, fmt.Errorf("client: READ_VDIS from %s: %w", c.addr, err)
	}
	return m, nil
}

// FlushVDI asks for the VDI's writes to be made durable (FLUSH_VDI).
// Sheep answers proto.ResInvalidParms: every acknowledged write is durable.
func (c *Conn) FlushVDI(ctx context.Context, vid uint32) error {
	r := proto.Request{Opcode: proto.OpFlushVDI}
	r.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(vid))})
	_, err := c.simple(ctx, r)
	return err
}

// GetClusterDefault returns the cluster's default redundancy and object
// size (GET_CLUSTER_DEFAULT).
func (c *Conn) GetClusterDefault(ctx context.Context) (proto.ClusterDefault, error) {
	rsp, err := c.simple(ctx, proto.Request{Opcode: proto.OpGetClusterDefault})
	return rsp.ClusterDefault(), err
}

// maxNodes is sheepdog's SD_MAX_NODES: the node list never needs more.
const maxNodes = 6144

// GetNodeList returns the cluster's members (GET_NODE_LIST).
func (c *Conn) GetNodeList(ctx context.Context) ([]proto.Node, error) {
	for n := 256; ; n *= 4 {
		n = min(n, maxNodes)
		_, data, err := c.Do(ctx, proto.Request{Opcode: proto.OpGetNodeList, DataLength: uint32(n * proto.NodeSize)}, nil, nil)
		if errors.Is(err, proto.ResBufferSmall) && n < maxNodes {
			continue
		}
		if err != nil {
			return nil, err
		}
		ns, err := proto.UnmarshalNodes(data)
		if err != nil {
			return nil, fmt.Errorf("client: GET_NODE_LIST from %s: %w", c.addr, err)
		}
		return ns, nil
	}
}

// MakeFS formats the cluster (MAKE_FS); store is the backend name ("plain").
func (c *Conn) MakeFS(ctx context.Context, a proto.ClusterArgs, store string) error {
	r := proto.Request{Opcode: proto.OpMakeFS, Flags: proto.FlagWrite}
	r.SetCluster(a)
	_, _, err := c.Do(ctx, r, append([]byte(store), 0), nil)
	return err
}

// Shutdown stops the whole cluster (SHUTDOWN).
func (c *Conn) Shutdown(ctx context.Context) error {
	_, err := c.simple(ctx, proto.Request{Opcode: proto.OpShutdown})
	return err
}

// StatSheep returns the node's store capacity and free space (STAT_SHEEP).
func (c *Conn) StatSheep(ctx context.Context) (proto.NodeRsp, error) {
	rsp, err := c.simple(ctx, proto.Request{Opcode: proto.OpStatSheep})
	return rsp.Node(), err
}

// GetHash returns the SHA-1 of the peer's copy of oid (GET_HASH).
func (c *Conn) GetHash(ctx context.Context, oid proto.OID, tgtEpoch uint32) ([20]byte, error) {
	r := proto.Request{Opcode: proto.OpGetHash}
	r.SetObj(proto.ObjArgs{OID: uint64(oid), TgtEpoch: tgtEpoch})
	rsp, err := c.simple(ctx, r)
	if err != nil {
		return [20]byte{}, err
	}
	return rsp.Hash(), nil
}

// GetSumsHash returns the fingerprint of the peer's replica of oid read
// from its block checksums (GET_SUMS_HASH, store.SumsHash).
func (c *Conn) GetSumsHash(ctx context.Context, oid proto.OID) ([20]byte, error) {
	r := proto.Request{Opcode: proto.OpGetSumsHash}
	r.SetObj(proto.ObjArgs{OID: uint64(oid)})
	rsp, err := c.simple(ctx, r)
	if err != nil {
		return [20]byte{}, err
	}
	return rsp.Hash(), nil
}

// Exist reports whether the peer holds oid (EXIST); ResNoObj is "false".
func (c *Conn) Exist(ctx context.Context, oid proto.OID, ecIndex uint8) (bool, error) {
	r := proto.Request{Opcode: proto.OpExist}
	r.SetObj(proto.ObjArgs{OID: uint64(oid), ECIndex: ecIndex})
	_, err := c.simple(ctx, r)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, proto.ResNoObj):
		return false, nil
	}
	return false, err
}

// Buffer sizes of the ops answered with variable-length lists.
const (
	objListStart = 1 << 20
	objListMax   = 64 << 20
)

// GetObjList returns the oids the peer stores at epoch (GET_OBJ_LIST),
// growing the buffer on ResBufferSmall as sheep's recovery does.
func (c *Conn) GetObjList(ctx context.Context, epoch uint32) ([]proto.OID, error) {
	for n := objListStart; ; n *= 2 {
		_, data, err := c.Do(ctx, proto.Request{Opcode: proto.OpGetObjList, Epoch: epoch, DataLength: uint32(n)}, nil, nil)
		if errors.Is(err, proto.ResBufferSmall) && n < objListMax {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(data)%8 != 0 {
			return nil, fmt.Errorf("client: GET_OBJ_LIST from %s: %d bytes is not a list of oids: %w", c.addr, len(data), ErrProtocol)
		}
		oids := make([]proto.OID, len(data)/8)
		for i := range oids {
			oids[i] = proto.OID(binary.LittleEndian.Uint64(data[8*i:]))
		}
		return oids, nil
	}
}

// KillNode makes the peer leave the cluster and exit (KILL_NODE).
func (c *Conn) KillNode(ctx context.Context) error {
	_, err := c.simple(ctx, proto.Request{Opcode: proto.OpKillNode})
	return err
}

// EnableRecover resumes automatic recovery (ENABLE_RECOVER).
func (c *Conn) EnableRecover(ctx context.Context) error {
	_, err := c.simple(ctx, proto.Request{Opcode: proto.OpEnableRecover})
	return err
}

// DisableRecover suspends automatic recovery (DISABLE_RECOVER).
func (c *Conn) DisableRecover(ctx context.Context) error {
	_, err := c.simple(ctx, proto.Request{Opcode: proto.OpDisableRecover})
	return err
}

// Response buffer sizes for Meta: start small, grow on ResBufferSmall.
const (
	metaStart = 64 << 10
	metaMax   = 64 << 20
)

// Meta calls one of gosheep's JSON extension opcodes (0xe0..0xff): in is
// sent as JSON (nothing when nil) and the JSON response is decoded into out
// (ignored when nil). The response buffer grows on ResBufferSmall.
func (c *Conn) Meta(ctx context.Context, op proto.Opcode, in, out any) error {
	if !op.Extension() {
		return fmt.Errorf("client: Meta with non-extension opcode %s: %w", op, proto.ResInvalidParms)
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("client: %s request: %w", op, err)
		}
	}
	for n := uint32(metaStart); ; n *= 4 {
		r := proto.Request{Opcode: op}
		r.SetMeta(proto.MetaArgs{ReplyLength: n})
		_, data, err := c.Do(ctx, r, body, nil)
		if errors.Is(err, proto.ResBufferSmall) && n < metaMax {
			continue
		}
		if err != nil {
			return err
		}
		if out == nil || len(data) == 0 {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("client: %s from %s: malformed JSON response: %v: %w", op, c.addr, err, ErrProtocol)
		}
		return nil
	}
}
