package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/target/iscsi/scsi"
	"github.com/gosheep/gosheep/volume/voltest"
)

func readCap16(c *client) uint64 {
	cdb := make([]byte, 16)
	cdb[0], cdb[1], cdb[13] = 0x9e, 0x10, 32
	r := c.SCSI(cdb, true, 32, nil)
	if r.Status != 0 || len(r.Data) < 12 {
		c.T.Fatalf("READ CAPACITY(16): status %#x sense %x", r.Status, r.Sense)
	}
	return (binary.BigEndian.Uint64(r.Data) + 1) * uint64(binary.BigEndian.Uint32(r.Data[8:]))
}

// TestResizeUnitAttention: Resized makes READ CAPACITY report the new size
// and queues CAPACITY DATA HAS CHANGED on that LUN's nexuses only.
func TestResizeUnitAttention(t *testing.T) {
	ts := startServer(t, Config{}, "grow", "other")
	a, b, o := dial(t, ts.addr), dial(t, ts.addr), dial(t, ts.addr)
	a.LoginNormal(IQN("grow"))
	b.LoginAs("iqn.2026-11.test:second", IQN("grow"))
	o.LoginNormal(IQN("other"))
	for _, c := range []*client{a, b, o} {
		if uas := c.DrainUA(); len(uas) != 1 || uas[0] != 0x2900 {
			t.Fatalf("login unit attentions %x, want [2900]", uas)
		}
	}
	if got := readCap16(a); got != 64<<20 {
		t.Fatalf("capacity %d", got)
	}
	ts.devs["grow"].Resize(128 << 20)
	if err := ts.Resized("grow"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{a, b} {
		if uas := c.DrainUA(); len(uas) != 1 || uas[0] != 0x2a09 {
			t.Fatalf("unit attentions after resize %x, want [2a09]", uas)
		}
		if got := readCap16(c); got != 128<<20 {
			t.Fatalf("capacity after resize %d", got)
		}
	}
	if uas := o.DrainUA(); len(uas) != 0 {
		t.Fatalf("other target's nexus got %x", uas)
	}
	if err := ts.Resized("nope"); err == nil {
		t.Fatal("Resized of an unknown target succeeded")
	}
}

// TestRemoveTargetWhileActive removes a target under qemu-img bench: the
// session ends, its TSIH is freed, new logins are refused; a re-added
// target works again.
func TestRemoveTargetWhileActive(t *testing.T) {
	ts := startServer(t, Config{}, "busy", "stay")
	stay := dial(t, ts.addr)
	stay.LoginNormal(IQN("stay"))
	stay.DrainUA()

	// A raw session on the target, and qemu-img bench keeping it busy.
	raw := dial(t, ts.addr)
	raw.LoginAs("iqn.2026-11.test:raw", IQN("busy"))
	raw.DrainUA()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	bench := exec.CommandContext(ctx, tool(t, "qemu-img"), "bench", "-w", "-f", "raw", "-t", "none",
		"-c", "20000000", "-s", "4k", "-d", "16", ts.url("busy"))
	var benchOut bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for ts.SessionCount() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("bench never logged in:\n%s", benchOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let commands flow
	if err := ts.RemoveTarget("busy"); err != nil {
		t.Fatal(err)
	}
	// RemoveTarget returned after the sessions ended: TSIHs are free.
	if n := ts.SessionCount(); n != 1 {
		t.Fatalf("%d sessions after RemoveTarget, want 1 (the other target's)", n)
	}
	// The raw session's connection is closed.
	raw.NC.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.TryRecv(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("raw session still open after RemoveTarget: %v", err)
	}
	// qemu-img keeps trying to reconnect and cannot finish.
	select {
	case err := <-benchDone:
		if err == nil {
			t.Fatalf("bench completed although its target was removed:\n%s", benchOut.String())
		}
	case <-time.After(time.Second):
		cancel()
		<-benchDone
	}
	// The other target's session is untouched.
	if r := stay.SCSI([]byte{0}, false, 0, nil); r.Status != 0 {
		t.Fatalf("TUR on the other target: %#x", r.Status)
	}
	// Logins to the removed target are refused.
	c := dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:x", "TargetName="+IQN("busy"), "SessionType=Normal"); err == nil {
		t.Fatal("login to a removed target succeeded")
	}
	if err := ts.RemoveTarget("busy"); err == nil {
		t.Fatal("second RemoveTarget succeeded")
	}
	// Re-adding it works.
	if err := ts.AddTarget(TargetSpec{Name: "busy", VID: 9, Device: ts.devs["busy"]}); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 30*time.Second, "iscsi-inq", ts.url("busy"))
	if err := ts.AddTarget(TargetSpec{Name: "busy", VID: 9, Device: ts.devs["busy"]}); err == nil {
		t.Fatal("duplicate AddTarget succeeded")
	}
}

