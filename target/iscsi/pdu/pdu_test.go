package pdu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfcReadCmd is the iSCSI read command PDU of RFC 3720 Appendix B.4
// (kept by RFC 7143 §13.1 as the CRC32C example): SCSI Command, F and R
// set, ITT 0x14000000, EDTL 1024, CmdSN 0x14, ExpStatSN 0x18,
// CDB READ(10) of 2 blocks at LBA 0.
const rfcReadCmd = "01 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00" +
	"14 00 00 00 00 00 04 00 00 00 00 14 00 00 00 18" +
	"28 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00"

// TestCRC32CVectors checks the digest against RFC 3720 B.4: the CRC bytes
// as sent on the wire (least significant byte first).
func TestCRC32CVectors(t *testing.T) {
	inc, dec := make([]byte, 32), make([]byte, 32)
	for i := range 32 {
		inc[i], dec[i] = byte(i), byte(31-i)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		wire string
	}{
		{"zeros", make([]byte, 32), "aa36918a"},
		{"ones", bytes.Repeat([]byte{0xff}, 32), "43aba862"},
		{"incrementing", inc, "4e79dd46"},
		{"decrementing", dec, "5cdb3f11"},
		{"read command PDU", unhex(t, rfcReadCmd), "563a96d9"},
	} {
		var got [4]byte
		binary.LittleEndian.PutUint32(got[:], CRC32C(tc.in))
		if hex.EncodeToString(got[:]) != tc.wire {
			t.Errorf("%s: CRC32C wire bytes %x, want %s", tc.name, got, tc.wire)
		}
	}
}

// TestGoldenSCSICommand decodes the RFC PDU and checks every field.
func TestGoldenSCSICommand(t *testing.T) {
	raw := unhex(t, rfcReadCmd)
	p, err := ReadPDU(bytes.NewReader(raw), Limits{MaxData: 8192})
	if err != nil {
		t.Fatal(err)
	}
	if p.Opcode() != OpSCSICmd || p.Immediate() || !p.Final() || p.Flags()&FlagRead == 0 || p.Flags()&FlagWrite != 0 {
		t.Fatalf("opcode/flags: %s", p.Header.String())
	}
	if p.ITT() != 0x14000000 || p.EDTL() != 0x400 || p.CmdSN() != 0x14 || p.ExpStatSN() != 0x18 {
		t.Fatalf("itt %#x edtl %#x cmdsn %#x expstatsn %#x", p.ITT(), p.EDTL(), p.CmdSN(), p.ExpStatSN())
	}
	if p.LUN() != 0 || p.DataLen() != 0 || p.AHSLen() != 0 || p.Data != nil {
		t.Fatal("unexpected LUN/data/AHS")
	}
	cdb := p.CDB()
	if cdb[0] != 0x28 || binary.BigEndian.Uint16(cdb[7:]) != 2 {
		t.Fatalf("CDB % x", cdb)
	}
	// Re-encoding gives the same bytes.
	var buf bytes.Buffer
	h := p.Header
	if err := WritePDU(&buf, &h, nil, false, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), raw) {
		t.Fatalf("re-encoded:\n% x\nwant\n% x", buf.Bytes(), raw)
	}
}

// TestGoldenResponses builds target PDUs and checks their wire layout
// against RFC 7143 §11 field positions.
func TestGoldenResponses(t *testing.T) {
	// SCSI Response (§11.4): F, underflow, status CHECK CONDITION, ITT,
	// StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN, residual, sense data.
	var h Header
	h.SetOpcode(OpSCSIResp)
	h.SetFlags(FlagFinal | FlagUnder)
	h[3] = 0x02
	h.SetITT(0x11223344)
	h.SetStatSN(7)
	h.SetExpCmdSN(8)
	h.SetMaxCmdSN(9)
	h.SetDataSN(1)
	h.SetResidual(512)
	var buf bytes.Buffer
	if err := WritePDU(&buf, &h, []byte{0, 1, 0x70}, false, false); err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "21 82 00 02 00 00 00 03 00 00 00 00 00 00 00 00"+
		"11 22 33 44 00 00 00 00 00 00 00 07 00 00 00 08"+
		"00 00 00 09 00 00 00 01 00 00 00 00 00 00 02 00"+
		"00 01 70 00")
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("SCSI Response:\n% x\nwant\n% x", buf.Bytes(), want)
	}
	// R2T (§11.8): TTT at 20, R2TSN at 36, offset at 40, desired length at 44.
	var r Header
	r.SetOpcode(OpR2T)
	r.SetFlags(FlagFinal)
	r.SetLUN(0)
	r.SetITT(1)
	r.SetField20(0xabcd)
	r.SetDataSN(3)
	r.SetBufferOffset(0x10000)
	r.SetDesiredLength(0x40000)
	buf.Reset()
	WritePDU(&buf, &r, nil, false, false)
	want = unhex(t, "31 80 00 00 00 00 00 00 00 00 00 00 00 00 00 00"+
		"00 00 00 01 00 00 ab cd 00 00 00 00 00 00 00 00"+
		"00 00 00 00 00 00 00 03 00 01 00 00 00 04 00 00")
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("R2T:\n% x\nwant\n% x", buf.Bytes(), want)
	}
}

