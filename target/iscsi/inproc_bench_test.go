package iscsi

import (
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
)

// BenchmarkTarget measures the target's own cost per command (CPU and
// allocations, -benchmem) at queue depth 1 over loopback, against an
// in-memory device, with libiscsi's negotiation (immediate data, no
// initial R2T, 256 KiB segments, 1 MiB bursts). The client reuses its
// buffers, so allocations reported are the target's.
func BenchmarkTarget(b *testing.B) {
	ts := startServer(b, Config{}, "bt")
	for _, bc := range []struct {
		name  string
		write bool
		bs    int
	}{{"read-4k", false, 4096}, {"write-4k", true, 4096}, {"read-1M", false, 1 << 20}, {"write-1M", true, 1 << 20}} {
		b.Run(bc.name, func(b *testing.B) {
			c := dial(b, ts.addr)
			c.LoginNormal(IQN("bt"), "MaxRecvDataSegmentLength=262144", "FirstBurstLength=262144", "MaxBurstLength=1048576")
			c.DrainUA()
			nc := c.NC
			data := make([]byte, bc.bs)
			for i := range data {
				data[i] = byte(i)
			}
			in := make([]byte, 1<<20)
			const seg = 256 << 10
			blocks := uint32(bc.bs / 512)
			var rp pdu.PDU
			b.SetBytes(int64(bc.bs))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				lba := uint32(i*bc.bs/512) % (60 << 20 / 512)
				var h pdu.Header
				h.SetOpcode(pdu.OpSCSICmd)
				cdb := h.CDB()
				f := byte(pdu.FlagFinal | 1)
				var imm []byte
				if bc.write {
					f |= pdu.FlagWrite
					cdb[0] = 0x2a
					imm = data[:min(len(data), seg)]
				} else {
					f |= pdu.FlagRead
					cdb[0] = 0x28
				}
				binary.BigEndian.PutUint32(cdb[2:], lba)
				binary.BigEndian.PutUint16(cdb[7:], uint16(blocks))
				h.SetFlags(f)
				h.SetITT(c.ITT)
				c.ITT++
				h.SetField20(uint32(bc.bs))
				binary.BigEndian.PutUint32(h[24:], c.CmdSN)
				c.CmdSN++
				if err := pdu.WritePDU(nc, &h, imm, false, false); err != nil {
					b.Fatal(err)
				}
			loop:
				for {
					if err := pdu.ReadHeader(nc, pdu.Limits{MaxData: 1 << 24}, &rp); err != nil {
						b.Fatal(err)
					}
					n := int(rp.DataLen())
					if err := pdu.ReadData(nc, pdu.Limits{}, in[:n]); err != nil {
						b.Fatal(err)
					}
					switch rp.Opcode() {
					case pdu.OpDataIn:
						if rp.Flags()&pdu.FlagStatus != 0 {
							break loop
						}
					case pdu.OpR2T:
						off, end := rp.BufferOffset(), rp.BufferOffset()+rp.DesiredLength()
						for sn := uint32(0); off < end; sn++ {
							var d pdu.Header
							d.SetOpcode(pdu.OpDataOut)
							n := min(end-off, seg)
							if off+n == end {
								d.SetFlags(pdu.FlagFinal)
							}
							d.SetITT(rp.ITT())
							d.SetField20(rp.Field20())
							d.SetDataSN(sn)
							d.SetBufferOffset(off)
							if err := pdu.WritePDU(nc, &d, data[off:off+n], false, false); err != nil {
								b.Fatal(err)
							}
							off += n
						}
					case pdu.OpSCSIResp:
						if rp.Header[3] != 0 {
							b.Fatalf("status %#x", rp.Header[3])
						}
						break loop
					default:
						b.Fatal(fmt.Errorf("opcode %#x", rp.Opcode()))
					}
				}
			}
			b.StopTimer()
			_ = io.EOF
		})
	}
}