// TestTSIHNoLeak logs in and out (and drops connections) many times and
// checks that no session or TSIH is left behind.
func TestTSIHNoLeak(t *testing.T) {
	ts := startServer(t, Config{}, "t")
	seen := map[uint16]bool{}
	for i := range 300 {
		c := dial(t, ts.addr)
		c.LoginNormal(IQN("t"))
		seen[c.TSIH] = true
		switch i % 3 {
		case 0:
			if err := c.Logout(); err != nil {
				t.Fatal(err)
			}
		case 1:
			c.NC.Close() // connection loss
		case 2:
			c.DrainUA()
			c.NC.Close()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for ts.SessionCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions left after all connections closed", ts.SessionCount())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(seen) < 2 {
		t.Fatalf("TSIHs not assigned: %v", seen)
	}
	ts.mu.Lock()
	left := len(ts.tsih)
	ts.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d TSIHs still allocated", left)
	}
}

// sendTargets asks a discovery session for SendTargets=All (ITT 77) and
// returns the answer.
func sendTargets(c *client) *pdu.PDU {
	var h pdu.Header
	h.SetOpcode(pdu.OpTextReq)
	h[0] |= 0x40
	h.SetFlags(0x80)
	h.SetITT(77)
	h.SetField20(pdu.ReservedTag)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	c.Send(&h, []byte("SendTargets=All\x00"))
	return c.Recv()
}

// TestDiscoveryAdvertisedPortal: SendTargets=All lists every target with
// the configured advertised portal.
func TestDiscoveryAdvertisedPortal(t *testing.T) {
	ts := startServer(t, Config{AdvertiseAddrs: []string{"192.0.2.10:3260", "[2001:db8::1]:3260"}, PortalGroupTag: 3}, "a", "b")
	c := dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:d", "SessionType=Discovery"); err != nil {
		t.Fatal(err)
	}
	p := sendTargets(c)
	if p.Opcode() != pdu.OpTextResp || p.ITT() != 77 {
		t.Fatalf("response %v", p.Header.String())
	}
	want := "TargetName=" + IQN("a") + "\x00TargetAddress=192.0.2.10:3260,3\x00TargetAddress=[2001:db8::1]:3260,3\x00" +
		"TargetName=" + IQN("b") + "\x00TargetAddress=192.0.2.10:3260,3\x00TargetAddress=[2001:db8::1]:3260,3\x00"
	if string(p.Data) != want {
		t.Fatalf("SendTargets:\n%q\nwant\n%q", p.Data, want)
	}
	// SCSI commands are refused in a discovery session.
	var sh pdu.Header
	sh.SetOpcode(pdu.OpSCSICmd)
	sh.SetFlags(0x80)
	c.Send(&sh, nil)
	if r := c.Recv(); r.Opcode() != pdu.OpReject {
		t.Fatalf("SCSI command in discovery: %#x", r.Opcode())
	}
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
}

