// Package vdi reads and writes a VDI over sheepdog's protocol exactly as
// QEMU's sheepdog driver did: it reads the inode, sends object I/O for
// allocated objects, creates objects for holes (copy-on-write from an
// ancestor's object with cow_oid), then updates the inode's data_vdi_id
// itself. `dog vdi read/write` and the protocol tests use it.
package vdi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/proto"
)

// ErrOutOfRange is an access beyond the VDI's size.
var ErrOutOfRange = proto.NewError(proto.ResInvalidParms, "vdi: access beyond end of vdi")

// Conn is the part of client.Conn this package needs.
type Conn interface {
	Do(ctx context.Context, req proto.Request, wdata, rbuf []byte) (proto.Response, []byte, error)
}

// VDI is an open VDI. It is safe for concurrent use; like QEMU, callers
// must not issue overlapping writes concurrently.
type VDI struct {
	c        Conn
	name     string
	tag      string
	snapID   uint32
	readOnly bool

	mu    sync.RWMutex
	inode *proto.Inode
	locks [64]sync.Mutex // per-object allocation
}

// Open looks the VDI up (GET_VDI_INFO) and reads its inode. A tag or
// snapID opens a snapshot, read-only.
func Open(ctx context.Context, c Conn, name, tag string, snapID uint32) (*VDI, error) {
	v := &VDI{c: c, name: name, tag: tag, snapID: snapID, readOnly: tag != "" || snapID != 0}
	if err := v.reload(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// Lookup returns the vid of name (tag/snapID select a snapshot).
func Lookup(ctx context.Context, c Conn, name, tag string, snapID uint32) (uint32, error) {
	req := proto.Request{Opcode: proto.OpGetVDIInfo, ProtoVer: proto.ProtoVer, Flags: proto.FlagWrite}
	req.SetVDI(proto.VDIArgs{SnapID: snapID})
	payload := append(proto.PadName(name), proto.PadName(tag)...)
	rsp, _, err := c.Do(ctx, req, payload, nil)
	if err != nil {
		return 0, fmt.Errorf("vdi %q: %w", name, err)
	}
	return rsp.VDI().VDIID, nil
}

// ReadInode reads vid's inode: the header and the first n index entries.
func ReadInode(ctx context.Context, c Conn, vid uint32, entries uint32) (*proto.Inode, error) {
	n := proto.InodeHeaderSize + 4*int(entries)
	req := proto.Request{Opcode: proto.OpReadObj, DataLength: uint32(n)}
	req.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(vid))})
	_, b, err := c.Do(ctx, req, nil, make([]byte, n))
	if err != nil {
		return nil, fmt.Errorf("read inode %#x: %w", vid, err)
	}
	ino := &proto.Inode{}
	if err := ino.UnmarshalHeader(b); err != nil {
		return nil, err
	}
	ino.DataVDIID = make([]uint32, entries)
	if len(b) > proto.InodeHeaderSize {
		proto.DecodeIndex(ino.DataVDIID, b[proto.InodeHeaderSize:])
	}
	return ino, nil
}

func (v *VDI) reload(ctx context.Context) error {
	vid, err := Lookup(ctx, v.c, v.name, v.tag, v.snapID)
	if err != nil {
		return err
	}
	hdr, err := ReadInode(ctx, v.c, vid, 0)
	if err != nil {
		return err
	}
	ino, err := ReadInode(ctx, v.c, vid, nrObjects(hdr.VDISize, hdr.ObjectSize()))
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.inode = ino
	v.mu.Unlock()
	return nil
}

func nrObjects(size uint64, objSize uint32) uint32 {
	return uint32((size + uint64(objSize) - 1) / uint64(objSize))
}

// Inode returns the cached inode (header and index).
func (v *VDI) Inode() *proto.Inode {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.inode
}

// Size is the VDI size in bytes.
func (v *VDI) Size() uint64 { return v.Inode().VDISize }

// ObjectSize is the data object size.
func (v *VDI) ObjectSize() uint32 { return v.Inode().ObjectSize() }

type piece struct {
	idx, inner uint32
	lo         uint64
	n          uint32
}

func (v *VDI) pieces(off, n uint64) ([]piece, error) {
	ino := v.Inode()
	if off+n < off || off+n > ino.VDISize {
		return nil, fmt.Errorf("%d+%d beyond %d: %w", off, n, ino.VDISize, ErrOutOfRange)
	}
	os := uint64(ino.ObjectSize())
	var out []piece
	for pos := off; pos < off+n; {
		idx := pos / os
		end := min(off+n, (idx+1)*os)
		out = append(out, piece{idx: uint32(idx), inner: uint32(pos % os), lo: pos - off, n: uint32(end - pos)})
		pos = end
	}
	return out, nil
}

func (v *VDI) owner(idx uint32) (vid, owner uint32, copies, policy uint8) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if int(idx) < len(v.inode.DataVDIID) {
		owner = v.inode.DataVDIID[idx]
	}
	return v.inode.VDIID, owner, v.inode.NrCopies, v.inode.CopyPolicy
}

