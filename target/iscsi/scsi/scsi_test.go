package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/gosheep/gosheep/volume"
	"github.com/gosheep/gosheep/volume/voltest"
)

func newLU(t testing.TB) (*LU, *voltest.MemDevice, *Nexus) {
	dev := voltest.NewMemDevice(16<<20, 1<<20)
	lu := New(Config{Device: dev, VID: 42, Name: "v", TargetIQN: "iqn.2026-11.io.gosheep:v", MaxTransfer: 1 << 20})
	n := &Nexus{ID: "i1", InitiatorName: "iqn.test:i1", ISID: 1, RelPort: 1}
	lu.Attach(n)
	return lu, dev, n
}

func do(t testing.TB, lu *LU, n *Nexus, cdb []byte, out []byte) Result {
	t.Helper()
	c, early := lu.Prepare(n, cdb)
	if early != nil {
		return *early
	}
	return c.Execute(context.Background(), out)
}

func senseOf(r Result) (byte, ascq) {
	if len(r.Sense) < 14 {
		return 0xff, 0
	}
	return r.Sense[2] & 0x0f, ascq(r.Sense[12])<<8 | ascq(r.Sense[13])
}

func TestUnitAttentionOnce(t *testing.T) {
	lu, _, n := newLU(t)
	r := do(t, lu, n, []byte{0x12, 0, 0, 0, 36, 0}, nil) // INQUIRY: not affected
	if r.Status != StatusGood {
		t.Fatalf("INQUIRY %#x", r.Status)
	}
	r = do(t, lu, n, make([]byte, 6), nil)
	if k, a := senseOf(r); k != KeyUnitAttention || a != ascPowerOnReset {
		t.Fatalf("first TUR: %x %x", k, a)
	}
	if r := do(t, lu, n, make([]byte, 6), nil); r.Status != StatusGood {
		t.Fatal("UA reported twice")
	}
}

func TestIdentityStable(t *testing.T) {
	a, _, na := newLU(t)
	b, _, nb := newLU(t)
	ra := do(t, a, na, []byte{0x12, 1, 0x83, 0, 255, 0}, nil)
	rb := do(t, b, nb, []byte{0x12, 1, 0x83, 0, 255, 0}, nil)
	if !bytes.Equal(ra.Data, rb.Data) || len(ra.Data) < 16 {
		t.Fatal("device identification differs between two LUs of the same VDI")
	}
	var naa [8]byte
	binary.BigEndian.PutUint64(naa[:], NAA(42))
	if !bytes.Contains(ra.Data, naa[:]) || naa[0]>>4 != 3 {
		t.Fatalf("NAA %x not in page % x", naa, ra.Data)
	}
	if NAA(42) == NAA(43) {
		t.Fatal("NAA does not depend on the VID")
	}
}

// designators splits a Device Identification page into its designators,
// keyed "association/type" with their values.
func designators(t *testing.T, page []byte) map[string][][]byte {
	t.Helper()
	out := map[string][][]byte{}
	if len(page) < 4 || page[1] != 0x83 {
		t.Fatalf("not a 0x83 page: % x", page)
	}
	d := page[4:]
	for len(d) >= 4 {
		l := int(d[3])
		if 4+l > len(d) {
			t.Fatalf("designator overruns the page: % x", d)
		}
		k := fmt.Sprintf("%d/%d", d[1]>>4&3, d[1]&0xf)
		out[k] = append(out[k], d[4:4+l])
		d = d[4+l:]
	}
	return out
}