// TestPortNumber: with PortNumber set, the node's number is the portal
// group tag a login and SendTargets report, and the relative target port
// the LU reports; a node without one yet refuses logins to a target for
// now (and still answers discovery).
func TestPortNumber(t *testing.T) {
	var mu sync.Mutex
	num, known := uint16(0), false
	ts := startServer(t, Config{PortNumber: func() (uint16, bool) {
		mu.Lock()
		defer mu.Unlock()
		return num, known
	}}, "a")
	d := dial(t, ts.addr)
	if _, err := d.Login("InitiatorName=iqn.2026-11.test:d", "SessionType=Discovery"); err != nil {
		t.Fatal(err)
	}
	if got := string(sendTargets(d).Data); got != "TargetName="+IQN("a")+"\x00" {
		t.Errorf("SendTargets without a number: %q", got)
	}
	c := dial(t, ts.addr)
	p, err := c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("a"), "SessionType=Normal")
	if err == nil || p == nil || p.Header[36] != 3 || p.Header[37] != 1 {
		t.Fatalf("login without a number: %v", err)
	}
	mu.Lock()
	num, known = 7, true
	mu.Unlock()
	if got := string(sendTargets(d).Data); !strings.HasSuffix(got, ",7\x00") {
		t.Errorf("SendTargets: %q, want the tag 7", got)
	}
	c = dial(t, ts.addr)
	p, err = c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("a"), "SessionType=Normal")
	if err != nil {
		t.Fatal(err)
	}
	if kvs, _ := pdu.ParseText(p.Data); !slices.Contains(kvs, pdu.KV{Key: "TargetPortalGroupTag", Value: "7"}) {
		t.Errorf("login response: %q, want TargetPortalGroupTag=7", p.Data)
	}
	c.DrainUA()
	r := c.SCSI([]byte{0x12, 1, 0x83, 0, 255, 0}, true, 255, nil)
	if !bytes.Contains(r.Data, []byte{0x10 | 0x80 | 0x04, 0, 4, 0, 0, 0, 7}) {
		t.Errorf("VPD 0x83 without relative target port 7: % x", r.Data)
	}
}

// TestResolve: a target this server does not export yet is resolved
// before an initiator is told it does not exist: a login naming it, and
// discovery, find what Resolve adds. A name Resolve cannot add is still
// not found.
func TestResolve(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	var ts *testServer
	resolve := func(ctx context.Context, iqn string) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("Resolve without a deadline")
		}
		mu.Lock()
		asked = append(asked, iqn)
		mu.Unlock()
		for _, n := range []string{"late", "later"} {
			if iqn == IQN(n) || (iqn == "" && n == "late") {
				ts.AddTarget(TargetSpec{Name: n, VID: 0x200, Device: voltest.NewMemDevice(64<<20, 4<<20)})
			}
		}
	}
	ts = startServer(t, Config{Resolve: resolve}, "a")
	d := dial(t, ts.addr)
	if _, err := d.Login("InitiatorName=iqn.2026-11.test:d", "SessionType=Discovery"); err != nil {
		t.Fatal(err)
	}
	if got, want := string(sendTargets(d).Data), "TargetName="+IQN("a")+"\x00TargetName="+IQN("late")+"\x00"; !strings.HasPrefix(strings.ReplaceAll(got, "TargetAddress="+ts.addr+",1\x00", ""), want) {
		t.Errorf("SendTargets=All: %q, want %q", got, want)
	}
	c := dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("later"), "SessionType=Normal"); err != nil {
		t.Fatalf("login to a target Resolve adds: %v", err)
	}
	c = dial(t, ts.addr)
	p, err := c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("nope"), "SessionType=Normal")
	if err == nil || p == nil || p.Header[36] != 2 || p.Header[37] != 3 {
		t.Fatalf("login to a target nobody has: %v, want not found", err)
	}
	c = dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("a"), "SessionType=Normal"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", IQN("later"), IQN("nope")}; !slices.Equal(asked, want) {
		t.Errorf("Resolve asked for %q, want %q (not for targets it has)", asked, want)
	}
}

// TestSendTargetsContinuation: a SendTargets answer larger than the
// initiator's MaxRecvDataSegmentLength comes in continued Text PDUs.
func TestSendTargetsContinuation(t *testing.T) {
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("volume-with-a-rather-long-name-%03d", i)
	}
	ts := startServer(t, Config{}, names...)
	c := dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:d", "SessionType=Discovery", "MaxRecvDataSegmentLength=512"); err != nil {
		t.Fatal(err)
	}
	var all []byte
	ttt := uint32(pdu.ReservedTag)
	for i := 0; ; i++ {
		var h pdu.Header
		h.SetOpcode(pdu.OpTextReq)
		h[0] |= 0x40
		h.SetFlags(0x80)
		h.SetITT(5)
		h.SetField20(ttt)
		var body []byte
		if i == 0 {
			body = []byte("SendTargets=All\x00")
		}
		c.Send(&h, body)
		p := c.Recv()
		if len(p.Data) > 512 {
			t.Fatalf("text segment of %d bytes > 512", len(p.Data))
		}
		all = append(all, p.Data...)
		if p.Flags()&0x80 != 0 {
			break
		}
		ttt = p.TTT()
		if i > 100 {
			t.Fatal("continuation never ends")
		}
	}
	if n := bytes.Count(all, []byte("TargetName=")); n != 100 {
		t.Fatalf("%d targets listed, want 100", n)
	}
}

