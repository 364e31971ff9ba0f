package iscsi

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
)

// immediateSession starts a target for name and logs in to it with
// immediate data and solicited bursts (InitialR2T), plus extra keys.
func immediateSession(t *testing.T, name string, extra ...string) (*testServer, *client) {
	t.Helper()
	ts := startServer(t, Config{}, name)
	c := dial(t, ts.addr)
	c.LoginNormal(IQN(name), append([]string{"InitialR2T=Yes", "ImmediateData=Yes"}, extra...)...)
	c.DrainUA()
	return ts, c
}

// TestDataOutAfterAbort: a write aborted while the target waits for its
// solicited Data-Out gives its pooled buffer back; the Data-Out that
// arrives afterwards is read and dropped (the connection stays framed),
// and later commands reusing pooled buffers read and write exactly their
// own data.
func TestDataOutAfterAbort(t *testing.T) {
	ts, c := immediateSession(t, "ab", "MaxBurstLength=65536")
	const n = 64 << 10
	stale := bytes.Repeat([]byte{0xee}, n)
	const itt = 900
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(pdu.FlagFinal | pdu.FlagWrite)
	h.SetITT(itt)
	h.SetField20(n)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	c.CmdSN++
	copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, n / 512, 0}) // WRITE(10) LBA 0
	c.Send(&h, nil)
	r2t := c.Recv()
	if r2t.Opcode() != pdu.OpR2T || r2t.ITT() != itt {
		t.Fatalf("want R2T, got %s", r2t.Header.String())
	}
	// ABORT TASK (immediate).
	var tm pdu.Header
	tm.SetOpcode(pdu.OpTaskReq)
	tm[0] |= 0x40
	tm.SetFlags(0x80 | 1)
	tm.SetITT(901)
	tm.SetField20(itt)
	binary.BigEndian.PutUint32(tm[24:], c.CmdSN)
	c.Send(&tm, nil)
	if p := c.Recv(); p.Opcode() != pdu.OpTaskResp || p.Header[2] != 0 {
		t.Fatalf("abort: %s response %d", p.Header.String(), p.Header[2])
	}
	// The Data-Out for the aborted task, late.
	var d pdu.Header
	d.SetOpcode(pdu.OpDataOut)
	d.SetFlags(0x80)
	d.SetITT(itt)
	d.SetField20(r2t.TTT())
	c.Send(&d, stale[:8192])
	// The connection still works, and pooled buffers carry no stale data.
	want := make([]byte, 8192)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	if r := c.SCSI([]byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 16, 0}, false, 8192, want); r.Status != 0 {
		t.Fatalf("write status %#x", r.Status)
	}
	r := c.SCSI([]byte{0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0}, true, 8192, nil)
	if r.Status != 0 || !bytes.Equal(r.Data, want) {
		t.Fatalf("read back status %#x, equal %v", r.Status, bytes.Equal(r.Data, want))
	}
	got := make([]byte, n)
	ts.devs["ab"].ReadAt(t.Context(), got, 0)
	if bytes.Contains(got, stale[:512]) {
		t.Fatal("the aborted write's data reached the device")
	}
}

func TestBufPoolClasses(t *testing.T) {
	var bp bufPool
	for _, tc := range []struct{ n, capWant int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {4 << 20, 4 << 20}, {4<<20 + 1, 4<<20 + 1},
	} {
		b := bp.get(tc.n)
		if len(b) != tc.n || cap(b) != tc.capWant {
			t.Errorf("get(%d): len %d cap %d, want cap %d", tc.n, len(b), cap(b), tc.capWant)
		}
		bp.put(b)
	}
	// A buffer not from the pool (odd capacity) is not kept.
	bp.put(make([]byte, 5000))
	if b := bp.get(5000); cap(b) != 8192 {
		t.Errorf("foreign buffer recycled: cap %d", cap(b))
	}
}

// presizedOf sums the connections' presized immediate-data room.
func presizedOf(ts *testServer) int64 {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var n int64
	for c := range ts.conns {
		n += c.presized.Load()
	}
	return n
}