// Through two nodes' ports the LU is one disk (its designators equal) on
// two target ports (relative port and port name differ).
func TestIdentityPerPort(t *testing.T) {
	lu, _, n1 := newLU(t)
	n2 := &Nexus{ID: "i1@node2", InitiatorName: "iqn.test:i1", ISID: 1, RelPort: 2}
	lu.Attach(n2)
	p1 := designators(t, do(t, lu, n1, []byte{0x12, 1, 0x83, 0, 255, 0}, nil).Data)
	p2 := designators(t, do(t, lu, n2, []byte{0x12, 1, 0x83, 0, 255, 0}, nil).Data)
	const (
		naa, t10  = "0/3", "0/1"
		rel, name = "1/4", "1/8"
		dev       = "2/8"
	)
	for _, k := range []string{naa, t10, dev} {
		if fmt.Sprintf("%x", p1[k]) != fmt.Sprintf("%x", p2[k]) || len(p1[k]) != 1 {
			t.Errorf("designator %s: % x through port 1, % x through port 2", k, p1[k], p2[k])
		}
	}
	if got := p2[rel]; len(got) != 1 || !bytes.Equal(got[0], []byte{0, 0, 0, 2}) {
		t.Errorf("relative target port through port 2: % x", got)
	}
	if got := p1[rel]; len(got) != 1 || !bytes.Equal(got[0], []byte{0, 0, 0, 1}) {
		t.Errorf("relative target port through port 1: % x", got)
	}
	if got := p2[name]; len(got) != 1 || string(bytes.TrimRight(got[0], "\x00")) != "iqn.2026-11.io.gosheep:v,t,0x0002" || len(got[0])%4 != 0 {
		t.Errorf("target port name through port 2: %q", got)
	}
}

func TestWriteReadUnmapCompare(t *testing.T) {
	lu, dev, n := newLU(t)
	lu.Detach(context.Background(), n)
	n = &Nexus{ID: "x"} // never attached: no UA
	data := bytes.Repeat([]byte{0xa5}, 1024)
	// WRITE(10) 2 blocks at LBA 4 with FUA.
	if r := do(t, lu, n, []byte{0x2a, 0x08, 0, 0, 0, 4, 0, 0, 2, 0}, data); r.Status != StatusGood {
		t.Fatalf("write %x", r.Sense)
	}
	got := make([]byte, 1024)
	dev.ReadAt(context.Background(), got, 4*512)
	if !bytes.Equal(got, data) {
		t.Fatal("write did not reach the device")
	}
	// COMPARE AND WRITE: mismatch reports the offset.
	caw := make([]byte, 16)
	caw[0], caw[13] = 0x89, 1
	binary.BigEndian.PutUint64(caw[2:], 4)
	buf := append(bytes.Repeat([]byte{0xa5}, 512), bytes.Repeat([]byte{0x11}, 512)...)
	buf[10] = 0
	r := do(t, lu, n, caw, buf)
	if k, a := senseOf(r); k != KeyMiscompare || a != ascMiscompareVerify || binary.BigEndian.Uint32(r.Sense[3:]) != 10 {
		t.Fatalf("miscompare: %x", r.Sense)
	}
	buf[10] = 0xa5
	if r := do(t, lu, n, caw, buf); r.Status != StatusGood {
		t.Fatalf("compare and write: %x", r.Sense)
	}
	// UNMAP block 5, read back zeros (LBPRZ).
	p := make([]byte, 24)
	binary.BigEndian.PutUint16(p, 22)
	binary.BigEndian.PutUint16(p[2:], 16)
	binary.BigEndian.PutUint64(p[8:], 5)
	binary.BigEndian.PutUint32(p[16:], 1)
	if r := do(t, lu, n, []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, p); r.Status != StatusGood {
		t.Fatalf("unmap %x", r.Sense)
	}
	r = do(t, lu, n, []byte{0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0}, nil)
	if !bytes.Equal(r.Data[:512], bytes.Repeat([]byte{0x11}, 512)) || !bytes.Equal(r.Data[512:], make([]byte, 512)) {
		t.Fatal("read after compare-and-write/unmap")
	}
	// Out of range.
	if k, a := senseOf(do(t, lu, n, []byte{0x28, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0}, nil)); k != KeyIllegalRequest || a != ascLBAOutOfRange {
		t.Fatalf("out of range: %x %x", k, a)
	}
}

// failingDevice returns err from every I/O.
type failingDevice struct {
	volume.Device
	err error
}

func (d failingDevice) ReadAt(context.Context, []byte, uint64) error        { return d.err }
func (d failingDevice) WriteAt(context.Context, []byte, uint64, bool) error { return d.err }
func (d failingDevice) Flush(context.Context) error                         { return d.err }

func TestDeviceErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		key  byte
		asc  ascq
		read bool
	}{
		{volume.ErrReadOnly, KeyDataProtect, ascWriteProtect, false},
		{volume.ErrOutOfRange, KeyIllegalRequest, ascLBAOutOfRange, true},
		{errors.New("disk on fire"), KeyMediumError, ascUnrecoveredRead, true},
		{errors.New("disk on fire"), KeyMediumError, ascWriteError, false},
	} {
		lu := New(Config{Device: failingDevice{voltest.NewMemDevice(1<<20, 1<<20), tc.err}})
		n := &Nexus{ID: "n"}
		cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
		var out []byte = make([]byte, 512)
		if tc.read {
			cdb[0], out = 0x28, nil
		}
		if k, a := senseOf(do(t, lu, n, cdb, out)); k != tc.key || a != tc.asc {
			t.Errorf("%v: sense %x/%x, want %x/%x", tc.err, k, a, tc.key, tc.asc)
		}
	}
}

// FuzzCDB runs every command handler on arbitrary CDBs and Data-Out
// against a MemDevice: it must never panic, and data never exceeds the
// declared limits.
func FuzzCDB(f *testing.F) {
	seeds := [][]byte{
		{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, {0x2a, 0x08, 0, 0, 0, 1, 0, 0, 1, 0},
		{0x12, 1, 0xb0, 0, 255, 0}, {0x1a, 0, 0x3f, 0, 255, 0}, {0x5a, 0x10, 0x3f, 0xff, 0, 0, 0, 1, 0, 0},
		{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, {0x41, 0x08, 0, 0, 0, 0, 0, 0, 8, 0},
		{0x93, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, {0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0},
		{0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, {0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
		{0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0}, {0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}, {0x5f, 4, 1, 0, 0, 0, 0, 0, 24, 0},
		{0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0}, {0x15, 0x10, 0, 0, 24, 0}, {0x55, 0x10, 0, 0, 0, 0, 0, 0, 24, 0},
		{0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0}, {0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {0x1b, 0, 0, 0, 2, 0}, {0x16, 0, 0, 0, 0, 0},
		{0x03, 0, 0, 0, 18, 0}, {0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
	}
	for _, s := range seeds {
		f.Add(s, bytes.Repeat([]byte{0x5a}, 64), uint16(64))
	}
	f.Fuzz(func(t *testing.T, cdb []byte, out []byte, outLen uint16) {
		dev := voltest.NewMemDevice(1<<20, 64<<10)
		lu := New(Config{Device: dev, VID: 1, MaxTransfer: 256 << 10})
		n := &Nexus{ID: "a", InitiatorName: "iqn.a", ISID: 1}
		other := &Nexus{ID: "b", InitiatorName: "iqn.b", ISID: 2}
		lu.Attach(n)
		lu.Attach(other)
		full := make([]byte, 16)
		copy(full, cdb)
		for _, nx := range []*Nexus{n, n, other} {
			c, early := lu.Prepare(nx, full)
			if early != nil {
				if early.Status == StatusGood {
					t.Fatal("early result with GOOD status")
				}
				continue
			}
			if c.OutLen > lu.MaxTransfer() && c.OutLen > 1<<16 {
				t.Fatalf("Data-Out of %d bytes accepted", c.OutLen)
			}
			data := bytes.Repeat(out, int(c.OutLen)/max(len(out), 1)+1)
			if len(out) == 0 {
				data = make([]byte, c.OutLen)
			}
			data = data[:min(uint32(len(data)), c.OutLen, uint32(outLen)*16)]
			if c.OutExact {
				data = append(data, make([]byte, int(c.OutLen)-len(data))...)
			}
			r := c.Execute(context.Background(), data)
			if uint32(len(r.Data)) > lu.MaxTransfer()+64<<10 {
				t.Fatalf("Data-In of %d bytes", len(r.Data))
			}
			if r.Status == StatusCheckCondition && len(r.Sense) != 18 {
				t.Fatalf("sense of %d bytes", len(r.Sense))
			}
		}
	})
}