// TestProtocolRobustness sends odd PDUs in full feature phase: the
// connection answers or rejects and keeps working.
func TestProtocolRobustness(t *testing.T) {
	ts := startServer(t, Config{}, "r")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("r"))
	c.DrainUA()

	// NOP-Out ping with data comes back as NOP-In with the same data.
	var h pdu.Header
	h.SetOpcode(pdu.OpNOPOut)
	h[0] |= 0x40
	h.SetFlags(0x80)
	h.SetITT(900)
	h.SetField20(pdu.ReservedTag)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	c.Send(&h, []byte("ping"))
	if p := c.Recv(); p.Opcode() != pdu.OpNOPIn || p.ITT() != 900 || string(p.Data) != "ping" {
		t.Fatalf("NOP-In: %v %q", p.Header.String(), p.Data)
	}
	// SNACK (ERL 0) and an unknown opcode are rejected.
	for _, op := range []byte{pdu.OpSNACKReq, 0x1c} {
		var s pdu.Header
		s.SetOpcode(op)
		s.SetFlags(0x80)
		c.Send(&s, nil)
		if p := c.Recv(); p.Opcode() != pdu.OpReject {
			t.Fatalf("opcode %#x answered with %#x", op, p.Opcode())
		}
	}
	// Data-Out for an unknown task is dropped silently.
	var d pdu.Header
	d.SetOpcode(pdu.OpDataOut)
	d.SetFlags(0x80)
	d.SetITT(12345)
	d.SetField20(pdu.ReservedTag)
	c.Send(&d, make([]byte, 512))
	// Text with an unknown key in full feature phase.
	var tx pdu.Header
	tx.SetOpcode(pdu.OpTextReq)
	tx[0] |= 0x40
	tx.SetFlags(0x80)
	tx.SetITT(901)
	tx.SetField20(pdu.ReservedTag)
	c.Send(&tx, []byte("X-foo=bar\x00"))
	if p := c.Recv(); p.Opcode() != pdu.OpTextResp || string(p.Data) != "X-foo=NotUnderstood\x00" {
		t.Fatalf("text: %v %q", p.Header.String(), p.Data)
	}
	// ABORT TASK of a task that does not exist.
	var tm pdu.Header
	tm.SetOpcode(pdu.OpTaskReq)
	tm[0] |= 0x40
	tm.SetFlags(0x80 | tmfAbortTask)
	tm.SetITT(902)
	tm.SetField20(4242)
	c.Send(&tm, nil)
	if p := c.Recv(); p.Opcode() != pdu.OpTaskResp || p.Header[2] != tmfNoTask {
		t.Fatalf("abort: %v resp %d", p.Header.String(), p.Header[2])
	}
	// LUN RESET: function complete, then a reset unit attention.
	tm.SetFlags(0x80 | tmfLUNReset)
	tm.SetITT(903)
	c.Send(&tm, nil)
	if p := c.Recv(); p.Opcode() != pdu.OpTaskResp || p.Header[2] != tmfComplete {
		t.Fatalf("LUN reset: resp %d", p.Header[2])
	}
	if uas := c.DrainUA(); len(uas) != 1 || uas[0] != 0x2903 {
		t.Fatalf("after LUN reset: %x", uas)
	}
	// A 4 GiB write command with no data: refused without allocating.
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	binary.BigEndian.PutUint32(cdb[10:], 0xffffffff>>9)
	r := c.SCSI(cdb, false, 0xffffffff, []byte{})
	if r.Status != scsi.StatusCheckCondition {
		t.Fatalf("huge write: status %#x", r.Status)
	}
	// Reads honour a small MaxRecvDataSegmentLength and report residuals.
	cdb = make([]byte, 10)
	cdb[0], cdb[8] = 0x28, 8 // READ(10) 8 blocks
	r = c.SCSI(cdb, true, 2048, nil)
	if r.Status != 0 || len(r.Data) != 2048 || r.Flags&pdu.FlagOverflow == 0 || r.Residual != 2048 {
		t.Fatalf("short read: status %#x len %d flags %#x residual %d", r.Status, len(r.Data), r.Flags, r.Residual)
	}
	// Still alive.
	if r := c.SCSI([]byte{0}, false, 0, nil); r.Status != 0 {
		t.Fatalf("TUR: %#x", r.Status)
	}
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
}

