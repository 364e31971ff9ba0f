// Package iscsitest is a minimal iSCSI initiator for tests. It writes
// PDUs itself, so tests can drive protocol corners and SCSI commands
// (persistent reservations, ...) that no packaged initiator sends from a
// script.
package iscsitest

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
)

// Conn is one iSCSI session over one connection. Failures of the
// transport fail the test (T).
type Conn struct {
	T      testing.TB
	NC     net.Conn
	ITT    uint32 // next initiator task tag
	CmdSN  uint32
	StatSN uint32 // next expected
	MaxCmd uint32
	TSIH   uint16
	MRDSL  uint32 // target's MaxRecvDataSegmentLength
}

func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(opTimeout))
	return &Conn{T: t, NC: nc, ITT: 1, CmdSN: 1, MRDSL: 8192}
}

// opTimeout bounds each Send and Recv, so a hang fails the test instead
// of the run. It is per operation: a test may keep a connection across
// node restarts that take longer than that in all.
const opTimeout = 30 * time.Second

func (c *Conn) Send(h *pdu.Header, data []byte) {
	c.T.Helper()
	c.NC.SetWriteDeadline(time.Now().Add(opTimeout))
	if err := pdu.WritePDU(c.NC, h, data, false, false); err != nil {
		c.T.Fatalf("send: %v", err)
	}
}

// Recv reads the next PDU within opTimeout (TryRecv keeps whatever read
// deadline the test set).
func (c *Conn) Recv() *pdu.PDU {
	c.T.Helper()
	c.NC.SetReadDeadline(time.Now().Add(opTimeout))
	p, err := c.TryRecv()
	if err != nil {
		c.T.Fatalf("recv: %v", err)
	}
	return p
}

func (c *Conn) TryRecv() (*pdu.PDU, error) {
	p, err := pdu.ReadPDU(c.NC, pdu.Limits{MaxData: 1 << 24})
	if err != nil {
		return nil, err
	}
	if p.Opcode() != pdu.OpDataIn || p.Flags()&pdu.FlagStatus != 0 {
		c.StatSN = p.StatSN() + 1
	}
	if p.Opcode() != pdu.OpLoginResp {
		c.MaxCmd = p.MaxCmdSN()
	}
	return p, nil
}

// Login performs a login with the given keys (security stage skipped
// unless keys hold AuthMethod). It returns the final login response.
func (c *Conn) Login(keys ...string) (*pdu.PDU, error) {
	c.T.Helper()
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginReq)
	h[0] |= 0x40
	h.SetFlags(0x80 | 1<<2 | 3) // T, CSG=operational, NSG=full feature
	copy(h[8:14], []byte{0x80, 0, 0, 0, 0x12, 0x34})
	h.SetITT(c.ITT)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	kv := strings.Join(keys, "\x00") + "\x00"
	// A refused connection may be reset while the request is being
	// written: that is a failed login, not a broken test.
	if err := pdu.WritePDU(c.NC, &h, []byte(kv), false, false); err != nil {
		return nil, err
	}
	p, err := c.TryRecv()
	if err != nil {
		return nil, err
	}
	if p.Opcode() != pdu.OpLoginResp {
		return p, fmt.Errorf("opcode %#x", p.Opcode())
	}
	if p.Header[36] != 0 {
		return p, fmt.Errorf("login status %#02x%02x", p.Header[36], p.Header[37])
	}
	c.TSIH = binary.BigEndian.Uint16(p.Header[14:])
	c.StatSN = p.StatSN() + 1
	kvs, _ := pdu.ParseText(p.Data)
	for _, kv := range kvs {
		if kv.Key == "MaxRecvDataSegmentLength" {
			fmt.Sscan(kv.Value, &c.MRDSL)
		}
	}
	return p, nil
}

func (c *Conn) LoginNormal(iqn string, extra ...string) {
	c.T.Helper()
	c.LoginAs("iqn.2026-11.test:client", iqn, extra...)
}