// Immediate data is read into a buffer with room for the whole write, but
// a connection holds at most maxPresized of such room outside the buffer
// budget (here: writes held for a CmdSN gap), and gives it back once the
// commands run.
func TestPresizedBounded(t *testing.T) {
	ts, c := immediateSession(t, "pz", "FirstBurstLength=65536")
	const edtl = 4 << 20
	if 4*(edtl-4096) <= maxPresized {
		t.Fatalf("four held writes would not reach the bound %d", maxPresized)
	}
	gap := c.CmdSN
	for i := range uint32(4) {
		var h pdu.Header
		h.SetOpcode(pdu.OpSCSICmd)
		h.SetFlags(pdu.FlagFinal | pdu.FlagWrite)
		h.SetITT(1000 + i)
		h.SetField20(edtl)
		binary.BigEndian.PutUint32(h[24:], gap+1+i)                         // after the gap
		copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, edtl / 512 >> 8, 0, 0}) // WRITE(10) LBA 0, 4 MiB
		c.Send(&h, make([]byte, 4096))
	}
	held := func() (n int) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		for c := range ts.conns {
			c.tmu.Lock()
			n += len(c.pending)
			c.tmu.Unlock()
		}
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	for held() < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := presizedOf(ts); n == 0 || n > maxPresized {
		t.Fatalf("held for the gap: %d bytes presized, want 1..%d", n, maxPresized)
	}
	// Fill the gap: the four run, take their buffers into the budget.
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(pdu.FlagFinal)
	h.SetITT(999)
	binary.BigEndian.PutUint32(h[24:], gap) // TEST UNIT READY
	c.Send(&h, nil)
	for presizedOf(ts) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := presizedOf(ts); n != 0 {
		t.Fatalf("after the commands ran: %d bytes presized, want 0", n)
	}
}

// Writes that never run (outside the CmdSN window, a duplicate of one
// held for a gap, one on a discovery session) give back their presized
// room at once, not when the connection closes.
func TestPresizedDropped(t *testing.T) {
	ts, c := immediateSession(t, "pd", "FirstBurstLength=65536")
	const edtl = 4 << 20
	write := func(itt, sn uint32) {
		var h pdu.Header
		h.SetOpcode(pdu.OpSCSICmd)
		h.SetFlags(pdu.FlagFinal | pdu.FlagWrite)
		h.SetITT(itt)
		h.SetField20(edtl)
		binary.BigEndian.PutUint32(h[24:], sn)
		copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, edtl / 512 >> 8, 0, 0}) // WRITE(10) LBA 0, 4 MiB
		c.Send(&h, make([]byte, 4096))
	}
	gap := c.CmdSN
	write(1000, gap+1)       // held for the gap
	write(1001, gap+1)       // a duplicate of it: dropped
	write(1002, gap+100_000) // outside the window: dropped
	// An immediate NOP-Out is answered after the reader has handled
	// everything before it.
	var nop pdu.Header
	nop.SetOpcode(pdu.OpNOPOut)
	nop[0] |= 0x40 // immediate
	nop.SetFlags(pdu.FlagFinal)
	nop.SetITT(2000)
	nop.SetField20(pdu.ReservedTag)
	binary.BigEndian.PutUint32(nop[24:], gap)
	c.Send(&nop, nil)
	if r := c.Recv(); r.Opcode() != pdu.OpNOPIn {
		t.Fatalf("got opcode %#x, want a NOP-In", r.Opcode())
	}
	if n, want := presizedOf(ts), int64(capFor(edtl)-capFor(4096)); n != want {
		t.Fatalf("one write held, two dropped: %d bytes presized, want %d (the held one's)", n, want)
	}

	// A discovery session rejects a SCSI command: its room goes back too.
	d := dial(t, ts.addr)
	if _, err := d.Login("InitiatorName=iqn.2026-11.test:d", "SessionType=Discovery", "InitialR2T=Yes", "ImmediateData=Yes", "FirstBurstLength=65536"); err != nil {
		t.Fatal(err)
	}
	d.CmdSN = gap // unused: the command is rejected before sequencing
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(pdu.FlagFinal | pdu.FlagWrite)
	h.SetITT(1)
	h.SetField20(edtl)
	copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, edtl / 512 >> 8, 0, 0})
	d.Send(&h, make([]byte, 4096))
	if r := d.Recv(); r.Opcode() != pdu.OpReject {
		t.Fatalf("discovery session: got opcode %#x, want a Reject", r.Opcode())
	}
	if n, want := presizedOf(ts), int64(capFor(edtl)-capFor(4096)); n != want {
		t.Fatalf("after the discovery session's command: %d bytes presized, want %d", n, want)
	}
}