// TestGarbageNeverKills feeds malformed bytes to fresh connections.
func TestGarbageNeverKills(t *testing.T) {
	ts := startServer(t, Config{}, "g")
	inputs := [][]byte{
		bytes.Repeat([]byte{0xff}, 48),
		append([]byte{0x03, 0x87, 0, 0, 0, 0xff, 0xff, 0xff}, make([]byte, 40)...), // login with 16 MiB data
		append([]byte{0x01, 0x80, 0, 0, 0xff, 0, 0, 0}, make([]byte, 40)...),       // AHS in login phase
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
	for _, in := range inputs {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		nc.Write(in)
		nc.Write(make([]byte, 1024))
		buf := make([]byte, 4096)
		for {
			if _, err := nc.Read(buf); err != nil {
				break
			}
		}
		nc.Close()
	}
	// The server still serves.
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("g"))
	c.DrainUA()
}

// TestMaxCmdSNWindow: MaxCmdSN - ExpCmdSN + 1 equals the configured queue
// depth when idle, and commands beyond MaxCmdSN are ignored.
func TestMaxCmdSNWindow(t *testing.T) {
	ts := startServer(t, Config{QueueDepth: 8}, "w")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("w"))
	c.DrainUA()
	r := c.SCSI([]byte{0}, false, 0, nil)
	_ = r
	if got := c.MaxCmd - c.CmdSN + 1; got != 8 {
		t.Fatalf("window %d, want 8", got)
	}
	// A command with CmdSN = MaxCmdSN+1 gets no answer; the next valid
	// one does.
	saved := c.CmdSN
	c.CmdSN = c.MaxCmd + 1
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(0x80)
	h.SetITT(5000)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	c.Send(&h, nil)
	c.CmdSN = saved
	if r := c.SCSI([]byte{0}, false, 0, nil); r.Status != 0 {
		t.Fatalf("TUR after ignored command: %#x", r.Status)
	}
}

// TestDigestsNegotiated: CRC32C header and data digests are negotiated,
// used on every PDU, and a corrupt digest ends the connection.
func TestDigestsNegotiated(t *testing.T) {
	ts := startServer(t, Config{}, "d")
	c := dial(t, ts.addr)
	p, err := c.Login("InitiatorName=iqn.2026-11.test:dig", "TargetName="+IQN("d"), "SessionType=Normal",
		"HeaderDigest=CRC32C,None", "DataDigest=CRC32C")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(p.Data, []byte("HeaderDigest=CRC32C\x00")) || !bytes.Contains(p.Data, []byte("DataDigest=CRC32C\x00")) {
		t.Fatalf("login answer %q", p.Data)
	}
	lim := pdu.Limits{MaxData: 1 << 20, HeaderDigest: true, DataDigest: true}
	inq := func() *pdu.PDU {
		var h pdu.Header
		h.SetOpcode(pdu.OpSCSICmd)
		h.SetFlags(0x80 | pdu.FlagRead)
		h.SetITT(c.ITT)
		c.ITT++
		h.SetField20(36)
		binary.BigEndian.PutUint32(h[24:], c.CmdSN)
		c.CmdSN++
		copy(h[32:], []byte{0x12, 0, 0, 0, 36, 0})
		if err := pdu.WritePDU(c.NC, &h, nil, true, true); err != nil {
			t.Fatal(err)
		}
		p, err := pdu.ReadPDU(c.NC, lim)
		if err != nil {
			t.Fatalf("reading a digested PDU: %v", err)
		}
		return p
	}
	if p := inq(); p.Opcode() != pdu.OpDataIn || len(p.Data) != 36 || string(p.Data[8:15]) != "GOSHEEP" {
		t.Fatalf("INQUIRY over digests: %v %q", p.Header.String(), p.Data)
	}
	// A PDU with a bad header digest ends the connection.
	var h pdu.Header
	h.SetOpcode(pdu.OpNOPOut)
	h[0] |= 0x40
	var raw bytes.Buffer
	pdu.WritePDU(&raw, &h, nil, true, true)
	b := raw.Bytes()
	b[48] ^= 0xff
	c.NC.Write(b)
	if _, err := pdu.ReadPDU(c.NC, lim); err == nil {
		t.Fatal("connection survived a header digest error")
	}
}

