package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/volume/voltest"
)

// startLending serves a lending device with 1 MiB of data at LBA 8.
func startLending(t *testing.T) (*testServer, *voltest.LendingDevice, []byte) {
	t.Helper()
	mem := voltest.NewMemDevice(64<<20, 4<<20)
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*13 + i>>11)
	}
	if err := mem.WriteAt(context.Background(), data, 8*512, false); err != nil {
		t.Fatal(err)
	}
	dev := &voltest.LendingDevice{Device: mem, Dir: t.TempDir()}
	ts := startServer(t, Config{})
	if err := ts.AddTarget(TargetSpec{Name: "l", VID: 9, Device: dev}); err != nil {
		t.Fatal(err)
	}
	return ts, dev, data
}

// read10 is READ(10) of n blocks at lba.
func read10(lba uint32, n uint16) []byte {
	cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], n)
	return cdb
}

// TestReadLent: a large read the device lends goes out from the lent file
// (sendfile), across Data-In PDUs and sequences, and is released after
// the status; small reads, short expected lengths and failed lends read
// the usual way with the same answers.
func TestReadLent(t *testing.T) {
	ts, dev, data := startLending(t)
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("l"), "MaxRecvDataSegmentLength=65536", "MaxBurstLength=262144")
	c.DrainUA()

	r := c.SCSI(read10(8, 2048), true, 1<<20, nil)
	if r.Status != 0 || !bytes.Equal(r.Data, data) {
		t.Fatalf("lent read: status %#x, %d bytes, equal %v", r.Status, len(r.Data), bytes.Equal(r.Data, data))
	}
	if dev.Lends() != 1 {
		t.Fatalf("%d lends for a 1 MiB read, want 1", dev.Lends())
	}
	dev.WaitReleased(t)

	// Below volume.LendMin: copied.
	if r := c.SCSI(read10(8, 64), true, 32<<10, nil); r.Status != 0 || !bytes.Equal(r.Data, data[:32<<10]) {
		t.Fatalf("small read: status %#x", r.Status)
	}
	if dev.Lends() != 1 {
		t.Fatal("a 32 KiB read was lent")
	}

	// The initiator expects less than the CDB asks: the lent range is cut
	// and the overflow reported.
	r = c.SCSI(read10(8, 2048), true, 300<<10, nil)
	if r.Status != 0 || !bytes.Equal(r.Data, data[:300<<10]) || r.Flags&pdu.FlagOverflow == 0 || r.Residual != (1<<20)-(300<<10) {
		t.Fatalf("overflowing read: status %#x, %d bytes, flags %#x, residual %d", r.Status, len(r.Data), r.Flags, r.Residual)
	}
	dev.WaitReleased(t)

	// A failed lend is read the usual way.
	lends := dev.Lends()
	dev.Fail = errors.New("no local copy")
	if r := c.SCSI(read10(8, 2048), true, 1<<20, nil); r.Status != 0 || !bytes.Equal(r.Data, data) {
		t.Fatalf("read after a failed lend: status %#x", r.Status)
	}
	if dev.Lends() != lends {
		t.Fatal("a failing device lent")
	}
}

// TestReadLentDigests: with a header digest lent data still goes by
// sendfile, behind a digested header; a data digest needs the bytes, so
// the read is copied and digested.
func TestReadLentDigests(t *testing.T) {
	for _, dd := range []bool{false, true} {
		name := map[bool]string{false: "header digest", true: "data digest"}[dd]
		t.Run(name, func(t *testing.T) {
			ts, dev, data := startLending(t)
			c := dial(t, ts.addr)
			ddKey := "DataDigest=None"
			if dd {
				ddKey = "DataDigest=CRC32C"
			}
			if _, err := c.Login("InitiatorName=iqn.2026-11.test:dig", "TargetName="+IQN("l"), "SessionType=Normal",
				"HeaderDigest=CRC32C", ddKey, "MaxRecvDataSegmentLength=262144"); err != nil {
				t.Fatal(err)
			}
			lim := pdu.Limits{MaxData: 1 << 20, HeaderDigest: true, DataDigest: dd}
			var got []byte
			for attempt := 0; ; attempt++ {
				var h pdu.Header
				h.SetOpcode(pdu.OpSCSICmd)
				h.SetFlags(0x80 | pdu.FlagRead)
				h.SetITT(c.ITT)
				c.ITT++
				h.SetField20(1 << 20)
				binary.BigEndian.PutUint32(h[24:], c.CmdSN)
				c.CmdSN++
				copy(h[32:], read10(8, 2048))
				if err := pdu.WritePDU(c.NC, &h, nil, true, dd); err != nil {
					t.Fatal(err)
				}
				got = got[:0]
				status := -1
				for status < 0 {
					p, err := pdu.ReadPDU(c.NC, lim)
					if err != nil {
						t.Fatalf("reading a digested PDU: %v", err)
					}
					switch p.Opcode() {
					case pdu.OpDataIn:
						got = append(got, p.Data...)
						if p.Flags()&pdu.FlagStatus != 0 {
							status = int(p.Header[3])
						}
					case pdu.OpSCSIResp:
						status = int(p.Header[3])
					default:
						t.Fatalf("opcode %#x", p.Opcode())
					}
				}
				if status == 0 {
					break
				}
				if attempt > 2 { // the first command reports the unit attention
					t.Fatalf("status %#x", status)
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%d bytes, not the data", len(got))
			}
			if want := map[bool]int64{false: 1, true: 0}[dd]; dev.Lends() != want {
				t.Fatalf("%d lends, want %d", dev.Lends(), want)
			}
			dev.WaitReleased(t)
		})
	}
}

// TestLendTimeout: an initiator that stops reading a lent read loses its
// connection after LendTimeout, and the lend (which pins the store) is
// released then, not after the whole WriteTimeout.
func TestLendTimeout(t *testing.T) {
	mem := voltest.NewMemDevice(64<<20, 4<<20)
	dev := &voltest.LendingDevice{Device: mem, Dir: t.TempDir()}
	ts := startServer(t, Config{LendTimeout: 200 * time.Millisecond})
	if err := ts.AddTarget(TargetSpec{Name: "l", VID: 9, Device: dev}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("l"), "MaxRecvDataSegmentLength=262144")
	c.DrainUA()
	// 32 MiB, more than the socket buffers hold, and never read.
	c.Start(read10(0, 65535), true, 65535*512, nil)
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for dev.Lends() == 0 || dev.Releases() != dev.Lends() {
		if time.Now().After(deadline) {
			t.Fatalf("%d lends, %d released after %v", dev.Lends(), dev.Releases(), time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("released after %v", el)
	}
	// The connection is gone.
	c.NC.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c.NC); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection not closed")
	}
}
