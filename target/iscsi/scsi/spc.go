package scsi

import (
	"encoding/binary"
	"fmt"

	gotgtscsi "github.com/gostor/gotgt/pkg/scsi"

	"github.com/gosheep/gosheep/cluster/resv"
)

// Identity strings reported by INQUIRY.
const (
	vendorID   = "GOSHEEP "
	productID  = "VDI             "
	productRev = "0001"
)

// Version descriptors (SPC-4 Table 29): SAM-5, iSCSI, SPC-4, SBC-3.
var versionDescriptors = [...]uint16{0x00a0, 0x0960, 0x0460, 0x04c0}

// NAA returns the 8-byte NAA designator of a VDI: NAA 3 (locally
// assigned) with a fixed gosheep tag and the VDI id, so that it is the
// same on every node (multipath sees one disk).
func NAA(vid uint32) uint64 {
	return uint64(gotgtscsi.NAA_LOCAL)<<60 | uint64(0x6f5e3e9)<<32 | uint64(vid)
}

// Serial returns the unit serial number of a VDI.
func Serial(vid uint32) string { return fmt.Sprintf("GSHP%08X", vid) }

func execTUR(ctx ctxT, c *Cmd, _ []byte) Result { return good(nil) }

func execRequestSense(ctx ctxT, c *Cmd, _ []byte) Result {
	if c.CDB[1]&1 != 0 {
		return invalidCDB(1, 0) // descriptor format not supported
	}
	lu := c.lu
	s := Sense{Key: KeyNoSense, BitPtr: -1}
	lu.mu.Lock()
	if ns := lu.nexuses[c.nexus.ID]; ns != nil && len(ns.ua) > 0 {
		s.Key, s.ASC = KeyUnitAttention, ns.ua[0]
		ns.ua = ns.ua[1:]
	}
	lu.mu.Unlock()
	return good(truncate(s.Bytes(), uint32(c.CDB[4])))
}

func execInquiry(ctx ctxT, c *Cmd, _ []byte) Result {
	cdb := c.CDB
	alloc := be16(cdb[3:])
	if cdb[1]&0x02 != 0 { // CMDDT
		return invalidCDB(1, 1)
	}
	if cdb[1]&0x01 == 0 {
		if cdb[2] != 0 {
			return invalidCDB(2, -1)
		}
		return good(truncate(c.lu.stdInquiry(), alloc))
	}
	var page []byte
	switch cdb[2] {
	case 0x00:
		page = vpdPage(0x00, []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2})
	case 0x80:
		page = vpdPage(0x80, []byte(Serial(c.lu.cfg.VID)))
	case 0x83:
		page = vpdPage(0x83, c.lu.deviceID(c.nexus))
	case 0xb0:
		page = vpdPage(0xb0, c.lu.blockLimits())
	case 0xb1:
		p := make([]byte, 0x3c)
		p[1] = 1 // medium rotation rate: non-rotating
		page = vpdPage(0xb1, p)
	case 0xb2:
		// LBPU, LBPWS, LBPWS10, LBPRZ=1, ANC_SUP; provisioning type: thin.
		page = vpdPage(0xb2, []byte{0, 0x80 | 0x40 | 0x20 | 0x04 | 0x02, 0x02, 0})
	default:
		return invalidCDB(2, -1)
	}
	return good(truncate(page, alloc))
}

func vpdPage(code byte, body []byte) []byte {
	p := make([]byte, 4+len(body))
	p[1] = code
	binary.BigEndian.PutUint16(p[2:], uint16(len(body)))
	copy(p[4:], body)
	return p
}