// TestLogoutWithPendingWrite: a logout while a write still waits for its
// Data-Out aborts that write instead of hanging.
func TestLogoutWithPendingWrite(t *testing.T) {
	ts := startServer(t, Config{}, "lw")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("lw"), "InitialR2T=Yes")
	c.DrainUA()
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(0x80 | pdu.FlagWrite)
	h.SetITT(c.ITT)
	c.ITT++
	h.SetField20(4096)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	c.CmdSN++
	copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0})
	c.Send(&h, nil)
	if p := c.Recv(); p.Opcode() != pdu.OpR2T {
		t.Fatalf("want R2T, got %#x", p.Opcode())
	}
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
}

type recorder struct {
	mu       sync.Mutex
	ops      map[string]int
	bytes    map[string]int
	errs     int
	sessions int
	maxSess  int
}

func (r *recorder) Request(fe, op string, n int, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fe != "iscsi" {
		panic("frontend " + fe)
	}
	r.ops[op]++
	r.bytes[op] += n
	if err != nil {
		r.errs++
	}
}

func (r *recorder) Sessions(fe string, delta int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions += delta
	r.maxSess = max(r.maxSess, r.sessions)
}

// TestMetrics: commands are recorded with names and bytes, sessions
// counted up and down.
func TestMetrics(t *testing.T) {
	rec := &recorder{ops: map[string]int{}, bytes: map[string]int{}}
	ts := startServer(t, Config{Recorder: rec}, "m")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("m"))
	c.DrainUA()
	c.SCSI([]byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, false, 4096, make([]byte, 4096))
	c.SCSI([]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}, true, 4096, nil)
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ts.SessionCount() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.ops["WRITE(10)"] != 1 || rec.bytes["WRITE(10)"] != 4096 || rec.ops["READ(10)"] != 1 || rec.bytes["READ(10)"] != 4096 {
		t.Fatalf("ops %v bytes %v", rec.ops, rec.bytes)
	}
	if rec.errs < 1 { // the power-on unit attention
		t.Fatalf("errors %d", rec.errs)
	}
	if rec.maxSess != 1 || rec.sessions != 0 {
		t.Fatalf("sessions max %d now %d", rec.maxSess, rec.sessions)
	}
}

// TestImmediateCommandsBounded: immediate commands beyond the bound get
// TASK SET FULL instead of piling up.
func TestImmediateCommandsBounded(t *testing.T) {
	ts := startServer(t, Config{QueueDepth: 4}, "imm")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("imm"), "InitialR2T=Yes")
	c.DrainUA()
	// Writes that wait for Data-Out stay in flight.
	n := 4 + maxImmediateTasks + 3
	for i := range n {
		var h pdu.Header
		h.SetOpcode(pdu.OpSCSICmd)
		h[0] |= 0x40 // immediate
		h.SetFlags(0x80 | pdu.FlagWrite)
		h.SetITT(uint32(1000 + i))
		h.SetField20(512)
		binary.BigEndian.PutUint32(h[24:], c.CmdSN)
		copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0})
		c.Send(&h, nil)
	}
	full, r2ts := 0, 0
	for range n {
		p := c.Recv()
		switch {
		case p.Opcode() == pdu.OpR2T:
			r2ts++
		case p.Opcode() == pdu.OpSCSIResp && p.Header[3] == scsi.StatusTaskSetFull:
			full++
		default:
			t.Fatalf("unexpected %s status %#x", p.Header.String(), p.Header[3])
		}
	}
	if r2ts != 4+maxImmediateTasks || full != 3 {
		t.Fatalf("%d R2Ts and %d TASK SET FULL", r2ts, full)
	}
}

