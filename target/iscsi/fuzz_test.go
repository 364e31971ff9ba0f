package iscsi

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/volume/voltest"
)

// fuzzServe runs one connection of s over a pipe, writes in to it and
// waits for the connection to end. It fails on a recovered panic.
func fuzzServe(t *testing.T, s *Server, in []byte) {
	srvEnd, cliEnd := net.Pipe()
	c := newConn(s, srvEnd, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3260})
	done := make(chan struct{})
	go func() { c.serve(); close(done) }()
	go io.Copy(io.Discard, cliEnd)
	cliEnd.SetWriteDeadline(time.Now().Add(2 * time.Second))
	cliEnd.Write(in)
	cliEnd.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection did not end")
	}
	if s.Panics() != 0 {
		t.Fatal("panic recovered")
	}
	if s.SessionCount() != 0 {
		t.Fatal("session left behind")
	}
}

func loginPDU(flags byte, tsih uint16, data []byte) []byte {
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginReq)
	h[0] |= 0x40
	h.SetFlags(flags)
	copy(h[8:14], []byte{0x80, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(h[14:], tsih)
	h.SetITT(1)
	var b bytes.Buffer
	pdu.WritePDU(&b, &h, data, false, false)
	return b.Bytes()
}

// fuzzServer serves "f", a device that lends its reads (from files in
// dir; over net.Pipe they take the copying fallback), and "c", with CHAP.
func fuzzServer(dir string) (*Server, *voltest.LendingDevice) {
	s := New(Config{QueueDepth: 8, MaxTransfer: 1 << 20, MaxBufferBytes: 8 << 20, LoginTimeout: 5 * time.Second})
	lend := &voltest.LendingDevice{Device: voltest.NewMemDevice(4<<20, 1<<20), Dir: dir}
	s.AddTarget(TargetSpec{Name: "f", VID: 1, Device: lend})
	s.AddTarget(TargetSpec{Name: "c", VID: 2, Device: voltest.NewMemDevice(4<<20, 1<<20)})
	s.SetCHAP("c", &CHAP{User: "u", Secret: "secretsecret", MutualUser: "t", MutualSecret: "othersecret1"})
	return s, lend
}

// FuzzLogin sends a login request with arbitrary flags and key=value
// text (then a second one) through the real login state machine.
func FuzzLogin(f *testing.F) {
	f.Add(byte(0x87), []byte("InitiatorName=iqn.x\x00TargetName=iqn.2026-11.io.gosheep:f\x00SessionType=Normal\x00"), []byte("MaxBurstLength=512\x00"))
	f.Add(byte(0x81), []byte("InitiatorName=iqn.x\x00TargetName=iqn.2026-11.io.gosheep:c\x00AuthMethod=CHAP,None\x00"), []byte("CHAP_A=5\x00"))
	f.Add(byte(0x81), []byte("InitiatorName=iqn.x\x00TargetName=iqn.2026-11.io.gosheep:c\x00AuthMethod=CHAP\x00"), []byte("CHAP_N=u\x00CHAP_R=0x00\x00CHAP_I=1\x00CHAP_C=0b AAAA\x00"))
	f.Add(byte(0x87), []byte("InitiatorName=iqn.x\x00SessionType=Discovery\x00HeaderDigest=CRC32C\x00DataDigest=CRC32C,None\x00"), []byte{})
	f.Add(byte(0x40), []byte("InitiatorName=iqn.x\x00"), []byte("TargetName=iqn.2026-11.io.gosheep:f\x00"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, flags byte, text1, text2 []byte) {
		s, _ := fuzzServer(dir)
		defer s.Close()
		in := append(loginPDU(flags, 0, text1), loginPDU(flags|0x04, 0, text2)...)
		fuzzServe(t, s, in)
	})
}

// FuzzConn logs in (normal session, immediate data, InitialR2T=No) and
// then sends arbitrary bytes as full-feature-phase PDUs.
func FuzzConn(f *testing.F) {
	var b bytes.Buffer
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(0x80 | pdu.FlagWrite)
	h.SetITT(2)
	h.SetField20(1024)
	binary.BigEndian.PutUint32(h[24:], 0)
	copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0})
	pdu.WritePDU(&b, &h, make([]byte, 512), false, false)
	var d pdu.Header
	d.SetOpcode(pdu.OpDataOut)
	d.SetFlags(0x80)
	d.SetITT(2)
	d.SetField20(pdu.ReservedTag)
	d.SetBufferOffset(512)
	pdu.WritePDU(&b, &d, make([]byte, 512), false, false)
	f.Add(b.Bytes())
	var tm pdu.Header
	tm.SetOpcode(pdu.OpTaskReq)
	tm.SetFlags(0x85)
	f.Add(tm[:])
	f.Add(bytes.Repeat([]byte{0x01, 0xe0}, 200))
	// TEST UNIT READY (to take the unit attention), then a lent read of
	// 256 KiB expecting only 100 KiB back.
	var tur, rd pdu.Header
	tur.SetOpcode(pdu.OpSCSICmd)
	tur.SetFlags(0x80)
	tur.SetITT(3)
	rd.SetOpcode(pdu.OpSCSICmd)
	rd.SetFlags(0x80 | pdu.FlagRead)
	rd.SetITT(4)
	rd.SetField20(100 << 10)
	binary.BigEndian.PutUint32(rd[24:], 1)
	copy(rd[32:], []byte{0x28, 0, 0, 0, 0, 8, 0, 0x02, 0, 0})
	f.Add(append(tur[:], rd[:]...))
	login := loginPDU(0x87, 0, []byte("InitiatorName=iqn.x\x00TargetName=iqn.2026-11.io.gosheep:f\x00SessionType=Normal\x00"+
		"ImmediateData=Yes\x00InitialR2T=No\x00MaxOutstandingR2T=4\x00FirstBurstLength=4096\x00MaxBurstLength=8192\x00"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		s, lend := fuzzServer(dir)
		defer s.Close()
		fuzzServe(t, s, append(append([]byte(nil), login...), in...))
		lend.WaitReleased(t) // every lend released once the connection is gone
	})
}
