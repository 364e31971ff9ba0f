package iscsi

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/volume/voltest"
)

// TestWriteInParts: a write that needs R2Ts is written in parts while the
// initiator sends the rest, when the device takes parts; otherwise the
// device sees nothing until all the data is in.
func TestWriteInParts(t *testing.T) {
	for _, parts := range []bool{true, false} {
		name := map[bool]string{true: "parts", false: "whole"}[parts]
		t.Run(name, func(t *testing.T) {
			dev := &voltest.PartsDevice{Device: voltest.NewMemDevice(64<<20, 4<<20), Parts: parts}
			ts := startServer(t, Config{})
			if err := ts.AddTarget(TargetSpec{Name: "p", VID: 7, Device: dev}); err != nil {
				t.Fatal(err)
			}
			c := dial(t, ts.addr)
			c.LoginNormal(IQN("p"), "FirstBurstLength=65536", "MaxBurstLength=131072", "MaxOutstandingR2T=1")
			c.DrainUA()
			data := make([]byte, 512<<10)
			for i := range data {
				data[i] = byte(i*7 + i>>12)
			}
			// WRITE(10) LBA 32, 1024 blocks, the first 64 KiB as immediate data.
			itt := c.Start([]byte{0x2a, 0, 0, 0, 0, 32, 0, 0x04, 0, 0}, false, uint32(len(data)), data[:64<<10])
			next := uint32(64 << 10)
			r2ts := 0
			for {
				p := c.Recv()
				if p.Opcode() == pdu.OpSCSIResp {
					if p.Header[3] != 0 {
						t.Fatalf("status %#x", p.Header[3])
					}
					break
				}
				r2ts++
				if p.Opcode() != pdu.OpR2T || p.BufferOffset() != next {
					t.Fatalf("want an R2T at %d, got opcode %#x at %d", next, p.Opcode(), p.BufferOffset())
				}
				// Before answering the R2T: with parts, what came before
				// it reaches the device; whole, nothing does.
				want := uint64(next)
				if !parts {
					want = 0
				}
				deadline := time.Now().Add(5 * time.Second)
				for dev.Written() < want && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				if !parts {
					time.Sleep(20 * time.Millisecond)
				}
				if got := dev.Written(); got != want {
					t.Fatalf("R2T at %d: the device has %d bytes, want %d", next, got, want)
				}
				n := p.DesiredLength()
				for pos := next; pos < next+n; pos += 65536 {
					var d pdu.Header
					d.SetOpcode(pdu.OpDataOut)
					if pos+65536 >= next+n {
						d.SetFlags(0x80)
					}
					d.SetITT(itt)
					d.SetField20(p.Field20())
					d.SetDataSN((pos - next) / 65536)
					d.SetBufferOffset(pos)
					c.Send(&d, data[pos:pos+65536])
				}
				next += n
			}
			if r2ts != 4 {
				t.Fatalf("%d R2Ts, want 4 of 128 KiB", r2ts)
			}
			got := make([]byte, len(data))
			if err := dev.ReadAt(context.Background(), got, 32*512); err != nil || !bytes.Equal(got, data) {
				i := 0
				for i < len(got) && got[i] == data[i] {
					i++
				}
				t.Fatalf("the device holds other data from byte %d (%v): got % x want % x", i, err, got[i-2:i+8], data[i-2:i+8])
			}
			if dev.Written() != uint64(len(data)) {
				t.Fatalf("the device was given %d bytes for a write of %d", dev.Written(), len(data))
			}
		})
	}
}