// TestR2TMultipleOutstanding writes 64 KiB with immediate data,
// unsolicited Data-Out and several outstanding R2Ts of small bursts, and
// checks offsets, R2TSNs, the data on the device and ExpDataSN.
func TestR2TMultipleOutstanding(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keys      []string
		imm, unso int // bytes sent as immediate data / unsolicited Data-Out
	}{
		{"solicited only", []string{"InitialR2T=Yes", "ImmediateData=No", "MaxOutstandingR2T=4", "MaxBurstLength=4096"}, 0, 0},
		{"immediate + unsolicited + R2T", []string{"InitialR2T=No", "ImmediateData=Yes", "MaxOutstandingR2T=3", "MaxBurstLength=8192", "FirstBurstLength=8192"}, 2048, 6144},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{MaxRecvDataSegmentLength: 2048}, "r2t")
			c := dial(t, ts.addr)
			c.LoginNormal(IQN("r2t"), tc.keys...)
			c.DrainUA()
			data := make([]byte, 64<<10)
			for i := range data {
				data[i] = byte(i*13 + i>>9)
			}
			const itt = 4711
			var h pdu.Header
			h.SetOpcode(pdu.OpSCSICmd)
			f := byte(pdu.FlagWrite)
			if tc.unso == 0 {
				f |= pdu.FlagFinal
			}
			h.SetFlags(f)
			h.SetITT(itt)
			h.SetField20(uint32(len(data)))
			binary.BigEndian.PutUint32(h[24:], c.CmdSN)
			c.CmdSN++
			copy(h[32:], []byte{0x2a, 0, 0, 0, 0, 16, 0, 0, 128, 0}) // WRITE(10) LBA 16, 128 blocks
			c.Send(&h, data[:tc.imm])
			sendData := func(ttt, off, n uint32) {
				sn := uint32(0)
				for pos := off; pos < off+n; pos += 2048 {
					l := min(2048, off+n-pos)
					var d pdu.Header
					d.SetOpcode(pdu.OpDataOut)
					if pos+l == off+n {
						d.SetFlags(0x80)
					}
					d.SetITT(itt)
					d.SetField20(ttt)
					d.SetDataSN(sn)
					d.SetBufferOffset(pos)
					c.Send(&d, data[pos:pos+l])
					sn++
				}
			}
			if tc.unso > 0 {
				sendData(pdu.ReservedTag, uint32(tc.imm), uint32(tc.unso))
			}
			next := uint32(tc.imm + tc.unso)
			wantSN := uint32(0)
			maxOut := 0
			var pending []*pdu.PDU
			giveUp := time.Now().Add(20 * time.Second)
			for {
				// Collect what the target sends before answering: several
				// R2Ts may be outstanding.
				c.NC.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				p, err := c.TryRecv()
				c.NC.SetReadDeadline(time.Now().Add(10 * time.Second))
				if err == nil {
					if p.Opcode() == pdu.OpSCSIResp {
						if p.Header[3] != 0 {
							t.Fatalf("status %#x", p.Header[3])
						}
						if got := p.DataSN(); got != wantSN {
							t.Fatalf("ExpDataSN %d, want %d R2Ts", got, wantSN)
						}
						break
					}
					if p.Opcode() != pdu.OpR2T || p.ITT() != itt {
						t.Fatalf("unexpected %s", p.Header.String())
					}
					if p.DataSN() != wantSN || p.BufferOffset() != next || p.DesiredLength() > 8192 {
						t.Fatalf("R2T sn %d off %d len %d; want sn %d off %d", p.DataSN(), p.BufferOffset(), p.DesiredLength(), wantSN, next)
					}
					wantSN++
					next += p.DesiredLength()
					pending = append(pending, p)
					maxOut = max(maxOut, len(pending))
					continue
				}
				if len(pending) == 0 {
					if time.Now().After(giveUp) {
						t.Fatalf("no R2T and no status: %v", err)
					}
					continue // slow machine: keep waiting
				}
				for _, r := range pending {
					sendData(r.TTT(), r.BufferOffset(), r.DesiredLength())
				}
				pending = nil
			}
			if tc.unso == 0 && maxOut < 2 {
				t.Errorf("at most %d R2T outstanding, want several", maxOut)
			}
			got := make([]byte, len(data))
			ts.devs["r2t"].ReadAt(t.Context(), got, 16*512)
			if !bytes.Equal(got, data) {
				t.Fatal("device content differs")
			}
		})
	}
}