// ReadAt reads len(p) bytes at off; holes read as zeros without a request.
func (v *VDI) ReadAt(ctx context.Context, p []byte, off uint64) error {
	ps, err := v.pieces(off, uint64(len(p)))
	if err != nil {
		return err
	}
	return each(ps, func(pc piece) error {
		buf := p[pc.lo : pc.lo+uint64(pc.n)]
		_, owner, copies, policy := v.owner(pc.idx)
		if owner == 0 {
			clear(buf)
			return nil
		}
		req := proto.Request{Opcode: proto.OpReadObj, DataLength: pc.n, Flags: proto.FlagCache}
		req.SetObj(proto.ObjArgs{OID: uint64(proto.DataOID(owner, pc.idx)), Offset: pc.inner, Copies: copies, CopyPolicy: policy})
		_, got, err := v.c.Do(ctx, req, nil, buf)
		if err != nil {
			return err
		}
		if len(got) != len(buf) {
			return fmt.Errorf("short read of %s: %d of %d: %w", proto.DataOID(owner, pc.idx), len(got), len(buf), proto.ResEIO)
		}
		if len(got) > 0 && &got[0] != &buf[0] {
			copy(buf, got)
		}
		return nil
	})
}

// WriteAt writes p at off the way QEMU does.
func (v *VDI) WriteAt(ctx context.Context, p []byte, off uint64) error {
	if v.readOnly {
		return fmt.Errorf("vdi %q: snapshot is read-only: %w", v.name, proto.ResReadonly)
	}
	ps, err := v.pieces(off, uint64(len(p)))
	if err != nil {
		return err
	}
	return each(ps, func(pc piece) error {
		data := p[pc.lo : pc.lo+uint64(pc.n)]
		for attempt := 0; ; attempt++ {
			err := v.writePiece(ctx, pc, data)
			if errors.Is(err, proto.ResReadonly) && attempt < maxReloads {
				// Snapshotted under us: reload and copy on write into the new working VDI.
				if rerr := v.reload(ctx); rerr != nil {
					return rerr
				}
				continue
			}
			return err
		}
	})
}

func (v *VDI) writePiece(ctx context.Context, pc piece, data []byte) error {
	l := &v.locks[pc.idx%uint32(len(v.locks))]
	l.Lock()
	defer l.Unlock()
	vid, owner, copies, policy := v.owner(pc.idx)
	a := proto.ObjArgs{OID: uint64(proto.DataOID(vid, pc.idx)), Offset: pc.inner, Copies: copies, CopyPolicy: policy}
	req := proto.Request{Flags: proto.FlagWrite | proto.FlagCache}
	switch owner {
	case vid:
		req.Opcode = proto.OpWriteObj
	case 0:
		req.Opcode = proto.OpCreateAndWriteObj
	default:
		req.Opcode = proto.OpCreateAndWriteObj
		req.Flags |= proto.FlagCOW
		a.CowOID = uint64(proto.DataOID(owner, pc.idx))
	}
	req.SetObj(a)
	if _, _, err := v.c.Do(ctx, req, data, nil); err != nil {
		return err
	}
	if owner == vid {
		return nil
	}
	// The client owns data_vdi_id: record the new object in the inode.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], vid)
	ireq := proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite | proto.FlagCache}
	ireq.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(vid)), Offset: proto.IndexOffset(pc.idx), Copies: copies})
	if _, _, err := v.c.Do(ctx, ireq, b[:], nil); err != nil {
		return fmt.Errorf("update inode of %q: %w", v.name, err)
	}
	v.mu.Lock()
	if v.inode.VDIID == vid && int(pc.idx) < len(v.inode.DataVDIID) {
		v.inode.DataVDIID[pc.idx] = vid
	}
	v.mu.Unlock()
	return nil
}

// Discard drops whole objects the way the final QEMU driver did: zero
// their data_vdi_id entries with a write to the inode (the server reclaims
// objects this VDI owned).
func (v *VDI) Discard(ctx context.Context, off, n uint64) error {
	ps, err := v.pieces(off, n)
	if err != nil {
		return err
	}
	ino := v.Inode()
	for _, pc := range ps {
		if pc.inner != 0 || pc.n != ino.ObjectSize() {
			continue // QEMU only discards whole objects
		}
		if _, owner, _, _ := v.owner(pc.idx); owner == 0 {
			continue
		}
		req := proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite}
		req.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(ino.VDIID)), Offset: proto.IndexOffset(pc.idx)})
		if _, _, err := v.c.Do(ctx, req, make([]byte, 4), nil); err != nil {
			return err
		}
		v.mu.Lock()
		v.inode.DataVDIID[pc.idx] = 0
		v.mu.Unlock()
	}
	return nil
}

// Flush sends FLUSH_VDI (QEMU's writeback flush).
func (v *VDI) Flush(ctx context.Context) error {
	req := proto.Request{Opcode: proto.OpFlushVDI}
	req.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(v.Inode().VDIID))})
	_, _, err := v.c.Do(ctx, req, nil, nil)
	if errors.Is(err, proto.ResInvalidParms) {
		return nil // sheep's answer: writes are already durable
	}
	return err
}

// Resize grows the VDI as QEMU did: rewrite the inode header with the new size.
func (v *VDI) Resize(ctx context.Context, size uint64) error {
	ino := *v.Inode()
	if size < ino.VDISize {
		return fmt.Errorf("shrinking is not supported: %w", proto.ResInvalidParms)
	}
	ino.VDISize = size
	req := proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite}
	req.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(ino.VDIID))})
	if _, _, err := v.c.Do(ctx, req, ino.MarshalHeader(), nil); err != nil {
		return err
	}
	return v.reload(ctx)
}

// each runs fn over pieces concurrently (bounded), returning the first error.
func each(ps []piece, fn func(piece) error) error {
	if len(ps) == 1 {
		return fn(ps[0])
	}
	errs := make([]error, len(ps))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, pc := range ps {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(pc)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

var _ Conn = (*client.Conn)(nil)

// maxReloads bounds how often one write follows its VDI into a newer
// snapshot generation: each snapshot committed while the write was in
// flight costs one reload and copy-on-write.
const maxReloads = 16