// TestDigests round-trips a PDU with header and data digests and detects
// corruption of either.
func TestDigests(t *testing.T) {
	var h Header
	h.SetOpcode(OpDataIn)
	h.SetITT(9)
	data := []byte("hello, digests") // 14 bytes: 2 bytes of padding
	var buf bytes.Buffer
	if err := WritePDU(&buf, &h, data, true, true); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 48+4+16+4 {
		t.Fatalf("length %d", buf.Len())
	}
	lim := Limits{MaxData: 1024, HeaderDigest: true, DataDigest: true}
	p, err := ReadPDU(bytes.NewReader(buf.Bytes()), lim)
	if err != nil || string(p.Data) != string(data) || p.ITT() != 9 {
		t.Fatalf("round trip: %v %q", err, p.Data)
	}
	bad := append([]byte(nil), buf.Bytes()...)
	bad[20] ^= 1
	if _, err := ReadPDU(bytes.NewReader(bad), lim); !errors.Is(err, ErrHeaderDigest) {
		t.Fatalf("header corruption: %v", err)
	}
	bad = append([]byte(nil), buf.Bytes()...)
	bad[60] ^= 1
	if _, err := ReadPDU(bytes.NewReader(bad), lim); !errors.Is(err, ErrDataDigest) {
		t.Fatalf("data corruption: %v", err)
	}
}

// TestReadPDULimits: data longer than the limit is refused before any
// allocation; truncated input is an error.
func TestReadPDULimits(t *testing.T) {
	var h Header
	h.SetOpcode(OpDataOut)
	h.SetDataLen(1 << 20)
	_, err := ReadPDU(bytes.NewReader(h[:]), Limits{MaxData: 65536})
	if !errors.Is(err, ErrDataTooLong) {
		t.Fatalf("err %v", err)
	}
	h.SetDataLen(100)
	_, err = ReadPDU(bytes.NewReader(append(h[:], make([]byte, 50)...)), Limits{MaxData: 65536})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	if _, err := ReadPDU(bytes.NewReader(nil), Limits{}); !errors.Is(err, io.EOF) {
		t.Fatalf("empty: %v", err)
	}
}

func TestParseText(t *testing.T) {
	kvs, err := ParseText([]byte("InitiatorName=iqn.x\x00SessionType=Normal\x00\x00\x00AuthMethod=CHAP,None"))
	if err != nil {
		t.Fatal(err)
	}
	want := []KV{{"InitiatorName", "iqn.x"}, {"SessionType", "Normal"}, {"AuthMethod", "CHAP,None"}}
	if len(kvs) != len(want) {
		t.Fatalf("%v", kvs)
	}
	for i := range want {
		if kvs[i] != want[i] {
			t.Fatalf("%v", kvs)
		}
	}
	for _, bad := range []string{"novalue\x00", "=x\x00", "a=1\x00a=2\x00", strings.Repeat("k", 64) + "=v\x00"} {
		if _, err := ParseText([]byte(bad)); !errors.Is(err, ErrBadText) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if got := string(MarshalText(want)); got != "InitiatorName=iqn.x\x00SessionType=Normal\x00AuthMethod=CHAP,None\x00" {
		t.Fatalf("marshal %q", got)
	}
}

// FuzzPDU decodes arbitrary bytes: no panic, bounded allocation, and what
// decodes re-encodes to the same header and data.
func FuzzPDU(f *testing.F) {
	raw, _ := hex.DecodeString(strings.ReplaceAll(rfcReadCmd, " ", ""))
	f.Add(raw, uint32(8192), false, false)
	var h Header
	h.SetOpcode(OpDataOut)
	var buf bytes.Buffer
	WritePDU(&buf, &h, []byte("abcde"), true, true)
	f.Add(buf.Bytes(), uint32(8192), true, true)
	f.Add(bytes.Repeat([]byte{0xff}, 100), uint32(1<<24), false, true)
	f.Fuzz(func(t *testing.T, in []byte, maxData uint32, hd, dd bool) {
		maxData %= 1 << 20
		lim := Limits{MaxData: maxData, HeaderDigest: hd, DataDigest: dd}
		r := bufio.NewReader(bytes.NewReader(in))
		for range 4 {
			p, err := ReadPDU(r, lim)
			if err != nil {
				return
			}
			if uint32(len(p.Data)) > maxData || len(p.AHS) > MaxAHSLen {
				t.Fatalf("limits not enforced: data %d ahs %d", len(p.Data), len(p.AHS))
			}
			if p.AHSLen() != 0 {
				continue // we never encode AHS
			}
			var out bytes.Buffer
			hh := p.Header
			if err := WritePDU(&out, &hh, p.Data, hd, dd); err != nil {
				t.Fatal(err)
			}
			q, err := ReadPDU(bytes.NewReader(out.Bytes()), lim)
			if err != nil || q.Header != p.Header || !bytes.Equal(q.Data, p.Data) {
				t.Fatalf("re-encode mismatch: %v", err)
			}
		}
	})
}

// FuzzText parses arbitrary key=value text.
func FuzzText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00SessionType=Normal\x00"))
	f.Add([]byte("CHAP_R=0x00112233\x00CHAP_N=u"))
	f.Fuzz(func(t *testing.T, in []byte) {
		kvs, err := ParseText(in)
		if err != nil {
			return
		}
		if len(kvs) > MaxPairs {
			t.Fatal("too many pairs")
		}
		back, err := ParseText(MarshalText(kvs))
		if err != nil || len(back) != len(kvs) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
