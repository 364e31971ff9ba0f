package scsi

import (
	"bytes"
	"context"
	"encoding/binary"

	"github.com/gosheep/gosheep/volume"
)

type ctxT = context.Context

// Limits advertised in the Block Limits VPD page and enforced here.
const (
	maxCompareWriteBlocks = 128
	maxUnmapDescriptors   = 256
	maxUnmapBytes         = 256 << 20 // per descriptor
	maxWriteSameBytes     = 1 << 30
	maxLBAStatusBytes     = 1 << 30 // range one GET LBA STATUS examines
	writeSameChunk        = 1 << 20
)

func (lu *LU) writeProtected() bool {
	if lu.cfg.ReadOnly {
		return true
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	return lu.swp
}

func isWriteOp(op byte) bool {
	switch op {
	case opWrite6, opWrite10, opWrite12, opWrite16, opWriteVerify10, opWriteVerify12,
		opWriteVerify16, opOrWrite16:
		return true
	}
	return false
}

func hasTransfer(op byte) bool {
	switch op {
	case opPrefetch10, opPrefetch16, opSyncCache10, opSyncCache16:
		return false
	}
	return true
}

// parseLBA extracts LBA and block count of read/write-like CDBs and the
// index of the transfer length field (for sense pointers).
func parseLBA(cdb []byte) (lba uint64, n uint32, lenIdx int) {
	switch len(cdb) {
	case 6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n = uint32(cdb[4])
		if n == 0 {
			n = 256
		}
		return lba, n, 4
	case 10:
		return uint64(be32(cdb[2:])), be16(cdb[7:]), 7
	case 12:
		return uint64(be32(cdb[2:])), be32(cdb[6:]), 6
	default:
		return be64(cdb[2:]), be32(cdb[10:]), 10
	}
}

// checkRange reports LBA OUT OF RANGE for [lba, lba+n) beyond capacity.
func (lu *LU) checkRange(lba uint64, n uint64) *Result {
	blocks := lu.blocks()
	if lba > blocks || n > blocks-lba {
		r := lbaOutOfRange()
		return &r
	}
	return nil
}

func prepRW(c *Cmd) *Result {
	cdb := c.CDB
	op := cdb[0]
	lba, n, lenIdx := parseLBA(cdb)
	if len(cdb) > 6 && hasTransfer(op) && cdb[1]>>5 != 0 {
		// RDPROTECT/WRPROTECT/ORPROTECT: no protection information.
		r := invalidCDB(1, 7)
		return &r
	}
	if (op == opSyncCache10 || op == opSyncCache16) && n == 0 {
		// Zero blocks: to the end of the medium.
		blocks := c.lu.blocks()
		if lba > blocks {
			r := lbaOutOfRange()
			return &r
		}
		n = uint32(min(blocks-lba, 0xffffffff))
	}
	if r := c.lu.checkRange(lba, uint64(n)); r != nil {
		return r
	}
	if hasTransfer(op) && uint64(n)*c.lu.bs > uint64(c.lu.maxXfer) {
		r := invalidCDB(lenIdx, -1)
		return &r
	}
	if isWriteOp(op) {
		if c.lu.writeProtected() {
			r := writeProtected()
			return &r
		}
		c.OutLen, c.OutExact = n*uint32(c.lu.bs), true
		c.truncatable = true
	}
	c.lba, c.n = lba, n
	return nil
}

func fuaBit(cdb []byte) bool { return len(cdb) > 6 && cdb[1]&0x08 != 0 }

func execRead(ctx ctxT, c *Cmd, _ []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	n := uint64(c.n) * c.lu.bs
	if l, ok := c.lu.dev.(volume.Lender); ok && c.Lend && n >= volume.LendMin {
		// Any failure (a hole, no copy here, rot) is ReadAt's to handle.
		if lent, err := l.ReadLent(ctx, c.lba*c.lu.bs, n); err == nil {
			return Result{Status: StatusGood, Lent: lent}
		}
	}
	var buf []byte
	if c.DataIn != nil {
		buf = c.DataIn(int(n))
	} else {
		buf = make([]byte, n)
	}
	if err := c.lu.dev.ReadAt(ctx, buf, c.lba*c.lu.bs); err != nil {
		return deviceError(err, false)
	}
	return good(buf)
}

func execWrite(ctx ctxT, c *Cmd, out []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	off := c.lba * c.lu.bs
	fua := fuaBit(c.CDB) || c.CDB[0] == opWriteVerify10 || c.CDB[0] == opWriteVerify12 || c.CDB[0] == opWriteVerify16
	unlock, err := c.lu.locks.lock(ctx, off, uint64(len(out)))
	if err != nil {
		return deviceError(err, true)
	}
	defer unlock()
	if err := c.lu.dev.WriteAt(ctx, out, off, fua); err != nil {
		return deviceError(err, true)
	}
	return good(nil)
}

// ORWRITE(16) without protection information: the blocks become
// old OR new, atomically against other writes of the range.
func execOrWrite(ctx ctxT, c *Cmd, out []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	off := c.lba * c.lu.bs
	unlock, err := c.lu.locks.lock(ctx, off, uint64(len(out)))
	if err != nil {
		return deviceError(err, true)
	}
	defer unlock()
	old := make([]byte, len(out))
	if err := c.lu.dev.ReadAt(ctx, old, off); err != nil {
		return deviceError(err, false)
	}
	for i := range old {
		old[i] |= out[i]
	}
	if err := c.lu.dev.WriteAt(ctx, old, off, fuaBit(c.CDB)); err != nil {
		return deviceError(err, true)
	}
	return good(nil)
}

func prepVerify(c *Cmd) *Result {
	cdb := c.CDB
	lba, n, lenIdx := parseLBA(cdb)
	if cdb[1]>>5 != 0 {
		r := invalidCDB(1, 7)
		return &r
	}
	bytchk := (cdb[1] >> 1) & 3
	if bytchk == 2 {
		r := invalidCDB(1, 2)
		return &r
	}
	if r := c.lu.checkRange(lba, uint64(n)); r != nil {
		return r
	}
	if uint64(n)*c.lu.bs > uint64(c.lu.maxXfer) {
		r := invalidCDB(lenIdx, -1)
		return &r
	}
	switch {
	case n == 0:
	case bytchk == 1:
		c.OutLen, c.OutExact = n*uint32(c.lu.bs), true
	case bytchk == 3:
		c.OutLen, c.OutExact = uint32(c.lu.bs), true
	}
	c.lba, c.n = lba, n
	return nil
}

func miscompare(offset uint64) Result {
	s := Sense{Key: KeyMiscompare, ASC: ascMiscompareVerify, Info: offset, InfoValid: true, BitPtr: -1}
	return Result{Status: StatusCheckCondition, Sense: s.Bytes()}
}

func execVerify(ctx ctxT, c *Cmd, out []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	buf := make([]byte, uint64(c.n)*c.lu.bs)
	if err := c.lu.dev.ReadAt(ctx, buf, c.lba*c.lu.bs); err != nil {
		return deviceError(err, false)
	}
	if len(out) == 0 {
		return good(nil) // BYTCHK=0: medium verification only
	}
	bs := int(c.lu.bs)
	for i := 0; i < len(buf); i += bs {
		want := out
		if len(out) == len(buf) {
			want = out[i : i+bs]
		}
		if !bytes.Equal(buf[i:i+bs], want) {
			for j := 0; j < bs; j++ {
				if buf[i+j] != want[j] {
					return miscompare(uint64(i + j))
				}
			}
		}
	}
	return good(nil)
}

func execPrefetch(ctx ctxT, c *Cmd, _ []byte) Result { return good(nil) }

func execSync(ctx ctxT, c *Cmd, _ []byte) Result {
	if err := c.lu.dev.Flush(ctx); err != nil {
		return deviceError(err, true)
	}
	return good(nil)
}

func prepWriteSame(c *Cmd) *Result {
	cdb := c.CDB
	var lba uint64
	var n uint64
	ndob := false
	if cdb[0] == opWriteSame10 {
		lba, n = uint64(be32(cdb[2:])), uint64(be16(cdb[7:]))
	} else {
		lba, n = be64(cdb[2:]), uint64(be32(cdb[10:]))
		ndob = cdb[1]&0x01 != 0
	}
	if cdb[1]>>5 != 0 {
		r := invalidCDB(1, 7)
		return &r
	}
	if cdb[1]&0x06 != 0 { // PBDATA/LBDATA: obsolete, unsupported
		r := invalidCDB(1, 2)
		return &r
	}
	if cdb[1]&0x10 != 0 && cdb[1]&0x08 == 0 { // ANCHOR needs UNMAP
		r := invalidCDB(1, 4)
		return &r
	}
	blocks := c.lu.blocks()
	if lba > blocks {
		r := lbaOutOfRange()
		return &r
	}
	if n == 0 { // WSNZ=0: to the end of the medium
		n = blocks - lba
	}
	if r := c.lu.checkRange(lba, n); r != nil {
		return r
	}
	if n*c.lu.bs > maxWriteSameBytes {
		idx := 10
		if cdb[0] == opWriteSame10 {
			idx = 7
		}
		r := invalidCDB(idx, -1)
		return &r
	}
	if c.lu.writeProtected() {
		r := writeProtected()
		return &r
	}
	if !ndob {
		c.OutLen, c.OutExact = uint32(c.lu.bs), true
	}
	c.lba, c.n = lba, uint32(n)
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func execWriteSame(ctx ctxT, c *Cmd, out []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	off, length := c.lba*c.lu.bs, uint64(c.n)*c.lu.bs
	unmap := c.CDB[1]&0x08 != 0 || c.CDB[1]&0x10 != 0 // UNMAP or ANCHOR
	fua := false
	unlock, err := c.lu.locks.lock(ctx, off, length)
	if err != nil {
		return deviceError(err, true)
	}
	defer unlock()
	if unmap || len(out) == 0 || allZero(out) {
		// With UNMAP the blocks are deallocated whatever the data: they
		// then read as zeros (LBPRZ), as LIO and tgt do.
		if unmap {
			err = c.lu.dev.Discard(ctx, off, length)
		} else {
			err = c.lu.dev.WriteZeroes(ctx, off, length, fua)
		}
		if err != nil {
			return deviceError(err, true)
		}
		return good(nil)
	}
	chunk := make([]byte, min(length, writeSameChunk))
	for i := 0; i < len(chunk); i += len(out) {
		copy(chunk[i:], out)
	}
	for pos := uint64(0); pos < length; {
		n := min(uint64(len(chunk)), length-pos)
		if err := c.lu.dev.WriteAt(ctx, chunk[:n], off+pos, fua); err != nil {
			return deviceError(err, true)
		}
		pos += n
	}
	return good(nil)
}

func prepCompareWrite(c *Cmd) *Result {
	cdb := c.CDB
	if cdb[1]>>5 != 0 {
		r := invalidCDB(1, 7)
		return &r
	}
	lba, n := be64(cdb[2:]), uint32(cdb[13])
	if n > maxCompareWriteBlocks {
		r := invalidCDB(13, -1)
		return &r
	}
	if r := c.lu.checkRange(lba, uint64(n)); r != nil {
		return r
	}
	if c.lu.writeProtected() {
		r := writeProtected()
		return &r
	}
	c.lba, c.n = lba, n
	c.OutLen, c.OutExact = 2*n*uint32(c.lu.bs), true
	return nil
}

func execCompareWrite(ctx ctxT, c *Cmd, out []byte) Result {
	if c.n == 0 {
		return good(nil)
	}
	off, length := c.lba*c.lu.bs, uint64(c.n)*c.lu.bs
	unlock, err := c.lu.locks.lock(ctx, off, length)
	if err != nil {
		return deviceError(err, true)
	}
	defer unlock()
	cur := make([]byte, length)
	if err := c.lu.dev.ReadAt(ctx, cur, off); err != nil {
		return deviceError(err, false)
	}
	want := out[:length]
	if !bytes.Equal(cur, want) {
		for i := range cur {
			if cur[i] != want[i] {
				return miscompare(uint64(i))
			}
		}
	}
	if err := c.lu.dev.WriteAt(ctx, out[length:], off, fuaBit(c.CDB)); err != nil {
		return deviceError(err, true)
	}
	return good(nil)
}

func execReadCapacity10(ctx ctxT, c *Cmd, _ []byte) Result {
	if c.CDB[8]&1 == 0 && be32(c.CDB[2:]) != 0 {
		r := invalidCDB(2, -1)
		return r
	}
	last := c.lu.blocks()
	if last > 0 {
		last--
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, uint32(min(last, 0xffffffff)))
	binary.BigEndian.PutUint32(b[4:], uint32(c.lu.bs))
	return good(b)
}

func execReadCapacity16(ctx ctxT, c *Cmd, _ []byte) Result {
	last := c.lu.blocks()
	if last > 0 {
		last--
	}
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, last)
	binary.BigEndian.PutUint32(b[8:], uint32(c.lu.bs))
	// Logical blocks per physical block exponent: initiators align
	// their I/O to physical blocks.
	for bs := c.lu.bs; bs < uint64(c.lu.cfg.PhysicalBlockSize); bs <<= 1 {
		b[13]++
	}
	b[14] = 0x80 | 0x40 // LBPME, LBPRZ: thin, unmapped blocks read as zeros
	return good(truncate(b, be32(c.CDB[10:])))
}

func execGetLBAStatus(ctx ctxT, c *Cmd, _ []byte) Result {
	lba, alloc := be64(c.CDB[2:]), be32(c.CDB[10:])
	blocks := c.lu.blocks()
	if lba >= blocks {
		return lbaOutOfRange()
	}
	if alloc < 24 {
		// Room for the header only: report the header (SBC-3 allows a
		// short allocation length; the data is simply truncated).
		if alloc == 0 {
			return good(nil)
		}
	}
	bs := c.lu.bs
	span := min((blocks-lba)*bs, maxLBAStatusBytes)
	exts, err := c.lu.dev.Extents(ctx, lba*bs, span)
	if err != nil {
		return deviceError(err, false)
	}
	maxDesc := 1
	if alloc > 8 {
		maxDesc = int(alloc-8) / 16
		if maxDesc < 1 {
			maxDesc = 1
		}
	}
	out := make([]byte, 8, 8+16*min(len(exts), maxDesc))
	for _, e := range exts {
		if len(out) >= 8+16*maxDesc {
			break
		}
		start := e.Offset / bs
		end := (e.Offset + e.Length + bs - 1) / bs
		if end <= start {
			continue
		}
		var d [16]byte
		binary.BigEndian.PutUint64(d[:], start)
		binary.BigEndian.PutUint32(d[8:], uint32(min(end-start, 0xffffffff)))
		if !e.Allocated {
			d[12] = 1 // deallocated
		}
		// merge with the previous descriptor of the same status
		if n := len(out); n > 8 && out[n-4] == d[12] {
			prev := binary.BigEndian.Uint64(out[n-16:]) + uint64(binary.BigEndian.Uint32(out[n-8:]))
			if prev == start {
				cnt := uint64(binary.BigEndian.Uint32(out[n-8:])) + (end - start)
				if cnt <= 0xffffffff {
					binary.BigEndian.PutUint32(out[n-8:], uint32(cnt))
					continue
				}
			}
		}
		out = append(out, d[:]...)
	}
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return good(truncate(out, alloc))
}

// prepParamList sizes the parameter list of MODE SELECT, UNMAP and
// PERSISTENT RESERVE OUT.
func prepParamList(c *Cmd) *Result {
	cdb := c.CDB
	var n uint32
	switch cdb[0] {
	case opModeSelect6:
		n = uint32(cdb[4])
	case opModeSelect10, opUnmap:
		n = be16(cdb[7:])
	case opPROut:
		n = be32(cdb[5:])
		if n > 4096 {
			r := check(KeyIllegalRequest, ascParamListLen)
			return &r
		}
	}
	if cdb[0] == opUnmap && c.lu.writeProtected() {
		r := writeProtected()
		return &r
	}
	c.OutLen = n
	return nil
}

func execUnmap(ctx ctxT, c *Cmd, p []byte) Result {
	if len(p) == 0 {
		return good(nil)
	}
	if len(p) < 8 {
		return check(KeyIllegalRequest, ascParamListLen)
	}
	bdl := int(be16(p[2:]))
	if bdl > len(p)-8 {
		bdl = len(p) - 8
	}
	nd := bdl / 16
	if nd > maxUnmapDescriptors {
		return invalidParam(2, -1)
	}
	blocks := c.lu.blocks()
	bs := c.lu.bs
	for i := 0; i < nd; i++ {
		d := p[8+16*i:]
		lba, n := be64(d), uint64(be32(d[8:]))
		if lba > blocks || n > blocks-lba {
			return lbaOutOfRange()
		}
		if n*bs > maxUnmapBytes {
			return invalidParam(8+16*i+8, -1)
		}
	}
	for i := 0; i < nd; i++ {
		d := p[8+16*i:]
		lba, n := be64(d), uint64(be32(d[8:]))
		if n == 0 {
			continue
		}
		unlock, err := c.lu.locks.lock(ctx, lba*bs, n*bs)
		if err != nil {
			return deviceError(err, true)
		}
		err = c.lu.dev.Discard(ctx, lba*bs, n*bs)
		unlock()
		if err != nil {
			return deviceError(err, true)
		}
	}
	return good(nil)
}