// TestDataInSegments: Data-In honours the initiator's
// MaxRecvDataSegmentLength, numbers DataSN from 0, sets F at each
// MaxBurstLength boundary and carries the status in the last PDU.
func TestDataInSegments(t *testing.T) {
	ts := startServer(t, Config{}, "din")
	c := dial(t, ts.addr)
	c.LoginNormal(IQN("din"), "MaxRecvDataSegmentLength=4096", "MaxBurstLength=16384", "FirstBurstLength=16384")
	c.DrainUA()
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	h.SetFlags(0x80 | pdu.FlagRead)
	h.SetITT(77)
	h.SetField20(64 << 10)
	binary.BigEndian.PutUint32(h[24:], c.CmdSN)
	copy(h[32:], []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0})
	c.Send(&h, nil)
	off := uint32(0)
	for sn := uint32(0); ; sn++ {
		p := c.Recv()
		if p.Opcode() != pdu.OpDataIn || p.DataSN() != sn || p.BufferOffset() != off || len(p.Data) > 4096 {
			t.Fatalf("PDU %d: %s sn %d off %d len %d", sn, p.Header.String(), p.DataSN(), p.BufferOffset(), len(p.Data))
		}
		off += uint32(len(p.Data))
		wantF := off%16384 == 0
		if p.Final() != wantF {
			t.Fatalf("F=%v at offset %d", p.Final(), off)
		}
		if p.Flags()&pdu.FlagStatus != 0 {
			if off != 64<<10 || p.Header[3] != 0 {
				t.Fatalf("status at offset %d: %#x", off, p.Header[3])
			}
			return
		}
	}
}

// TestMaxConnections: connections beyond the limit are closed at once.
func TestMaxConnections(t *testing.T) {
	ts := startServer(t, Config{MaxConnections: 2}, "mc")
	a, b := dial(t, ts.addr), dial(t, ts.addr)
	a.LoginNormal(IQN("mc"))
	b.LoginAs("iqn.2026-11.test:b", IQN("mc"))
	c := dial(t, ts.addr)
	if _, err := c.Login("InitiatorName=iqn.2026-11.test:c", "TargetName="+IQN("mc"), "SessionType=Normal"); err == nil {
		t.Fatal("third connection logged in")
	}
	a.Logout()
	a.NC.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := dial(t, ts.addr)
		if _, err := d.Login("InitiatorName=iqn.2026-11.test:d", "TargetName="+IQN("mc"), "SessionType=Normal"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection accepted after one closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSessionReinstatement: a new login with the same initiator name and
// ISID replaces the old session (whose connection is closed); a login
// naming an unknown TSIH is refused.
func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t, Config{}, "re")
	a := dial(t, ts.addr)
	a.LoginNormal(IQN("re"))
	a.DrainUA()
	b := dial(t, ts.addr)
	b.LoginNormal(IQN("re")) // same name and ISID
	a.NC.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.TryRecv(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("old session still open: %v", err)
	}
	if uas := b.DrainUA(); len(uas) != 1 {
		t.Fatalf("new session unit attentions %x", uas)
	}
	if n := ts.SessionCount(); n != 1 {
		t.Fatalf("%d sessions", n)
	}
	c := dial(t, ts.addr)
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginReq)
	h[0] |= 0x40
	h.SetFlags(0x80 | 1<<2 | 3)
	binary.BigEndian.PutUint16(h[14:], 999) // TSIH of no session
	c.Send(&h, []byte("InitiatorName=iqn.2026-11.test:z\x00TargetName="+IQN("re")+"\x00"))
	if p := c.Recv(); p.Opcode() != pdu.OpLoginResp || p.Header[36] != 2 || p.Header[37] != 0x0a {
		t.Fatalf("login with unknown TSIH: status %#02x%02x", p.Header[36], p.Header[37])
	}
}