func (lu *LU) stdInquiry() []byte {
	b := make([]byte, 74)
	b[0] = gotgtscsi.PQ_DEVICE_CONNECTED | 0x00 // direct access block device
	b[2] = 0x06                                 // SPC-4
	b[3] = gotgtscsi.INQUIRY_HISUP | gotgtscsi.INQUIRY_STANDARD_FORMAT
	b[4] = byte(len(b) - 5)
	b[7] = gotgtscsi.INQUIRY_CMDQUE
	copy(b[8:16], vendorID)
	copy(b[16:32], productID)
	copy(b[32:36], productRev)
	for i, v := range versionDescriptors {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

func designator(proto, codeSet, piv, assoc, typ byte, val []byte) []byte {
	d := make([]byte, 4+len(val))
	d[0] = proto<<4 | codeSet
	d[1] = piv<<7 | assoc<<4 | typ
	d[3] = byte(len(val))
	copy(d[4:], val)
	return d
}

// deviceID is the Device Identification page as seen through nexus n's
// target port: the LU's designators, the same through every node (so
// multipath sees one disk), and the port's, which differ.
func (lu *LU) deviceID(n *Nexus) []byte {
	var out []byte
	naa := make([]byte, 8)
	binary.BigEndian.PutUint64(naa, NAA(lu.cfg.VID))
	out = append(out, designator(0, gotgtscsi.INQ_CODE_BIN, 0, gotgtscsi.ASS_LU, gotgtscsi.DESG_NAA, naa)...)
	t10 := []byte(vendorID + Serial(lu.cfg.VID))
	out = append(out, designator(0, gotgtscsi.INQ_CODE_ASCII, 0, gotgtscsi.ASS_LU, gotgtscsi.DESG_T10, t10)...)
	rel := n.RelativePort()
	port := []byte{0, 0, byte(rel >> 8), byte(rel)}
	out = append(out, designator(gotgtscsi.PIV_ISCSI, gotgtscsi.INQ_CODE_BIN, 1, gotgtscsi.ASS_TGT_PORT, gotgtscsi.DESG_REL_TGT_PORT, port)...)
	if lu.cfg.TargetIQN != "" && len(lu.cfg.TargetIQN) < 220 {
		// The iSCSI target port name (RFC 7143 §4.2.7.1): the target
		// name and the portal group tag, which is the relative port.
		out = append(out, designator(gotgtscsi.PIV_ISCSI, gotgtscsi.INQ_CODE_UTF8, 1, gotgtscsi.ASS_TGT_PORT, gotgtscsi.DESG_SCSI,
			scsiName(fmt.Sprintf("%s,t,0x%04x", lu.cfg.TargetIQN, rel)))...)
		out = append(out, designator(gotgtscsi.PIV_ISCSI, gotgtscsi.INQ_CODE_UTF8, 1, gotgtscsi.ASS_TGT_DEV, gotgtscsi.DESG_SCSI, scsiName(lu.cfg.TargetIQN))...)
	}
	return out
}

// scsiName is a SCSI name string designator's value: NUL-terminated and
// padded to a multiple of 4 bytes (SPC-4 §7.8.6.11).
func scsiName(s string) []byte {
	name := append([]byte(s), 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	return name
}

func (lu *LU) blockLimits() []byte {
	p := make([]byte, 0x3c)
	bs := lu.bs
	put32 := func(off int, v uint64) { binary.BigEndian.PutUint32(p[off-4:], uint32(min(v, 0xffffffff))) }
	// offsets below are page offsets (SBC-3 Table 209); p starts at byte 4
	p[5-4] = maxCompareWriteBlocks
	binary.BigEndian.PutUint16(p[6-4:], uint16(max(1, 4096/bs)))
	put32(8, uint64(lu.maxXfer)/bs)
	obj := uint64(lu.dev.ObjectSize()) / bs
	put32(12, min(max(obj, 1), uint64(lu.maxXfer)/bs))
	put32(16, uint64(lu.maxXfer)/bs)
	put32(20, maxUnmapBlocks(bs))
	put32(24, maxUnmapDescriptors)
	put32(28, max(obj, 1))
	put32(32, 0x80000000) // UGAVALID, alignment 0
	binary.BigEndian.PutUint64(p[36-4:], maxWriteSameBytes/bs)
	return p
}

func maxUnmapBlocks(bs uint64) uint64 { return maxUnmapBytes / bs }

// Mode pages.
const (
	pageRWRecovery = 0x01
	pageCaching    = 0x08
	pageControl    = 0x0a
	pageInfoExcept = 0x1c
	pageAll        = 0x3f
)

// modePage returns page code's current (pc 0/2) or changeable (pc 1) values.
func (lu *LU) modePage(code byte, pc byte) []byte {
	switch code {
	case pageRWRecovery:
		p := make([]byte, 12)
		p[0], p[1] = pageRWRecovery, 10
		return p
	case pageCaching:
		p := make([]byte, 20)
		p[0], p[1] = pageCaching, 18
		if pc != 1 {
			p[2] = 0x04 // WCE: acknowledged writes are durable after SYNC CACHE/FUA
		}
		return p
	case pageControl:
		p := make([]byte, 12)
		p[0], p[1] = pageControl, 10
		if pc == 1 {
			p[4] = 0x08 // SWP is changeable
			return p
		}
		p[3] = 0x10 // unrestricted reordering
		lu.mu.Lock()
		if lu.swp && pc == 0 {
			p[4] |= 0x08
		}
		lu.mu.Unlock()
		p[8], p[9] = 0xff, 0xff // busy timeout: unlimited
		return p
	case pageInfoExcept:
		p := make([]byte, 12)
		p[0], p[1] = pageInfoExcept, 10
		return p
	}
	return nil
}

var modePageOrder = [...]byte{pageRWRecovery, pageCaching, pageControl, pageInfoExcept}

func execModeSense(ctx ctxT, c *Cmd, _ []byte) Result {
	cdb := c.CDB
	six := cdb[0] == opModeSense6
	dbd := cdb[1]&0x08 != 0
	llbaa := !six && cdb[1]&0x10 != 0
	pc, code, sub := cdb[2]>>6, cdb[2]&0x3f, cdb[3]
	var alloc uint32
	if six {
		alloc = uint32(cdb[4])
	} else {
		alloc = be16(cdb[7:])
	}
	if pc == 3 {
		return check(KeyIllegalRequest, ascSavingNotSupported)
	}
	var pages []byte
	switch {
	case code == pageAll && (sub == 0 || sub == 0xff):
		for _, pcode := range modePageOrder {
			pages = append(pages, c.lu.modePage(pcode, pc)...)
		}
	case sub != 0:
		return invalidCDB(3, -1)
	default:
		p := c.lu.modePage(code, pc)
		if p == nil {
			return invalidCDB(2, 5)
		}
		pages = p
	}
	var bd []byte
	if !dbd {
		blocks := c.lu.blocks()
		if llbaa {
			bd = make([]byte, 16)
			binary.BigEndian.PutUint64(bd, blocks)
			binary.BigEndian.PutUint32(bd[12:], uint32(c.lu.bs))
		} else {
			bd = make([]byte, 8)
			binary.BigEndian.PutUint32(bd, uint32(min(blocks, 0xffffffff)))
			bd[5], bd[6], bd[7] = byte(c.lu.bs>>16), byte(c.lu.bs>>8), byte(c.lu.bs)
		}
	}
	devSpecific := byte(0x10) // DPOFUA
	if c.lu.writeProtected() {
		devSpecific |= 0x80
	}
	var hdr []byte
	if six {
		hdr = make([]byte, 4)
		hdr[0] = byte(min(3+len(bd)+len(pages), 255))
		hdr[2] = devSpecific
		hdr[3] = byte(len(bd))
	} else {
		hdr = make([]byte, 8)
		binary.BigEndian.PutUint16(hdr, uint16(6+len(bd)+len(pages)))
		hdr[3] = devSpecific
		if llbaa && len(bd) > 0 {
			hdr[4] = 1
		}
		binary.BigEndian.PutUint16(hdr[6:], uint16(len(bd)))
	}
	out := append(append(hdr, bd...), pages...)
	return good(truncate(out, alloc))
}

func execModeSelect(ctx ctxT, c *Cmd, p []byte) Result {
	cdb := c.CDB
	six := cdb[0] == opModeSelect6
	if cdb[1]&0x01 != 0 { // SP: saving not supported
		return invalidCDB(1, 0)
	}
	if len(p) == 0 {
		return good(nil)
	}
	hl := 8
	if six {
		hl = 4
	}
	if len(p) < hl {
		return check(KeyIllegalRequest, ascParamListLen)
	}
	var bdl int
	if six {
		bdl = int(p[3])
	} else {
		bdl = int(be16(p[6:]))
	}
	pos := hl + bdl
	if pos > len(p) {
		return check(KeyIllegalRequest, ascParamListLen)
	}
	newSWP := -1
	for pos < len(p) {
		if len(p)-pos < 2 {
			return check(KeyIllegalRequest, ascParamListLen)
		}
		code := p[pos] & 0x3f
		if p[pos]&0x40 != 0 { // sub-page format: none supported
			return invalidParam(pos, 6)
		}
		plen := int(p[pos+1]) + 2
		if pos+plen > len(p) {
			return check(KeyIllegalRequest, ascParamListLen)
		}
		cur := c.lu.modePage(code, 0)
		chg := c.lu.modePage(code, 1)
		if cur == nil || len(cur) != plen {
			return invalidParam(pos, -1)
		}
		got := p[pos : pos+plen]
		for i := 2; i < plen; i++ {
			if (got[i]^cur[i])&^chg[i] != 0 {
				return invalidParam(pos+i, -1)
			}
		}
		if code == pageControl {
			if got[4]&0x08 != 0 {
				newSWP = 1
			} else {
				newSWP = 0
			}
		}
		pos += plen
	}
	if newSWP >= 0 {
		lu := c.lu
		lu.mu.Lock()
		if lu.swp != (newSWP == 1) {
			lu.swp = newSWP == 1
			lu.uaOthers(c.nexus.ID, ascModeParamsChanged, nil)
		}
		lu.mu.Unlock()
	}
	return good(nil)
}

func execStartStop(ctx ctxT, c *Cmd, _ []byte) Result {
	b := c.CDB[4]
	loej, start := b&0x02 != 0, b&0x01 != 0
	if b>>4 == 0 && loej && !start {
		lu := c.lu
		lu.mu.Lock()
		prevented := false
		for _, ns := range lu.nexuses {
			prevented = prevented || ns.prevent
		}
		lu.mu.Unlock()
		if prevented {
			return check(KeyIllegalRequest, ascRemovalPrevented)
		}
	}
	return good(nil)
}

func execPreventAllow(ctx ctxT, c *Cmd, _ []byte) Result {
	prevent := c.CDB[4] & 0x03
	if prevent > 1 {
		return invalidCDB(4, 1)
	}
	lu := c.lu
	lu.mu.Lock()
	if ns := lu.nexuses[c.nexus.ID]; ns != nil {
		ns.prevent = prevent == 1
	}
	lu.mu.Unlock()
	return good(nil)
}

func execReportLUNs(ctx ctxT, c *Cmd, _ []byte) Result {
	if sel := c.CDB[2]; sel > 2 {
		return invalidCDB(2, -1)
	}
	alloc := be32(c.CDB[6:])
	if alloc < 16 {
		return invalidCDB(6, -1)
	}
	out := make([]byte, 16)
	binary.BigEndian.PutUint32(out, 8) // one LUN: 0
	return good(truncate(out, alloc))
}

func execReserve6(ctx ctxT, c *Cmd, _ []byte) Result {
	if c.CDB[0] == opReserve10 && c.CDB[1]&0x12 != 0 { // 3RDPTY, LONGID
		return invalidCDB(1, 4)
	}
	if c.CDB[0] == opReserve6 && c.CDB[1]&0x1f != 0 { // 3rd party/extents
		return invalidCDB(1, 0)
	}
	return resvResult(c.lu.change(ctx, resv.Op{Kind: resv.OpReserve6, Nexus: c.nexus.ID}))
}

func execRelease6(ctx ctxT, c *Cmd, _ []byte) Result {
	return resvResult(c.lu.change(ctx, resv.Op{Kind: resv.OpRelease6, Nexus: c.nexus.ID}))
}

func execRSOC(ctx ctxT, c *Cmd, _ []byte) Result {
	cdb := c.CDB
	rctd := cdb[2]&0x80 != 0
	opt := cdb[2] & 0x07
	reqOp, reqSA := cdb[3], be16(cdb[4:])
	alloc := be32(cdb[6:])
	lu := c.lu
	timeouts := func() []byte {
		t := make([]byte, 12)
		t[1] = 0x0a
		return t
	}
	switch opt {
	case 0:
		out := make([]byte, 4)
		for _, d := range lu.order {
			var e [8]byte
			e[0] = d.op
			if d.sa >= 0 {
				binary.BigEndian.PutUint16(e[2:], uint16(d.sa))
				e[5] |= 0x01
			}
			if rctd {
				e[5] |= 0x02
			}
			binary.BigEndian.PutUint16(e[6:], uint16(d.cdbLen))
			out = append(out, e[:]...)
			if rctd {
				out = append(out, timeouts()...)
			}
		}
		binary.BigEndian.PutUint32(out, uint32(len(out)-4))
		return good(truncate(out, alloc))
	case 1, 2, 3:
		var d *opDesc
		if lu.hasSA[reqOp] {
			if opt == 1 {
				return invalidCDB(2, 2)
			}
			if reqSA <= 0x1f {
				d = lu.ops[uint16(reqOp)<<8|uint16(reqSA)]
			}
		} else {
			if opt == 2 {
				return invalidCDB(2, 2)
			}
			d = lu.ops[uint16(reqOp)<<8]
		}
		if d == nil {
			out := make([]byte, 4)
			out[1] = 0x01 // not supported
			return good(truncate(out, alloc))
		}
		out := make([]byte, 4, 4+len(d.usage)+12)
		out[1] = 0x03 // supported as the standard says
		if rctd {
			out[1] |= 0x80
		}
		binary.BigEndian.PutUint16(out[2:], uint16(len(d.usage)))
		out = append(out, d.usage...)
		if rctd {
			out = append(out, timeouts()...)
		}
		return good(truncate(out, alloc))
	}
	return invalidCDB(2, 2)
}