func (c *Conn) LoginAs(initiator, iqn string, extra ...string) {
	c.T.Helper()
	keys := []string{"InitiatorName=" + initiator, "TargetName=" + iqn, "SessionType=Normal",
		"MaxRecvDataSegmentLength=65536", "ImmediateData=Yes", "InitialR2T=No", "FirstBurstLength=65536",
		"MaxBurstLength=262144", "HeaderDigest=None", "DataDigest=None"}
	for _, e := range extra { // extra keys override the defaults
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, d := range keys {
			if strings.HasPrefix(d, k+"=") {
				keys[i], replaced = e, true
			}
		}
		if !replaced {
			keys = append(keys, e)
		}
	}
	if _, err := c.Login(keys...); err != nil {
		c.T.Fatal(err)
	}
}

// Result is a SCSI command's status, sense and Data-In.
type Result struct {
	Status   byte
	Flags    byte
	Residual uint32
	Sense    []byte
	Data     []byte
}

// Start sends a SCSI command (its write data as immediate data, at most
// 64 KiB) without waiting for the answer, and returns its task tag.
func (c *Conn) Start(cdb []byte, read bool, edtl uint32, out []byte) uint32 {
	c.T.Helper()
	itt := c.ITT
	c.ITT++
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	f := byte(pdu.FlagFinal | 1) // simple task attribute
	if read {
		f |= pdu.FlagRead
	}
	if out != nil {
		f |= pdu.FlagWrite
	}
	h.SetFlags(f)
	h.SetITT(itt)
	h.SetField20(edtl)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	binary.BigEndian.PutUint32(h[28:], c.StatSN)
	c.CmdSN++
	copy(h[32:48], cdb)
	if len(out) > 65536 {
		c.T.Fatal("test client: writes above 64 KiB are not supported")
	}
	c.Send(&h, out)
	return itt
}

// SCSI sends a SCSI command and waits for its status, sense and Data-In.
func (c *Conn) SCSI(cdb []byte, read bool, edtl uint32, out []byte) Result {
	c.T.Helper()
	c.Start(cdb, read, edtl, out)
	var res Result
	for {
		p := c.Recv()
		switch p.Opcode() {
		case pdu.OpDataIn:
			res.Data = append(res.Data, p.Data...)
			if p.Flags()&pdu.FlagStatus != 0 {
				res.Status, res.Flags, res.Residual = p.Header[3], p.Flags(), p.Residual()
				return res
			}
		case pdu.OpSCSIResp:
			res.Status, res.Flags, res.Residual = p.Header[3], p.Flags(), p.Residual()
			if len(p.Data) >= 2 {
				n := int(binary.BigEndian.Uint16(p.Data))
				res.Sense = p.Data[2 : 2+n]
			}
			return res
		case pdu.OpR2T:
			c.T.Fatalf("unexpected R2T")
		default:
			c.T.Fatalf("unexpected opcode %#x", p.Opcode())
		}
	}
}

func (c *Conn) Logout() error {
	var h pdu.Header
	h.SetOpcode(pdu.OpLogoutReq)
	h[0] |= 0x40
	h.SetFlags(0x80)
	h.SetITT(c.ITT)
	c.ITT++
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	binary.BigEndian.PutUint32(h[28:], c.StatSN)
	c.Send(&h, nil)
	p, err := c.TryRecv()
	if err != nil {
		return err
	}
	if p.Opcode() != pdu.OpLogoutResp || p.Header[2] != 0 {
		return fmt.Errorf("logout response %#x/%d", p.Opcode(), p.Header[2])
	}
	return nil
}

// SenseKey returns key and ASC<<8|ASCQ of fixed-format sense.
func SenseKey(s []byte) (byte, uint16) {
	if len(s) < 14 {
		return 0xff, 0xffff
	}
	return s[2] & 0x0f, uint16(s[12])<<8 | uint16(s[13])
}

// DrainUA issues TEST UNIT READY until no unit attention is pending and
// returns the unit attentions seen.
func (c *Conn) DrainUA() []uint16 {
	var uas []uint16
	for range 20 {
		r := c.SCSI([]byte{0}, false, 0, nil)
		if r.Status == 0 {
			return uas
		}
		k, asc := SenseKey(r.Sense)
		if k != 6 {
			c.T.Fatalf("TUR: sense key %#x asc %#04x", k, asc)
		}
		uas = append(uas, asc)
	}
	c.T.Fatal("unit attentions never cleared")
	return nil
}
